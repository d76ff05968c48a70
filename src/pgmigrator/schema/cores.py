"""How many cores an index build may take besides its own, while the clone's post-data runs.

The post-data connections are one per core (``--workers``) and build one index each, so a build
gets no parallel maintenance workers of its own as long as the copy and the other builds keep the
cores busy (they would only compete). But the last table copied often leaves a single long build
(a big table's primary key) on one core while the others idle: such a build gets the idle cores
as ``max_parallel_maintenance_workers``. A core counts as busy while a copy worker still has a
table to copy, or while an index build is queued or running (key attachments and ANALYZE are
short: a long build starting beside them would lose the core they free a moment later).
"""

from __future__ import annotations

import re
import threading

_INDEX_BUILD = re.compile(r"^CREATE (?:UNIQUE )?INDEX ", re.MULTILINE)


def is_index_build(statement: str) -> bool:
    return _INDEX_BUILD.search(statement) is not None


class CoreBudget:
    """Cores (the post-data connections) against copies pending and steps queued or running."""

    def __init__(self, cores: int) -> None:
        self.cores = max(1, cores)
        self._lock = threading.Lock()
        self._tables_to_copy = 0
        self._copy_workers = 0
        self._steps = 0

    def expect_copies(self, tables: int, workers: int) -> None:
        with self._lock:
            self._tables_to_copy, self._copy_workers = tables, workers

    def copied(self) -> None:
        with self._lock:
            self._tables_to_copy = max(0, self._tables_to_copy - 1)

    def queued(self, steps: int = 1) -> None:
        with self._lock:
            self._steps += steps

    def finished(self, taken: int = 0) -> None:
        """A queued build is done, with the cores it had taken (`take`)."""
        with self._lock:
            self._steps = max(0, self._steps - 1 - taken)

    def take(self) -> int:
        """The cores no copy and no other build needs now (the asking build counts as queued),
        reserved for the asker until it is `finished`: two builds never both take them."""
        with self._lock:
            copying = min(self._tables_to_copy, self._copy_workers)
            spare = max(0, self.cores - copying - self._steps)
            self._steps += spare
            return spare
