"""Persisting the collector's snapshot from a background thread, for commands with or without asyncio.

The clone runs synchronously and ``follow`` under asyncio; a small daemon thread serves both: it
writes the state file every ``interval`` seconds and once more when stopped, and never lets a write
failure stop the pipeline (the collector's ``state-file`` health turns ``degraded`` instead).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

from pgmigrator.log import get_logger
from pgmigrator.metrics.collector import Collector
from pgmigrator.metrics.persist import write_state_file

log = get_logger("state-file")


class StateFileThread:
    def __init__(self, collector: Collector, path: Path, interval: float = 2.0) -> None:
        self.collector = collector
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-file", daemon=True)
        self._failed = False

    def __enter__(self) -> StateFileThread:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def write(self) -> None:
        try:
            write_state_file(self.path, self.collector.snapshot())
            if self._failed:
                self._failed = False
                self.collector.set_health("state-file", "ok")
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the state file", path=str(self.path), error=str(exc))
                self.collector.set_health("state-file", "degraded", str(exc))
            self._failed = True
