"""Loading the optional C loop of the COPY workers (``_copypump``), or not.

The C loop calls libpq directly, through the addresses `pgmigrator._libpq` finds in the libpq
psycopg loaded; when it finds none, with ``PGMIGRATOR_PURE_PYTHON=1`` or a build without the
extension, the pure-Python loop in `copyworker` runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from pgmigrator._libpq import addresses


class Pump(Protocol):
    def __call__(
        self, src: int, dst: int, progress: Callable[[int], object], every_s: float, /
    ) -> tuple[int, int, int, int]: ...


def _bind() -> Pump | None:
    try:
        from pgmigrator.pipeline import _copypump
    except ImportError:
        return None
    found = addresses("PQgetCopyData", "PQputCopyData", "PQfreemem")
    if found is None:
        return None
    _copypump.bind(*found)
    return _copypump.pump


@functools.cache
def c_pump() -> Pump | None:
    """The C loop, bound to psycopg's libpq, or None (then use the Python loop)."""
    return _bind()
