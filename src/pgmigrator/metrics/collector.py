"""The metrics collector: one thread-safe place where the pipeline reports what it is doing.

The pipeline (asyncio tasks in the main thread, worker threads, and the main process on behalf
of the COPY worker processes) writes phase changes, per-table progress, LSN positions, row and
byte counts, errors, sink counters, component health and log lines. Every reader (the HTTP API,
the WebSocket push, the TUI, the state file) asks for the same :meth:`Collector.snapshot`: a
JSON-ready ``dict`` with snake_case keys, so all of them show the same numbers.

A single :class:`threading.Lock` guards all state. Writers hold it for a few attribute updates;
:meth:`~Collector.snapshot` holds it while building the dict. Nothing is logged while the lock
is held, so a :class:`~pgmigrator.metrics.logring.CollectorLogHandler` can never deadlock.
Metrics calls never raise for unknown tables or odd values: observability must not stop a
migration. Times come from an injected monotonic clock (durations, rates) and wall clock
(timestamps), so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any, Literal, get_args

from pgmigrator.lsn import Lsn
from pgmigrator.metrics._records import COPIED_STATES, TableEstimate, _Health, _Sink, _Table
from pgmigrator.metrics.format import format_lag, iso_utc, to_jsonable
from pgmigrator.metrics.logring import DEFAULT_CAPACITY, LogEntry, LogRing, normalize_level
from pgmigrator.metrics.publishing import Publishing
from pgmigrator.metrics.subscription import Subscription
from pgmigrator.metrics.window import SlidingWindow

HealthStatus = Literal["ok", "degraded", "down"]
HEALTH_STATUSES: tuple[str, ...] = get_args(HealthStatus)

SNAPSHOT_VERSION = 1
__all__ = ["COPIED_STATES", "HEALTH_STATUSES", "Collector", "Subscription", "TableEstimate"]
LsnLike = Lsn | int | str | None


class Collector(Publishing):
    """Thread-safe aggregation of pipeline metrics; see the module docstring."""

    def __init__(
        self,
        pipeline: str = "default",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        window_s: float = 60.0,
        log_capacity: int = DEFAULT_CAPACITY,
        snapshot_logs: int = 20,
        publish_interval: float = 0.5,
    ) -> None:
        self.pipeline = pipeline
        self.snapshot_logs = snapshot_logs
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._created = clock()
        self._created_wall = wall_clock()
        self._phase = "idle"
        self._phase_since = self._created
        self._state = "idle"
        self._tables: dict[tuple[str, str], _Table] = {}  # insertion order = display order
        self._applied: Lsn | None = None
        self._confirmed: Lsn | None = None
        self._latest: Lsn | None = None
        self._commit_wall: float | None = None
        self._lag_s_override: float | None = None
        self._rows = SlidingWindow(window_s, clock=clock)
        self._bytes = SlidingWindow(window_s, clock=clock)
        self._error_count = 0
        self._last_error: dict[str, Any] | None = None
        self._sinks: dict[str, _Sink] = {}
        self._health: dict[str, _Health] = {}
        self._info: dict[str, Any] = {}
        self._logs = LogRing(log_capacity)
        self.publish_interval = publish_interval
        self._subscriptions: list[Subscription] = []
        self._publisher: asyncio.Task[None] | None = None

    # -- phase and state -------------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        """Enter a phase (idle, connecting, schema, copy, streaming, switchover, done, ...)."""
        with self._lock:
            if phase != self._phase:
                self._phase = phase
                self._phase_since = self._clock()

    def set_state(self, state: str) -> None:
        """Set the pipeline's run state (e.g. running, paused, stopping, stopped, failed)."""
        with self._lock:
            self._state = state

    @property
    def phase(self) -> str:
        return self._phase

    # -- tables ----------------------------------------------------------------------------------

    def set_tables(self, tables: Iterable[TableEstimate]) -> None:
        """Replace the tracked tables; their order is the display order."""
        with self._lock:
            self._tables = {
                (t.schema, t.name): _Table(t.schema, t.name, t.rows_total, t.bytes_total)
                for t in tables
            }

    def register_table(
        self, schema: str, name: str, *, rows_total: int = 0, bytes_total: int = 0
    ) -> None:
        """Track one more table, or update the estimates of a known one."""
        with self._lock:
            t = self._table(schema, name)
            t.rows_total, t.bytes_total = rows_total, bytes_total

    def table_started(self, schema: str, name: str) -> None:
        """A COPY of the table (re)starts: state ``copying``, progress back to zero."""
        with self._lock:
            t = self._table(schema, name)
            t.state, t.started, t.finished, t.error = "copying", self._clock(), None, None
            t.rows_copied = t.bytes_copied = 0
            self._arm(t.started)

    def table_progress(self, schema: str, name: str, rows_copied: int, bytes_copied: int) -> None:
        """Report the table's cumulative COPY progress; the increase feeds the totals and rates."""
        with self._lock:
            t = self._table_copying(schema, name)
            self._count(max(0, rows_copied - t.rows_copied), max(0, bytes_copied - t.bytes_copied))
            t.rows_copied, t.bytes_copied = rows_copied, bytes_copied

    def table_advance(self, schema: str, name: str, rows: int, nbytes: int = 0) -> None:
        """Report ``rows``/``nbytes`` more copied (for parallel chunks reporting increments)."""
        with self._lock:
            t = self._table_copying(schema, name)
            t.rows_copied += rows
            t.bytes_copied += nbytes
            self._count(rows, nbytes)

    def table_done(
        self,
        schema: str,
        name: str,
        rows_copied: int | None = None,
        bytes_copied: int | None = None,
    ) -> dict[str, Any]:
        """The COPY finished: state ``copied``, 100 %; final counts feed the totals if higher.

        Returns the table's entry as `snapshot` shows it (without building the whole snapshot,
        which with thousands of tables made every table's end cost as much as all of them).
        """
        with self._lock:
            t = self._table(schema, name)
            if rows_copied is not None or bytes_copied is not None:
                rows = t.rows_copied if rows_copied is None else rows_copied
                nbytes = t.bytes_copied if bytes_copied is None else bytes_copied
                self._count(max(0, rows - t.rows_copied), max(0, nbytes - t.bytes_copied))
                t.rows_copied, t.bytes_copied = rows, nbytes
            now = self._clock()
            t.started = now if t.started is None else t.started
            t.state, t.finished, t.error = "copied", now, None
            return t.to_dict(now, self._wall_of)

    def table_streaming(self, schema: str, name: str) -> None:
        """The table now receives live changes."""
        self.set_table_state(schema, name, "streaming")

    def table_errored(self, schema: str, name: str, error: BaseException | str) -> None:
        """The table failed: state ``errored``; also counted as by :meth:`record_error`."""
        last = self._error_record(error, f"table {schema}.{name}")
        with self._lock:
            t = self._table(schema, name)
            t.state, t.error = "errored", last["message"]
            if t.started is not None:
                t.finished = self._clock()
            self._error_count += 1
            self._last_error = last

    def set_table_state(self, schema: str, name: str, state: str) -> None:
        """Set any table state (pending, copying, copied, streaming, errored, skipped, ...)."""
        with self._lock:
            self._table(schema, name).state = state

    # -- rows, LSNs, lag -------------------------------------------------------------------------

    def add_rows(
        self, rows: int, nbytes: int = 0, *, schema: str | None = None, table: str | None = None
    ) -> None:
        """Count rows/bytes written outside a table COPY (e.g. applied changes).

        With ``schema`` and ``table`` the rows are also added to that table's ``rows_applied``.
        """
        with self._lock:
            self._count(rows, nbytes)
            if schema is not None and table is not None:
                self._table(schema, table).rows_applied += rows

    def tables_applied(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Changes applied per ``(schema, table)`` by a committed batch (the totals are counted by
        `add_rows`); those tables now receive live changes (state ``streaming``)."""
        with self._lock:
            for (schema, name), rows in counts.items():
                t = self._table(schema, name)
                t.rows_applied += rows
                if t.state in ("pending", "copied"):
                    t.state = "streaming"

    def set_lsns(
        self,
        *,
        applied: LsnLike = None,
        confirmed: LsnLike = None,
        latest: LsnLike = None,
        commit_time: float | None = None,
        lag_s: float | None = None,
    ) -> None:
        """Update any of the positions; None leaves one unchanged.

        ``commit_time`` (epoch seconds) is the source commit time of the last applied
        transaction: the lag in seconds is then measured from it. ``lag_s`` sets the lag in
        seconds directly instead (e.g. from ``pg_stat_replication``). Once the applied position
        reaches the latest one the lag is zero whatever these say.
        """
        with self._lock:
            if applied is not None:
                self._applied = Lsn.parse(applied)
            if confirmed is not None:
                self._confirmed = Lsn.parse(confirmed)
            if latest is not None:
                self._latest = Lsn.parse(latest)
            if commit_time is not None:
                self._commit_wall, self._lag_s_override = commit_time, None
            if lag_s is not None:
                self._lag_s_override = max(0.0, lag_s)

    def record_applied(
        self, lsn: LsnLike, rows: int = 0, nbytes: int = 0, *, commit_time: float | None = None
    ) -> None:
        """Shortcut for a batch written to the destination: applied LSN plus row/byte counts."""
        self.set_lsns(applied=lsn, commit_time=commit_time)
        self.add_rows(rows, nbytes)

    # -- errors, sinks, health, info, logs -------------------------------------------------------

    def record_error(self, error: BaseException | str, *, component: str | None = None) -> None:
        """Count an error and remember it as the last one."""
        last = self._error_record(error, component)
        with self._lock:
            self._error_count += 1
            self._last_error = last

    def _error_record(self, error: BaseException | str, component: str | None) -> dict[str, Any]:
        # Built outside the lock: str() of an exception may run arbitrary code.
        return {
            "message": error if isinstance(error, str) else (str(error) or type(error).__name__),
            "type": None if isinstance(error, str) else type(error).__name__,
            "component": component,
            "time": iso_utc(self._wall()),
        }

    def sink_counter(
        self,
        sink: str,
        *,
        delivered: int = 0,
        failed: int = 0,
        retried: int = 0,
        dropped: int = 0,
        dead_lettered: int = 0,
        queue_depth: int | None = None,
    ) -> None:
        """Add to a sink's counters; ``queue_depth`` is a gauge and replaces the old value."""
        with self._lock:
            s = self._sinks.get(sink)
            if s is None:
                s = self._sinks[sink] = _Sink()
            s.delivered += delivered
            s.failed += failed
            s.retried += retried
            s.dropped += dropped
            s.dead_lettered += dead_lettered
            if queue_depth is not None:
                s.queue_depth = queue_depth

    def set_health(self, component: str, status: HealthStatus, detail: str = "") -> None:
        """Report a component as ``ok``, ``degraded`` or ``down``, with an optional detail."""
        if status not in HEALTH_STATUSES:
            raise ValueError(f"health status must be one of {HEALTH_STATUSES}, not {status!r}")
        with self._lock:
            old = self._health.get(component)
            since = old.since if old is not None and old.status == status else self._clock()
            self._health[component] = _Health(status, detail, since)

    def set_info(self, key: str, value: Any) -> None:
        """Attach a piece of context (slot name, redacted DSNs, ...) shown by status."""
        self.update_info({key: value})

    def update_info(self, info: Mapping[str, Any]) -> None:
        """Attach several pieces of context at once."""
        clean = to_jsonable(info)
        with self._lock:
            self._info.update(clean)

    def log(self, level: str | int, component: str, message: str, **fields: Any) -> None:
        """Add a line to the log ring (the stdlib logging path is CollectorLogHandler)."""
        self.add_log(LogEntry(self._wall(), normalize_level(level), component, message, fields))

    def add_log(self, entry: LogEntry) -> None:
        """Add a ready-made entry to the log ring."""
        with self._lock:
            self._logs.append(entry)

    def logs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The log ring (newest ``limit`` entries), oldest first, as JSON-ready dicts."""
        with self._lock:
            entries = self._logs.entries(limit)
        return [e.to_dict() for e in entries]

    # -- snapshot --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A consistent, JSON-ready picture of everything; see the package docs for the shape."""
        with self._lock:
            now, wall = self._clock(), self._wall()
            wall_of = self._wall_of
            tables = [t.to_dict(now, wall_of) for t in self._tables.values()]
            snap: dict[str, Any] = {
                "version": SNAPSHOT_VERSION,
                "timestamp": iso_utc(wall),
                "pipeline": self.pipeline,
                "phase": self._phase,
                "phase_since": wall_of(self._phase_since),
                "state": self._state,
                "started_at": iso_utc(self._created_wall),
                "uptime_s": round(now - self._created, 3),
                **self._lsn_fields(wall),
                "tables_total": len(tables),
                "tables_copied": sum(t["state"] in COPIED_STATES for t in tables),
                "tables_by_state": _count_states(tables),
                "tables": tables,
                "rows_per_s": round(self._rows.rate(now), 1),
                "bytes_per_s": round(self._bytes.rate(now), 1),
                "total_rows": int(self._rows.total),
                "total_bytes": int(self._bytes.total),
                "error_count": self._error_count,
                "last_error": None if self._last_error is None else dict(self._last_error),
                "sinks": {name: asdict(s) for name, s in self._sinks.items()},
                "health": {
                    name: {"status": h.status, "detail": h.detail, "since": wall_of(h.since)}
                    for name, h in self._health.items()
                },
                "info": dict(self._info),
                "logs": [e.to_dict() for e in self._logs.entries(self.snapshot_logs)],
            }
        return snap

    # -- internals (the lock is held by the caller) ----------------------------------------------

    def _wall_of(self, mono: float) -> str:
        # anchored at creation, so a moment reads the same in every snapshot
        return iso_utc(self._created_wall + (mono - self._created))

    def _table(self, schema: str, name: str) -> _Table:
        t = self._tables.get((schema, name))
        if t is None:
            t = self._tables[(schema, name)] = _Table(schema, name)
        return t

    def _table_copying(self, schema: str, name: str) -> _Table:
        t = self._table(schema, name)
        if t.state == "pending":
            t.state = "copying"
        if t.started is None:
            t.started = self._clock()
            self._arm(t.started)
        return t

    def _arm(self, now: float) -> None:
        self._rows.arm(now)
        self._bytes.arm(now)

    def _count(self, rows: int, nbytes: int) -> None:
        now = self._clock()
        if rows:
            self._rows.add(rows, now)
        if nbytes:
            self._bytes.add(nbytes, now)

    def _lsn_fields(self, wall: float) -> dict[str, Any]:
        applied, latest = self._applied, self._latest
        lag_bytes = None if applied is None or latest is None else max(0, latest - applied)
        lag_s: float | None
        if lag_bytes == 0:
            lag_s = 0.0
        elif self._lag_s_override is not None:
            lag_s = self._lag_s_override
        elif self._commit_wall is not None:
            lag_s = max(0.0, wall - self._commit_wall)
        else:
            lag_s = None
        return {
            "applied_lsn": None if applied is None else str(applied),
            "confirmed_lsn": None if self._confirmed is None else str(self._confirmed),
            "latest_lsn": None if latest is None else str(latest),
            "lag_bytes": lag_bytes,
            "lag_s": None if lag_s is None else round(lag_s, 3),
            "lag_formatted": format_lag(lag_bytes, lag_s),
        }


def _count_states(tables: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tables:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return counts
