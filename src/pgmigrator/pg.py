"""Opening PostgreSQL connections and turning driver errors into the project's error tree.

Every connection made by pgmigrator goes through :func:`connect` so that an unreachable host, a
wrong password or a missing database gives one clear message naming the server (without secrets).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgmigrator.dsn import Target
from pgmigrator.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    DatabaseError,
    DiskFull,
    PgMigratorError,
    PrivilegeError,
)

Conn = psycopg.Connection[tuple[Any, ...]]
#: ``row_security = off``: a statement that row-level security would filter fails instead (the
#: copy, the checksums and the applier must see and touch every row, or say they cannot).
SESSION_SETTINGS = (
    "SET application_name = 'pgmigrator'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; "
    "SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET bytea_output = 'hex'; "
    "SET row_security = off"
)

#: Timeouts a role or database may set for every session (managed servers often do), off for
#: pgmigrator's own: a COPY longer than ``statement_timeout``, an applier transaction open while
#: the next chunk is read, the exported snapshot's session idle while the workers import it.
#: ``idle_session_timeout`` is PostgreSQL 14+.
TIMEOUTS_OFF = ("statement_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout")


def timeouts_off_sql(server_version: int) -> str:
    """The SET statements that turn `TIMEOUTS_OFF` off on a server of this version."""
    names = TIMEOUTS_OFF if server_version >= 140000 else TIMEOUTS_OFF[:2]
    return "; ".join(f"SET {name} = 0" for name in names)


def replication_options(dsn: str) -> str:
    """libpq ``options`` of a replication connection, which takes its settings when it connects
    (sources are PostgreSQL 14+): the DSN's own (or ``PGOPTIONS``), then `TIMEOUTS_OFF` off."""
    own = conninfo_to_dict(dsn).get("options") or os.environ.get("PGOPTIONS", "")
    ours = " ".join(f"-c {name}=0" for name in TIMEOUTS_OFF)
    return f"{own} {ours}".strip()


def translate(exc: BaseException, target: Target, doing: str) -> PgMigratorError:
    """Map a psycopg error to our tree, with a message naming ``target`` and what we were doing."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"{target.role} ({target.safe})"
    if sqlstate in ("28P01", "28000") or "password authentication failed" in text:
        return AuthenticationFailed(
            f"{where}: authentication failed while {doing}: {text}",
            hint="check the user and password in the connection string, and pg_hba.conf on the server",
        )
    if sqlstate == "3D000":
        return DatabaseError(
            f"{where}: {text}",
            sqlstate=sqlstate,
            hint="create the database first, or fix dbname in the connection string",
        )
    if sqlstate == "42501":
        return PrivilegeError(
            f"{where}: permission denied while {doing}: {text}",
            hint="grant the privilege to the role, or connect as a role that has it",
        )
    if sqlstate == "53100":
        return DiskFull(
            f"{where}: disk full while {doing}: {text}",
            hint="free space on the server (or grow the volume), then re-run with --resume",
        )
    if sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return ConnectionFailed(
            f"{where}: cannot connect or connection lost while {doing}: {text}",
            hint="check host and port, that the server runs and accepts TCP connections (listen_addresses, firewall)",
        )
    return DatabaseError(
        f"{where}: {doing} failed: {text} (SQLSTATE {sqlstate})", sqlstate=sqlstate
    )


def connect(
    target: Target, *, autocommit: bool = True, replication: bool = False, settings: bool = True
) -> Conn:
    """Connect to ``target``; raise a translated error (never a bare psycopg one).

    Every session gets `TIMEOUTS_OFF` off, and unless ``settings`` is False the output settings
    the copy and the decoders rely on (`SESSION_SETTINGS`).
    """
    kwargs: dict[str, Any] = {
        "autocommit": autocommit,
        "connect_timeout": 10,
        "application_name": "pgmigrator",
        "client_encoding": "UTF8",
    }
    if replication:
        kwargs["replication"] = "database"
        kwargs["options"] = replication_options(target.dsn)
    try:
        conn = psycopg.connect(target.dsn, **kwargs)
        if not replication:
            off = timeouts_off_sql(conn.info.server_version)
            conn.execute((f"{SESSION_SETTINGS}; {off}" if settings else off).encode())
            if not autocommit:
                conn.commit()
        return conn
    except psycopg.Error as exc:
        raise translate(exc, target, "connecting") from exc


def server_major(conn: Conn) -> int:
    return int(conn.info.server_version) // 10000


class ThreadConnections:
    """One connection to ``target`` per thread, made on the thread's first `get` (``setup`` then
    runs on it) and reused by everything that thread runs; a closed or broken one is replaced.
    `close` (or leaving the ``with`` block) closes them all."""

    def __init__(self, target: Target, setup: Callable[[Conn], object] | None = None) -> None:
        self.target = target
        self._setup = setup
        self._local = threading.local()
        self._all: list[Conn] = []
        self._lock = threading.Lock()

    def get(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.target)
            with self._lock:
                self._all.append(conn)  # (closed by `close` even if its set-up fails)
            if self._setup is not None:
                self._setup(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> ThreadConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
