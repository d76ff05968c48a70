"""The applier's destination session: its connection, settings and replication origin.

The session applies as a replica (``session_replication_role``: no user triggers, no foreign key
checks: the source already checked them), commits without waiting for its WAL flush (the position
reported to the source comes from `progress`, never from a commit's return), keeps the planner
to nested loops over the key index (a batch's staging table has no statistics) and is tagged
with the replication origin whose progress every commit advances.
"""

from __future__ import annotations

import contextlib

import psycopg

from pgmigrator.destination import _sql
from pgmigrator.dsn import Target
from pgmigrator.errors import ApplyError, PgMigratorError, RetryableApplyError
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect, translate

SETTINGS = (
    "SET session_replication_role = replica; SET synchronous_commit = off; "
    "SET enable_mergejoin = off; SET enable_hashjoin = off"
)
_IN_USE = "55006"  # object_in_use: the origin is set up by another session


def open_session(target: Target, origin: str) -> tuple[Conn, int, Lsn]:
    """Connect and set the session up for ``origin``: (connection, origin id, LSN to resume from)."""
    try:
        conn = connect(target, autocommit=True)
    except PgMigratorError as exc:
        cls = RetryableApplyError if exc.retryable else ApplyError
        raise cls(exc.message, hint=exc.hint) from exc
    conn.adapters.register_dumper(bytes, _sql.TextBytesDumper)
    try:
        conn.execute(SETTINGS)
        origin_id, lsn = _setup_origin(conn, origin)
    except psycopg.Error as exc:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        if getattr(exc, "sqlstate", None) == _IN_USE:
            raise RetryableApplyError(
                f"replication origin {origin!r} is in use by another session",
                hint="another applier runs with this origin, or a previous session is still "
                "exiting: retry shortly",
            ) from exc
        raise apply_error(exc, target, f"setting up replication origin {origin!r}") from exc
    return conn, origin_id, lsn


def _setup_origin(conn: Conn, origin: str) -> tuple[int, Lsn]:
    name = (origin,)
    row = conn.execute("SELECT pg_replication_origin_oid(%s)", name).fetchone()
    if row is None or row[0] is None:
        row = conn.execute("SELECT pg_replication_origin_create(%s)", name).fetchone()
    origin_id = int(row[0]) if row else 0
    conn.execute("SELECT pg_replication_origin_session_setup(%s)", name)
    # Resume from the destination's own record, never from one kept by the process (after
    # kill -9 the destination may hold one batch more than the process logged).
    row = conn.execute("SELECT pg_replication_origin_progress(%s, true)::text", name).fetchone()
    return origin_id, Lsn.parse(row[0] if row else None)


def apply_error(
    exc: BaseException, target: Target, doing: str, *, broken: bool = False
) -> ApplyError:
    """``exc`` met while ``doing``, as the applier's error: retryable when the server says it is
    worth another try or the connection broke (a new session starts from the origin's progress)."""
    err = translate(exc, target, doing)
    cls = RetryableApplyError if err.retryable or broken else ApplyError
    return cls(err.message, hint=err.hint)
