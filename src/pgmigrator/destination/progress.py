"""The replication origin's durable progress, read on a connection of its own.

The applier commits with ``synchronous_commit = off``, so a committed source LSN may be lost to an
operating-system crash for a moment: the position reported to the source (the slot's confirmed
flush) must come from ``pg_replication_origin_progress(origin, true)``, which first flushes the
destination's WAL up to the origin's last commit. That flush can take a while on a busy disk; run
on the applier's own session it held every change behind it (heartbeat delays of 300 ms at p99
under pgbench here), so it gets a session and, in the follow loop, a task and a thread of its own.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, RetryableApplyError
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect, translate


class OriginProgress:
    """``durable_lsn()``: what the destination holds on disk of origin ``origin``'s progress."""

    def __init__(self, dest: Target, origin: str) -> None:
        self._target = dest
        self._origin = origin
        self._conn: Conn | None = None
        self._lock = threading.Lock()  # a probe still running in its thread when `close` comes

    def durable_lsn(self) -> Lsn:
        """The origin's progress, flushed to disk first (0/0 before its first commit)."""
        with self._lock:
            return self._durable_lsn()

    def _durable_lsn(self) -> Lsn:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._target, autocommit=True)
            row = self._conn.execute(
                "SELECT pg_replication_origin_progress(%s, true)::text", (self._origin,)
            ).fetchone()
        except PgMigratorError as exc:
            self._close()
            raise RetryableApplyError(exc.message, hint=exc.hint) from exc
        except psycopg.Error as exc:
            self._close()
            err = translate(exc, self._target, "reading the replication origin's progress")
            raise RetryableApplyError(err.message, hint=err.hint) from exc
        return Lsn.parse(row[0] if row else None)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
