"""WAL budget: watch how much WAL the pipeline's slot holds back on the source.

A logical slot pins every WAL segment from its ``restart_lsn`` on; a consumer that stops
confirming (stuck destination, paused pipeline, long transaction) fills the source's disk. The
watcher polls ``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)`` every ``check_s`` seconds
on its own connection and reports it three ways: the collector's ``slot_retained_bytes`` info
(served as the Prometheus gauge ``slot_retained_wal_bytes``), the collector's ``slot`` health
(``ok``, ``degraded`` above ``warn_mb``, ``down`` above ``max_mb``: ``/readyz`` then fails), and
a log line each time the level changes (a warning above the budget, an error above the maximum).
The server's own limit counts too: a slot past ``max_slot_wal_keep_size`` (``wal_status``
unreserved, lost at the next checkpoint) is at least ``degraded``, an invalidated one ``down``.

Heartbeats: an idle slot already advances through keepalives (the stream confirms the
walsender's position when nothing of ours is pending), but with ``heartbeat_s`` set the watcher
also writes a non-transactional ``pg_logical_emit_message(false, 'pgmigrator_heartbeat', '')``
that often, so even a source with no other WAL traffic gives the slot a position to move to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from pgmigrator.aio import wait_event
from pgmigrator.config import WalBudgetSettings
from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector
from pgmigrator.metrics.collector import HealthStatus
from pgmigrator.metrics.format import format_bytes
from pgmigrator.pg import Conn, connect
from pgmigrator.source.slots import slot_lost_error, slot_status

log = get_logger("walbudget")
MB = 1024 * 1024
HEARTBEAT_PREFIX = "pgmigrator_heartbeat"


def classify(retained: int | None, warn_bytes: int, max_bytes: int) -> HealthStatus:
    """The slot's health for this much retained WAL (unknown counts as ok)."""
    if retained is None or retained <= warn_bytes:
        return "ok"
    return "degraded" if retained <= max_bytes else "down"


def describe(status: HealthStatus, retained: int | None, budget: WalBudgetSettings) -> str:
    shown = "unknown" if retained is None else format_bytes(retained)
    if status == "ok":
        return f"slot retains {shown} of WAL"
    limit = budget.warn_mb if status == "degraded" else budget.max_mb
    return f"slot retains {shown} of WAL, over the {limit} MB {'budget' if status == 'degraded' else 'maximum'}"


class WalBudgetWatcher:
    """Polls the slot's retained WAL and optionally emits heartbeats; one async task."""

    def __init__(
        self, source: Target, slot: str, budget: WalBudgetSettings, collector: Collector
    ) -> None:
        self.source = source
        self.slot = slot
        self.budget = budget
        self.collector = collector
        self.status: HealthStatus = "ok"
        self.retained: int | None = None
        self.heartbeats = 0
        self._conn: Conn | None = None
        self._last_heartbeat = time.monotonic()
        self._lost = False  # the server invalidated the slot (logged once)
        self.on_lost: Callable[[], None] | None = None  # called, from the polling thread, once lost
        self.on_level: Callable[[HealthStatus], None] | None = None  # called after every check

    def check(self) -> HealthStatus:
        """One poll (blocking): read the slot, update the collector, log a change of level."""
        conn = self._connection()
        status = slot_status(conn, self.slot)
        self.retained = None if status is None else status.retained_bytes
        level = classify(self.retained, self.budget.warn_mb * MB, self.budget.max_mb * MB)
        detail = describe(level, self.retained, self.budget)
        lost = status is not None and status.lost
        if status is None:
            level, detail = "down", f"slot {self.slot!r} is gone from the source"
        elif lost:
            level, detail = "down", f"slot {self.slot!r} was invalidated (max_slot_wal_keep_size)"
        elif status.wal_status == "unreserved" and level == "ok":
            level = "degraded"
            detail = f"{detail}, past max_slot_wal_keep_size: the next checkpoint may invalidate it"
        self.collector.set_info("slot_retained_bytes", self.retained)
        self.collector.set_health("slot", level, detail)
        newly, self._lost = lost and not self._lost, lost  # (set before on_lost reads it)
        if newly:
            log.error(
                "slot invalidated by the source",
                slot=self.slot,
                detail=detail,
                hint=slot_lost_error(self.slot).hint,
            )
            if self.on_lost is not None:
                self.on_lost()
        elif level != self.status and not lost:
            self._log_change(level, detail)
        self.status = level
        if self.on_level is not None:
            self.on_level(level)
        return level

    def raise_if_lost(self) -> None:
        """`slot_lost_error` once a check found the slot invalidated: its stream has a gap."""
        if self._lost:
            raise slot_lost_error(self.slot)

    def _log_change(self, level: HealthStatus, detail: str) -> None:
        if level == "ok":
            log.info("slot back under its WAL budget", slot=self.slot, detail=detail)
        elif level == "degraded":
            log.warning(
                "slot over its WAL budget",
                slot=self.slot,
                detail=detail,
                hint="the consumer is behind or stuck: check the destination and the lag",
            )
        else:
            log.error(
                "slot over its WAL maximum",
                slot=self.slot,
                detail=detail,
                hint="the source's disk fills while the slot is held: fix the consumer, or drop the slot (`pgmigrator cleanup`) to save the source",
            )

    def heartbeat(self) -> bool:
        """Emit a heartbeat message when one is due (blocking); whether one was written."""
        if self.budget.heartbeat_s <= 0:
            return False
        now = time.monotonic()
        if now - self._last_heartbeat < self.budget.heartbeat_s:
            return False
        self._last_heartbeat = now
        self._connection().execute(
            "SELECT pg_logical_emit_message(false, %s, ''::text)", (HEARTBEAT_PREFIX,)
        )
        self.heartbeats += 1
        return True

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.source)
        return self._conn

    def _tick(self) -> None:
        try:
            self.heartbeat()
            self.check()
        except PgMigratorError as exc:  # the follow loop reports the source; just try next time
            log.debug("slot check failed", error=exc.message)
            self.close()
        except Exception as exc:  # psycopg errors on a dead connection: reconnect next tick
            log.debug("slot check failed", error=f"{type(exc).__name__}: {exc}")
            self.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (or the task is cancelled)."""
        interval = min(self.budget.check_s, self.budget.heartbeat_s or self.budget.check_s)
        try:
            while not stop.is_set():
                await asyncio.to_thread(self._tick)
                await wait_event(stop, interval)
        finally:
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
