"""Loading the optional C loop of the COPY workers (``_copypump``), or not.

The C loop calls libpq directly, so it must call the libpq that psycopg loaded: a PGconn pointer
is only meaningful to the library that made it. It is used only when exactly one libpq is mapped
into the process (Linux's ``/proc/self/maps`` says which) and that library reports the version
psycopg reports; anything else, ``PGMIGRATOR_PURE_PYTHON=1`` or a build without the extension,
keeps the pure-Python loop in `copyworker`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from psycopg import pq

from pgmigrator.log import get_logger

log = get_logger("copy")


class Pump(Protocol):
    def __call__(
        self, src: int, dst: int, progress: Callable[[int], object], every_s: float, /
    ) -> tuple[int, int, int, int]: ...


def _libpq_paths(maps: str) -> set[str]:
    """Paths of the libpq shared libraries in a ``/proc/<pid>/maps`` text."""
    out = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) == 6 else ""
        if Path(path).name.startswith("libpq"):
            out.add(path)
    return out


def _bind() -> Pump | None:
    if os.environ.get("PGMIGRATOR_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from pgmigrator.pipeline import _copypump
    except ImportError:
        return None
    try:
        paths = _libpq_paths(Path("/proc/self/maps").read_text())
    except OSError:
        return None
    if len(paths) != 1:
        log.debug("C copy loop not used", reason=f"{len(paths)} libpq libraries loaded")
        return None
    try:
        lib = ctypes.CDLL(paths.pop(), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        if lib.PQlibVersion() != pq.version():
            return None
        _copypump.bind(
            *(
                ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
                for name in ("PQgetCopyData", "PQputCopyData", "PQfreemem")
            )
        )
    except (OSError, AttributeError, ValueError):
        return None
    return _copypump.pump


@functools.cache
def c_pump() -> Pump | None:
    """The C loop, bound to psycopg's libpq, or None (then use the Python loop)."""
    return _bind()
