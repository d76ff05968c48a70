"""The ``file`` sink: JSON lines appended to a file, with rotation, retention, gzip and fsync policy.

``send`` writes the whole batch with one ``write`` (unbuffered, so it is in the kernel when
``send`` returns), then fsyncs per the policy: ``never`` (the OS decides), ``batch`` (once per
batch, the default) or ``always`` (after every event). Only then does the bus acknowledge, so
with ``fsync`` other than ``never`` an acknowledged event survives a power loss. A restart appends
to the current file. The current file is rotated before a write that would take it past
``max_bytes`` (a batch is split on event boundaries) and before the first write once it has been
open ``rotate_s`` seconds; rotated files are named ``<path>.<UTC time>-<seq>``, gzipped when
``gzip`` is set (``.gz``), and only the newest ``keep`` are kept. Durable: holds the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip as gzipmod
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pgmigrator.errors import RetryableSinkError, SinkError
from pgmigrator.log import get_logger
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.file")

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_TIME_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> Any:
    """``"10MB"`` -> 10485760 (KB/MB/GB are powers of 1024); ints pass through."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]?i?b?)\s*", value.lower())
        unit = m.group(2).replace("i", "") if m else None
        if m is None or unit not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size (examples: 1048576, 512KB, 10MB, 1GB)")
        return int(m.group(1)) * _SIZE_UNITS[unit]
    return value


def parse_duration(value: Any) -> Any:
    """``"1h"`` -> 3600.0 (units s, m, h, d); numbers pass through as seconds."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value.lower())
        if m is None:
            raise ValueError(f"{value!r} is not a duration (examples: 30, 90s, 15m, 1h, 1d)")
        return float(m.group(1)) * _TIME_UNITS[m.group(2)]
    return value


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    max_bytes: int | None = Field(None, gt=0, description="rotate before exceeding this size")
    rotate_s: float | None = Field(None, gt=0, description="rotate files open this long")
    keep: int | None = Field(None, ge=0, description="rotated files kept (default: all)")
    gzip: bool = False
    fsync: Literal["never", "batch", "always"] = "batch"

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)

    @field_validator("rotate_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


class FileSink:
    durable = True

    def __init__(self, name: str, options: FileOptions) -> None:
        self.name = name
        self.options = options
        self.path = options.path
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        self._seq = 0
        self.clock = time.time  # replaceable in tests
        self._pattern = re.compile(re.escape(self.path.name) + r"\.\d{8}T\d{6}Z-\d{6}(\.gz)?")

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise SinkError(
                f"cannot open {self.path}: {exc.strerror}",
                hint="check that the directory exists and is writable",
            ) from exc
        self._opened = self.clock()

    async def send(self, events: Sequence[Event]) -> None:
        await asyncio.to_thread(self._write_all, events)

    def _write_all(self, events: Sequence[Event]) -> None:
        try:
            if self._fd is None:
                self._open()
            if self.options.fsync == "always":
                for event in events:
                    self._write_chunk([event.body])
            elif self.options.max_bytes is None:
                self._write_chunk([e.body for e in events])
            else:
                self._write_sized(events, self.options.max_bytes)
        except OSError as exc:
            self._close_fd()
            raise RetryableSinkError(
                f"cannot write {self.path}: {exc.strerror}",
                hint="free disk space or fix permissions; the batch is retried",
            ) from exc

    def _write_sized(self, events: Sequence[Event], limit: int) -> None:
        """Split the batch so that no file grows past ``limit`` (one event alone may)."""
        base = self._size  # bytes in the file the current chunk goes to
        chunk: list[bytes] = []
        used = 0
        for event in events:
            n = len(event.body) + 1
            if base + used + n > limit and base + used > 0:
                if chunk:
                    self._write_chunk(chunk)
                chunk, used, base = [], 0, 0  # the next write rotates first
            chunk.append(event.body)
            used += n
        if chunk:
            self._write_chunk(chunk)

    def _write_chunk(self, bodies: list[bytes]) -> None:
        data = b"\n".join(bodies) + b"\n"
        if self._must_rotate(len(data)):
            self._rotate()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        if self.options.fsync != "never":
            os.fsync(self._fd)

    def _must_rotate(self, incoming: int) -> bool:
        if self._size == 0:
            return False
        limit = self.options.max_bytes
        if limit is not None and self._size + incoming > limit:
            return True
        age = self.options.rotate_s
        return age is not None and self.clock() - self._opened >= age

    def _rotate(self) -> None:
        self._close_fd()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            self._seq += 1
            target = self.path.with_name(f"{self.path.name}.{stamp}-{self._seq:06d}")
            if not target.exists() and not target.with_name(target.name + ".gz").exists():
                break
        os.replace(self.path, target)
        self._open()
        if self.options.gzip:
            _gzip(target)
        self._prune()
        log.info("file rotated", sink=self.name, rotated=str(target))

    def rotated(self) -> list[Path]:
        """Rotated files, oldest first."""
        found = [p for p in self.path.parent.iterdir() if self._pattern.fullmatch(p.name)]
        return sorted(found, key=lambda p: p.name.removesuffix(".gz"))

    def _prune(self) -> None:
        keep = self.options.keep
        if keep is None:
            return
        files = self.rotated()
        for old in files[: max(0, len(files) - keep)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        if self._fd is not None:
            fd = self._fd
            if self.options.fsync != "never":
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.fsync, fd)
            self._close_fd()


def _gzip(path: Path) -> None:
    """Compress a rotated file to ``<path>.gz`` (written aside, then renamed), remove the original."""
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.partial")
    with path.open("rb") as src, gzipmod.open(partial, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(partial, target)
    path.unlink()


@register("file", FileOptions)
def build_file_sink(name: str, options: Any, ctx: SinkContext) -> FileSink:
    return FileSink(name, options)
