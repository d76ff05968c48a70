"""The addresses of functions in the libpq that psycopg loaded, for pgmigrator's C loops.

The C loops (the COPY workers' `pipeline._copypump`, the replication stream's
`protocol._speedups.pump_rows`) call libpq directly, so they must call the libpq psycopg loaded:
a PGconn pointer is only meaningful to the library that made it. Addresses are given only when
exactly one libpq is mapped into the process (Linux's ``/proc/self/maps`` says which) and that
library reports the version psycopg reports; otherwise, and with ``PGMIGRATOR_PURE_PYTHON=1``,
the callers keep their pure-Python loops.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from psycopg import pq

from pgmigrator.log import get_logger

log = get_logger("libpq")


def pure_python() -> bool:
    """Whether ``PGMIGRATOR_PURE_PYTHON`` asks for the pure-Python code paths."""
    return os.environ.get("PGMIGRATOR_PURE_PYTHON", "") not in ("", "0")


def libpq_paths(maps: str) -> set[str]:
    """Paths of the libpq shared libraries in a ``/proc/<pid>/maps`` text."""
    out = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) == 6 else ""
        if Path(path).name.startswith("libpq"):
            out.add(path)
    return out


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        paths = libpq_paths(Path("/proc/self/maps").read_text())
    except OSError:
        return None
    if len(paths) != 1:
        log.debug("C loops not used", reason=f"{len(paths)} libpq libraries loaded")
        return None
    try:
        lib = ctypes.CDLL(paths.pop(), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        return lib if lib.PQlibVersion() == pq.version() else None
    except (OSError, AttributeError):
        return None


def addresses(*names: str) -> tuple[int, ...] | None:
    """The addresses of the named libpq functions, or None when they cannot be used safely."""
    if pure_python():
        return None
    lib = _library()
    if lib is None:
        return None
    try:
        found = tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0 for name in names)
    except AttributeError:
        return None
    return found if all(found) else None
