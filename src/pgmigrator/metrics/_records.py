"""The collector's records: tables, sinks and component health, as the snapshot shows them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pgmigrator.metrics.window import MIN_SPAN_S

COPIED_STATES = frozenset({"copied", "streaming"})
"""Table states counted in ``tables_copied``."""


class TableEstimate(NamedTuple):
    """A table to track, with the size estimates known before copying it."""

    schema: str
    name: str
    rows_total: int = 0
    bytes_total: int = 0


@dataclass(slots=True)
class _Table:
    schema: str
    name: str
    rows_total: int = 0
    bytes_total: int = 0
    state: str = "pending"
    rows_copied: int = 0
    bytes_copied: int = 0
    rows_applied: int = 0
    started: float | None = None  # monotonic
    finished: float | None = None
    error: str | None = None

    def percent(self) -> float:
        if self.state in COPIED_STATES:
            return 100.0
        # Binary COPY learns a chunk's row count only when the chunk ends: bytes move first.
        if self.bytes_total > 0 and self.bytes_copied > 0:
            return min(99.9, 100.0 * self.bytes_copied / self.bytes_total)
        if self.rows_total > 0:
            return min(99.9, 100.0 * self.rows_copied / self.rows_total)
        return 0.0

    def to_dict(self, now: float, wall_of: Callable[[float], str]) -> dict[str, Any]:
        end = now if self.finished is None else self.finished
        elapsed = None if self.started is None else end - self.started
        pct = self.percent()
        # Averaged over at least a second, like the sliding windows, to damp the first burst.
        span = None if elapsed is None else max(elapsed, MIN_SPAN_S)
        rate = None if span is None else self.rows_copied / span
        eta = None
        if self.state == "copying" and span is not None and 0 < pct < 100:
            eta = span * (100 - pct) / pct
        return {
            "schema": self.schema,
            "name": self.name,
            "state": self.state,
            "rows_total": self.rows_total,
            "rows_copied": self.rows_copied,
            "rows_applied": self.rows_applied,
            "bytes_total": self.bytes_total,
            "bytes_copied": self.bytes_copied,
            "percent": round(pct, 2),
            "started_at": None if self.started is None else wall_of(self.started),
            "finished_at": None if self.finished is None else wall_of(self.finished),
            "elapsed_s": None if elapsed is None else round(elapsed, 3),
            "rows_per_s": None if rate is None else round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "error": self.error,
        }


@dataclass(slots=True)
class _Sink:
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    queue_depth: int = 0


@dataclass(slots=True)
class _Health:
    status: str
    detail: str
    since: float  # monotonic
