"""The log ring: the last few hundred log lines, kept in memory for the UI and the state file.

:class:`LogRing` holds at most ``capacity`` entries (500 by default). When a new entry arrives at
a full ring, the oldest quarter is dropped in one go instead of one entry per append, which keeps
the amortised cost of an append constant with a plain list. Like the sliding window it is not
thread-safe by itself; the collector guards it.

:class:`CollectorLogHandler` plugs the stdlib :mod:`logging` into the ring, keeping the key-value
``extra={"fields": {...}}`` the project logs with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgmigrator.metrics.format import iso_utc, to_jsonable

DEFAULT_CAPACITY = 500

_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical", "err": "error"}


def normalize_level(level: str | int) -> str:
    """``'WARN'`` -> ``'warning'``, ``logging.ERROR`` -> ``'error'``; anything else lowercased."""
    if isinstance(level, int):
        level = logging.getLevelName(level)
    text = str(level).lower()
    return _LEVEL_ALIASES.get(text, text)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One captured log line. ``time`` is wall-clock seconds since the epoch."""

    time: float
    level: str
    component: str
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Keep only JSON-ready copies: no reference to the caller's objects outlives the call.
        object.__setattr__(self, "fields", to_jsonable(dict(self.fields)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form used in snapshots and the state file."""
        return {
            "time": iso_utc(self.time),
            "level": self.level,
            "component": self.component,
            "message": self.message,
            "fields": dict(self.fields),
        }


class LogRing:
    """A bounded list of :class:`LogEntry`; a full ring drops its oldest quarter at once."""

    __slots__ = ("_entries", "capacity", "dropped")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 4:
            raise ValueError(f"log ring capacity must be at least 4, not {capacity}")
        self.capacity = capacity
        self._entries: list[LogEntry] = []
        self.dropped = 0
        """How many entries were evicted so far."""

    def append(self, entry: LogEntry) -> None:
        """Add an entry, first evicting the oldest quarter if the ring is full."""
        if len(self._entries) >= self.capacity:
            quarter = self.capacity // 4
            del self._entries[:quarter]
            self.dropped += quarter
        self._entries.append(entry)

    def entries(self, limit: int | None = None) -> list[LogEntry]:
        """A copy of the entries, oldest first; with ``limit``, only the newest ``limit``."""
        if limit is None:
            return list(self._entries)
        if limit <= 0:
            return []
        return self._entries[-limit:]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class LogTarget(Protocol):
    """Anything that accepts log entries; the collector is one."""

    def add_log(self, entry: LogEntry) -> None: ...


class CollectorLogHandler(logging.Handler):
    """Feed stdlib log records into a collector's log ring.

    The component is ``extra={"component": ...}`` if given (as :mod:`pgmigrator.log` does), else
    the logger name without a leading ``pgmigrator.``; a mapping passed as
    ``extra={"fields": {...}}`` becomes the entry's fields, and an attached exception is
    summarised as ``fields["exc"]``. Install it with ``logging.getLogger("pgmigrator")
    .addHandler(CollectorLogHandler(collector, level=logging.INFO))``.
    """

    def __init__(self, target: LogTarget, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.add_log(record_to_entry(record))
        except Exception:
            self.handleError(record)


def record_to_entry(record: logging.LogRecord) -> LogEntry:
    """Convert a stdlib log record to a :class:`LogEntry`."""
    raw = getattr(record, "fields", None)
    fields: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        fields.setdefault("exc", f"{type(exc).__name__}: {exc}")
    component = getattr(record, "component", None)
    if not isinstance(component, str):
        component = record.name.removeprefix("pgmigrator.")
    return LogEntry(
        time=record.created,
        level=normalize_level(record.levelname),
        component=component,
        message=record.getMessage(),
        fields=fields,
    )
