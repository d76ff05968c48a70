"""Replication slots with exported snapshots, and publications.

``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` only works on a replication connection with the
simple-query protocol, so it goes through psycopg's low-level ``pgconn``. The snapshot it exports
stays importable only while that connection runs nothing else: keep the session idle until every
COPY worker has imported it (DESIGN.md rule 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import pq, sql

from pgmigrator.dsn import Target
from pgmigrator.errors import PreflightError, ReplicationError, listed
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect
from pgmigrator.source.blockers import SlotWait
from pgmigrator.source.catalog import TableInfo

log = get_logger("slots")


@dataclass(frozen=True, slots=True)
class ExportedSlot:
    name: str
    consistent_lsn: Lsn
    snapshot: str


@dataclass(frozen=True, slots=True)
class SlotStatus:
    name: str
    plugin: str | None
    active: bool
    active_pid: int | None
    confirmed_flush: Lsn | None
    restart_lsn: Lsn | None
    retained_bytes: int | None
    wal_status: str | None = None  # reserved, extended, unreserved (about to lose WAL) or lost

    @property
    def lost(self) -> bool:
        """The server invalidated the slot: the WAL it needed is gone (max_slot_wal_keep_size)."""
        return self.wal_status == "lost"


def slot_lost_error(slot: str) -> ReplicationError:
    """The slot was invalidated: its changes cannot be streamed any more (not retryable)."""
    return ReplicationError(
        f"replication slot {slot!r} was invalidated by the source: it held back more WAL than"
        " max_slot_wal_keep_size allows, and the WAL it still needed was removed",
        hint="the changes since its last confirmed position are gone for this pipeline: drop"
        " it (`pgmigrator cleanup`) and start over (`clone` again for a migration; `stream`"
        " creates a new slot); raise max_slot_wal_keep_size, or watch slot_retained_wal_bytes,"
        " so that a stalled consumer does not lose its slot again",
    )


def slot_gone_error(slot: str, pipeline: str | None = None) -> ReplicationError:
    """The slot a pipeline had is no longer on the source: its changes since then are lost."""
    of = "" if pipeline is None else f" of pipeline {pipeline!r}"
    return ReplicationError(
        f"replication slot {slot!r}{of} is gone from the source",
        hint="it was dropped, or the source failed over to a standby (before PostgreSQL 17"
        " logical slots do not follow a failover): the changes since the last applied"
        " position are lost for this pipeline; `pgmigrator cleanup`, then clone again (with"
        " --drop-if-exists: the copied tables are still on the destination)",
    )


class ReplicationSession:
    """A replication connection used to create a slot and hold its exported snapshot."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn = connect(target, replication=True)

    def create_slot(self, name: str, *, temporary: bool = False) -> ExportedSlot:
        ident = sql.Identifier(name).as_string(self.conn)
        temp = "TEMPORARY " if temporary else ""
        command = f"CREATE_REPLICATION_SLOT {ident} {temp}LOGICAL pgoutput (SNAPSHOT 'export')"
        with SlotWait(self.target):  # (it waits for the transactions open now to end)
            res = self.conn.pgconn.exec_(command.encode())
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise _slot_error(name, res, self.target)
        values = [(res.get_value(0, i) or b"").decode() for i in range(res.nfields)]
        slot = ExportedSlot(values[0], Lsn.parse(values[1]), values[2])
        log.info(
            "slot created",
            slot=name,
            consistent_lsn=str(slot.consistent_lsn),
            snapshot=slot.snapshot,
            temporary=temporary,
        )
        return slot

    def close(self) -> None:
        self.conn.close()


