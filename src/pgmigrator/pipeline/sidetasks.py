"""The follow loop's side tasks: the source's WAL position (for the lag) and the durable feedback.

Both run beside the read and apply loops, on sessions and threads of their own, so that neither
a query on a busy source nor the WAL flush the durable probe forces on the destination holds up
the changes being applied (awaited between batches, that flush alone put 200-300 ms into the
heartbeat's p99 under pgbench -c2). Each ends once ``ended`` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg

from pgmigrator.aio import wait_event
from pgmigrator.destination.progress import OriginProgress
from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, RetryableReplicationError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect
from pgmigrator.source.replication import ReplicationStream

log = get_logger("follow")
INTERVAL_S = 1.0


async def watch_source(
    source: Target,
    ended: asyncio.Event,
    tick: Callable[[Lsn | None], None],
    check: Callable[[Conn], None] | None = None,
) -> None:
    """Call ``tick`` with the source's WAL position at once, then every second (None: unknown),
    and ``check`` with the session after it (it decides itself when to do something).

    The session is for monitoring only: when it fails (a switchover's fence ends it), the stream
    goes on and the session is opened again next time.
    """
    monitor: Conn | None = None
    try:
        while True:
            position: Lsn | None = None
            try:
                if monitor is None or monitor.closed:
                    monitor = await asyncio.to_thread(connect, source)
                position = await asyncio.to_thread(current_lsn, monitor)
                if check is not None:
                    await asyncio.to_thread(check, monitor)
            except PgMigratorError as exc:
                log.debug("source position unknown this time", error=exc.message)
                if monitor is not None:
                    await asyncio.to_thread(monitor.close)
                monitor = None
            tick(position)
            if await wait_event(ended, INTERVAL_S):
                break
    finally:
        if monitor is not None:
            await asyncio.to_thread(monitor.close)


async def confirm_durable(
    progress: OriginProgress,
    stream: ReplicationStream,
    ended: asyncio.Event,
    applied: Callable[[], Lsn],
) -> None:
    """Every second while behind ``applied()``, and once more at the end: move the stream's flush
    position (the slot's confirmed LSN) to what the destination holds on disk."""
    while not await wait_event(ended, INTERVAL_S):
        if applied() > stream.flushed:
            await advance(progress, stream)
    await advance(progress, stream)


async def advance(progress: OriginProgress, stream: ReplicationStream) -> None:
    durable = await asyncio.to_thread(progress.durable_lsn)  # not on the applier's thread
    if durable > stream.flushed:
        stream.flushed = durable


def current_lsn(conn: Conn) -> Lsn:
    try:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    except psycopg.Error as exc:  # e.g. terminated by a switchover's fence: reopened next time
        raise RetryableReplicationError(
            f"source: the monitoring session failed: {str(exc).strip()}"
        ) from exc
    return Lsn.parse(row[0]) if row else Lsn(0)
