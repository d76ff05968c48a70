"""LISTEN/NOTIFY on a dedicated connection (never a pool), with reconnect and re-LISTEN.

`Listener.notifications` yields every notification on the channels. When the connection is lost
(server restart, ``pg_terminate_backend``), it reconnects with exponential backoff and jitter and
issues ``LISTEN`` for every channel again; notifications sent while disconnected are lost (NOTIFY
has no durable position), so the gap is logged with its length. The first connection failing for
a non-retryable reason (authentication, missing database) raises at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence

import psycopg
from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, is_retryable
from pgmigrator.log import get_logger
from pgmigrator.pg import timeouts_off_sql, translate

log = get_logger("listen")


class Listener:
    def __init__(
        self,
        target: Target,
        channels: Sequence[str],
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.target = target
        self.channels = list(dict.fromkeys(channels))
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_state = on_state or (lambda status, detail: None)
        self.conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.reconnects = 0
        self.backend_pid: int | None = None

    async def connect(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.target.dsn,
                autocommit=True,
                connect_timeout=10,
                application_name="pgmigrator-listen",
            )
        except psycopg.Error as exc:
            raise translate(exc, self.target, "connecting to LISTEN") from exc
        try:
            await conn.execute(timeouts_off_sql(conn.info.server_version).encode())  # idle for long
            for channel in self.channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            await conn.close()
            raise translate(exc, self.target, "running LISTEN") from exc
        self.conn = conn
        self.backend_pid = conn.info.backend_pid
        self.on_state("ok", "")
        log.info("listening", channels=",".join(self.channels), backend_pid=self.backend_pid)

    async def notifications(self) -> AsyncIterator[psycopg.Notify]:
        """Every notification, across reconnects, until the caller stops iterating."""
        if self.conn is None:
            await self.connect()
        while True:
            assert self.conn is not None
            try:
                async for notify in self.conn.notifies():
                    yield notify
            except psycopg.OperationalError as exc:
                await self._reconnect(str(exc).strip().splitlines()[0] if str(exc) else "")

    async def _reconnect(self, reason: str) -> None:
        lost_at = time.monotonic()
        self.on_state("down", reason)
        log.warning("LISTEN connection lost, reconnecting", error=reason)
        await self.close()
        delay = self.backoff_initial_s
        while True:
            try:
                await self.connect()
                break
            except PgMigratorError as exc:
                if not is_retryable(exc):
                    raise
                log.warning("reconnect failed", error=exc.message, retry_in_s=round(delay, 2))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max_s)
        self.reconnects += 1
        log.warning(
            "LISTEN re-established: notifications sent during the gap are lost",
            gap_s=round(time.monotonic() - lost_at, 3),
            channels=",".join(self.channels),
        )

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(psycopg.Error):
                await conn.close()