def _slot_error(name: str, res: pq.abc.PGresult, target: Target) -> ReplicationError:
    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    text = (res.error_message or b"").decode(errors="replace").strip()
    if state == "42710":
        return ReplicationError(
            f"replication slot {name!r} already exists on the source",
            hint="a previous clone left it: continue with --resume, or run `pgmigrator cleanup` first",
        )
    if state == "53400":
        return ReplicationError(
            f"no free replication slot on the source: {text}",
            hint="raise max_replication_slots on the source (restart needed) or drop unused slots",
        )
    if state == "55000" and "wal_level" in text:
        return ReplicationError(
            f"source: {text}", hint="set wal_level = logical on the source and restart it"
        )
    return ReplicationError(
        f"source ({target.safe}): cannot create slot {name!r}: {text} (SQLSTATE {state})"
    )


def slot_status(conn: Conn, name: str) -> SlotStatus | None:
    row = conn.execute(
        "SELECT slot_name, plugin, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, wal_status"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    flush = Lsn.parse(row[4]) if row[4] else None
    restart = Lsn.parse(row[5]) if row[5] else None
    return SlotStatus(row[0], row[1], row[2], row[3], flush, restart, row[6], row[7])


def require_usable_slot(conn: Conn, name: str, pipeline: str | None = None) -> SlotStatus:
    """The slot's status; `slot_gone_error` or `slot_lost_error` when it can stream no more."""
    return usable_slot(slot_status(conn, name), name, pipeline)


def usable_slot(status: SlotStatus | None, name: str, pipeline: str | None = None) -> SlotStatus:
    """``status`` of slot ``name``, read already; raises as `require_usable_slot` does."""
    if status is None:
        raise slot_gone_error(name, pipeline)
    if status.lost:
        raise slot_lost_error(name)
    return status


def drop_slot(conn: Conn, name: str, timeout_s: float = 10.0) -> bool:
    """Drop slot ``name``; a consumer holding it is terminated first, and its release awaited."""
    status = slot_status(conn, name)
    deadline = time.monotonic() + timeout_s
    while status is not None and status.active and status.active_pid:
        conn.execute("SELECT pg_terminate_backend(%s)", (status.active_pid,))
        if time.monotonic() > deadline:
            break  # the drop below says which process still holds it
        time.sleep(0.02)  # a terminated walsender releases its slot as it exits
        status = slot_status(conn, name)
    if status is None:
        return False
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    log.info("slot dropped", slot=name)
    return True


def require_logical(conn: Conn) -> None:
    """Refuse a source that cannot decode: ``wal_level`` below logical, or a role without REPLICATION.

    Checked before anything is created, so neither leaves a publication behind.
    """
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_user,"
        " (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    if row[0] != "logical":
        raise PreflightError(
            f"source wal_level is {row[0]!r}, logical decoding needs 'logical'",
            hint="ALTER SYSTEM SET wal_level = logical; then restart the source server",
        )
    if not row[2]:
        raise PreflightError(
            f"source role {row[1]!r} has neither REPLICATION nor superuser: it cannot create or"
            " read a replication slot",
            hint=f"ALTER ROLE {sql.Identifier(row[1]).as_string(conn)} REPLICATION (as a"
            " superuser), or connect as a role that has it",
        )


def ensure_publication(
    conn: Conn, name: str, tables: Sequence[TableInfo], keyless: str = "refuse"
) -> list[TableInfo]:
    """Create (or re-point) a publication on exactly these tables; partitions publish via their leaves.

    Tables without a usable replica identity are first refused or given REPLICA IDENTITY FULL
    (``keyless``, see `prepare_keyless`): once published, the source would refuse their UPDATEs.
    Returns the tables made FULL (for the pipeline to record: `cleanup` restores them).
    """
    roots = sorted({(t.root_schema, t.root_name) for t in tables})
    if not roots:
        raise ReplicationError("no table to publish", hint="check --tables / --exclude")
    made_full = prepare_keyless(conn, tables, keyless)
    table_list = sql.SQL(", ").join(sql.Identifier(s, n) for s, n in roots)
    if publication_exists(conn, name):
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), table_list)
        )
    else:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), table_list)
        )
    log.info("publication ready", publication=name, tables=len(roots))
    return made_full


