"""The state file: a running pipeline's last snapshot on disk, for ``pgmigrator status``.

:class:`StatePersister` writes :meth:`Collector.snapshot` as indented JSON every two seconds and
once more when stopped, so the file still tells what happened after the pipeline exits or
crashes. Each write goes to a temporary file in the same directory, is fsynced and then renamed
over the old file, so a reader sees either the previous or the new state, never half of one.
Every pipeline name has its own file (``state.json`` for ``default``, ``state-<name>.json``
otherwise), so two pipelines on one host do not overwrite each other.

:func:`read_state` loads the file back with its age, measured both from the embedded timestamp
and from the file's mtime, and raises a :class:`StateFileError` with a hint when there is no file
or it cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pgmigrator.aio import wait_event
from pgmigrator.errors import ConfigError, StateError
from pgmigrator.metrics.collector import Collector
from pgmigrator.metrics.format import STALE_AFTER_S, parse_iso

DEFAULT_DIR = Path("~/.pgmigrator")
DEFAULT_INTERVAL_S = 2.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_log = logging.getLogger(__name__)


class StateFileError(StateError):
    """The state file could not be used."""


class StateFileMissing(StateFileError):
    """There is no state file for this pipeline name."""


class StateFileCorrupt(StateFileError):
    """The state file exists but is not a JSON snapshot."""


def state_path(name: str = "default", base_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where pipeline ``name`` keeps its state: ``<base_dir>/state[-<name>].json``.

    ``base_dir`` defaults to ``~/.pgmigrator``. Names are restricted to letters, digits, ``.``,
    ``_`` and ``-`` so that a name can never point outside the directory.
    """
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid pipeline name {name!r}",
            hint="use up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    base = (DEFAULT_DIR if base_dir is None else Path(base_dir)).expanduser()
    return base / ("state.json" if name == "default" else f"state-{name}.json")


def list_state_files(base_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The pipeline names that have a state file in ``base_dir``, with their paths."""
    base = (DEFAULT_DIR if base_dir is None else Path(base_dir)).expanduser()
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for path in sorted(base.glob("state*.json")):
            if path.name == "state.json":
                found["default"] = path
            elif path.name.startswith("state-"):
                found[path.name[len("state-") : -len(".json")]] = path
    return found


def write_state_file(path: str | os.PathLike[str], snapshot: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``snapshot`` as indented JSON (blocking).

    The directory is created (mode 0700) if needed; the file is private (0600) because error
    messages and connection details may be in it.
    """
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = orjson.dumps(
        snapshot, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE, default=str
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort (not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class StateFile:
    """A state file as read: the snapshot and how old it is."""

    path: Path
    snapshot: dict[str, Any]
    timestamp: float | None
    """Epoch seconds of the embedded ``timestamp``; None if absent or unreadable."""
    mtime: float
    """The file's modification time, epoch seconds."""
    read_at: float
    """Epoch seconds when it was read; the ages below are relative to it."""

    @property
    def timestamp_age_s(self) -> float | None:
        return None if self.timestamp is None else self.read_at - self.timestamp

    @property
    def mtime_age_s(self) -> float:
        return self.read_at - self.mtime

    @property
    def age_s(self) -> float:
        """The age by the embedded timestamp, or by the mtime when there is none."""
        age = self.timestamp_age_s
        return self.mtime_age_s if age is None else age

    def is_stale(self, threshold_s: float = STALE_AFTER_S) -> bool:
        """Older than ``threshold_s``: the pipeline has probably stopped writing."""
        return self.age_s > threshold_s


def read_state(path: str | os.PathLike[str], *, now: float | None = None) -> StateFile:
    """Load a state file; raises :class:`StateFileMissing` or :class:`StateFileCorrupt`."""
    target = Path(path)
    try:
        data = target.read_bytes()
        mtime = target.stat().st_mtime
    except FileNotFoundError:
        raise _missing(target) from None
    except OSError as exc:
        raise StateFileError(
            f"cannot read the state file {target}: {exc.strerror or exc}",
            hint="check the file's permissions; it belongs to the user running the pipeline",
        ) from exc
    try:
        snapshot = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _corrupt(target, f"not valid JSON ({exc})") from exc
    if not isinstance(snapshot, dict):
        raise _corrupt(target, f"expected a JSON object, found {type(snapshot).__name__}")
    return StateFile(
        path=target,
        snapshot=snapshot,
        timestamp=parse_iso(snapshot.get("timestamp")),
        mtime=mtime,
        read_at=time.time() if now is None else now,
    )


def _missing(path: Path) -> StateFileMissing:
    others = sorted(list_state_files(path.parent))
    hint = (
        "is a pipeline running with this --name? a running pipeline writes this file every "
        f"{DEFAULT_INTERVAL_S:g} s"
    )
    if others:
        hint += f"; state files exist for: {', '.join(others)}"
    return StateFileMissing(f"no state file at {path}", hint=hint)


def _corrupt(path: Path, why: str) -> StateFileCorrupt:
    return StateFileCorrupt(
        f"the state file {path} is unreadable: {why}",
        hint="it may be truncated (disk full?) or not written by pgmigrator; a running "
        "pipeline rewrites it within seconds, otherwise delete it",
    )


class StatePersister:
    """Write a collector's snapshot to the state file periodically, and once more at stop.

    Use ``start()`` and ``await stop()``, or ``async with StatePersister(collector):``. Write
    failures are logged and reported as the ``state-file`` component's health; they never stop
    the pipeline.
    """

    def __init__(
        self,
        collector: Collector,
        path: str | os.PathLike[str] | None = None,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.collector = collector
        self.path = Path(path) if path is not None else state_path(collector.pipeline, base_dir)
        self.interval = interval
        self.writes = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failing = False

    def start(self) -> None:
        """Start the periodic writes (needs a running event loop); a second call is a no-op."""
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"state-persister-{self.collector.pipeline}"
            )

    async def stop(self) -> None:
        """Stop the periodic writes, then write the final state."""
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()  # no cancel: a write in flight finishes before the final one
            await task
        await self.write_now()

    async def write_now(self) -> bool:
        """Write the current snapshot now; True on success."""
        snapshot = self.collector.snapshot()
        try:
            await asyncio.to_thread(write_state_file, self.path, snapshot)
        except Exception as exc:
            self.failures += 1
            if not self._failing:  # log the first of a series only
                _log.warning(
                    "metrics: cannot write the state file %s: %s",
                    self.path,
                    exc,
                    extra={"fields": {"path": str(self.path)}},
                )
            self._failing = True
            self.collector.set_health("state-file", "degraded", f"cannot write {self.path}: {exc}")
            return False
        self.writes += 1
        if self._failing:
            self._failing = False
            self.collector.set_health("state-file", "ok")
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.write_now()
            await wait_event(self._stop, self.interval)

    async def __aenter__(self) -> StatePersister:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