KEYLESS_LOCK_TIMEOUT = "10s"


def keyless_tables(tables: Sequence[TableInfo]) -> list[TableInfo]:
    """Tables with rows whose UPDATE and DELETE a publication would make the source refuse."""
    return [t for t in tables if t.has_data and not t.replicable_updates]


def prepare_keyless(conn: Conn, tables: Sequence[TableInfo], policy: str) -> list[TableInfo]:
    """Refuse tables without a usable replica identity, or set REPLICA IDENTITY FULL on them
    (returned: the tables changed).

    Runs before anything is published or created: a refusal leaves the source untouched. FULL
    changes the source table (a brief ACCESS EXCLUSIVE lock, waited for at most
    `KEYLESS_LOCK_TIMEOUT`); its UPDATEs and DELETEs then log the whole old row.
    """
    keyless = keyless_tables(tables)
    if keyless and policy != "full":
        raise keyless_error([t.qualified for t in keyless])
    for table in keyless:
        _set_identity_full(conn, table)
    return keyless


def keyless_error(names: Sequence[str]) -> PreflightError:
    """The refusal of tables without a usable replica identity (clone's error, preflight's check)."""
    return PreflightError(
        f"tables without a primary key or replica identity: {listed(names)}; once published,"
        " the source would refuse UPDATE and DELETE on them",
        hint="give them a primary key or a REPLICA IDENTITY, or pass --keyless-tables full"
        " to set REPLICA IDENTITY FULL on them, or leave them out with --exclude",
    )


def alter_identity(conn: Conn, table: sql.Identifier, identity: Literal["FULL", "DEFAULT"]) -> None:
    """``ALTER TABLE table REPLICA IDENTITY identity``, its ACCESS EXCLUSIVE lock waited for at
    most `KEYLESS_LOCK_TIMEOUT` (then psycopg's ``LockNotAvailable``: the caller says what to do)."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(KEYLESS_LOCK_TIMEOUT))
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(table, sql.SQL(identity)))


def _set_identity_full(conn: Conn, table: TableInfo) -> None:
    try:
        alter_identity(conn, table.ident, "FULL")
    except psycopg.errors.LockNotAvailable as exc:
        raise PreflightError(
            f"source: could not lock {table.qualified} within {KEYLESS_LOCK_TIMEOUT} to set its"
            " REPLICA IDENTITY FULL (a long transaction holds it)",
            hint="run again at a quieter moment, or run the ALTER TABLE yourself",
            retryable=True,
        ) from exc
    log.warning(
        "replica identity set to FULL on the source (no primary key or replica identity)",
        table=table.qualified,
    )


def published_tables(conn: Conn, publication: str) -> list[tuple[str, str]]:
    """The tables named in ``publication`` (partitioned roots, not their leaves), sorted."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication p"
        " JOIN pg_publication_rel r ON r.prpubid = p.oid"
        " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %s ORDER BY 1, 2",
        (publication,),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def publish_more(
    conn: Conn, name: str, tables: Sequence[TableInfo], keyless: str = "refuse"
) -> list[TableInfo]:
    """Add ``tables`` to publication ``name`` (their roots; one published already stays as is);
    returns the tables made REPLICA IDENTITY FULL (see `ensure_publication`)."""
    made_full = prepare_keyless(conn, tables, keyless)
    roots = {(t.root_schema, t.root_name) for t in tables} - set(published_tables(conn, name))
    for schema, table in sorted(roots):
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), sql.Identifier(schema, table)
            )
        )
        log.info("table added to the publication", table=f"{schema}.{table}", publication=name)
    return made_full


def publication_exists(conn: Conn, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone())


def drop_publication(conn: Conn, name: str) -> bool:
    if not publication_exists(conn, name):
        return False
    conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    log.info("publication dropped", publication=name)
    return True
