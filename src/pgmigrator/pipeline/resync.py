"""``pgmigrator resync TABLE``: copy one table again, alone, while the pipeline keeps its slot.

The table is emptied on the destination and copied under a fresh snapshot from a temporary helper
slot, whose consistent LSN becomes the table's sync LSN in the state store (DESIGN.md rule 2), the
same way ``clone --resume`` re-copies unfinished tables: the applier skips the table's changes
committed before that LSN (the snapshot has them) and applies the later ones.

With a follower running, the order of operations is what keeps it exact:

1. lock the destination table (ACCESS EXCLUSIVE, in the transaction that will also empty and refill
   it): from here on no applier batch touching the table can commit;
2. create the helper slot (LSN ``X``) and import its snapshot;
3. record ``X`` as the table's sync LSN (committed);
4. end the follower's session: terminate its walsender and any destination backend queued behind
   our lock, until the follower has reconnected (new walsender). Its uncommitted batch is rolled
   back; the new session resumes from the replication origin and reloads the sync LSNs, so it
   skips the table's changes up to ``X`` and waits on our lock with the later ones;
5. empty the table, COPY it from the snapshot, mark it copied, commit: the follower goes on.

Without a follower, step 4 is skipped and the next ``follow`` reads ``X`` at start.

With ``add``, tables the pipeline does not hold yet (created on both sides since the clone) join
it first: they are added to the publication before step 2, so their changes after ``X`` stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, PreflightError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect, translate
from pgmigrator.pipeline import plan
from pgmigrator.pipeline.bidi_guard import refuse_recopy
from pgmigrator.pipeline.copyworker import ChunkTask, Worker
from pgmigrator.retry import RetryPolicy
from pgmigrator.source import catalog
from pgmigrator.source.catalog import TableInfo
from pgmigrator.source.slots import (
    ReplicationSession,
    publish_more,
    require_usable_slot,
    slot_status,
)
from pgmigrator.store.state import StateStore

log = get_logger("resync")


def load_sync_lsns(dest: Target, pipeline: str) -> dict[tuple[str, str], Lsn]:
    """Every table's sync LSN from the state store (tables copied under the slot's own snapshot
    have none)."""
    with connect(dest) as conn:
        store = StateStore(conn, pipeline)
        if store.load() is None:
            return {}
        return {(t.schema, t.name): t.sync_lsn for t in store.tables() if t.sync_lsn is not None}


@dataclass(frozen=True, slots=True)
class Resynced:
    table: str
    rows: int
    bytes: int
    sync_lsn: Lsn
    follower_reconnected: bool


class _Discard:
    """Stands in for the worker's result queue: progress messages are not needed here."""

    def put(self, item: Any) -> None:
        pass


class Resync:
    def __init__(
        self,
        settings: Settings,
        patterns: Sequence[str],
        follower_timeout_s: float = 60.0,
        *,
        add: bool = False,
    ) -> None:
        settings.require("source", "dest")
        self.add = add  # tables the pipeline does not hold yet join it (`_add_tables`)
        if not patterns:
            raise PreflightError("name at least one table to resync", hint="e.g. public.orders")
        self.settings = settings
        self.patterns = list(patterns)
        self.follower_timeout_s = follower_timeout_s
        self.source = settings.source_target
        self.dest = settings.dest_target
        self.policy = settings.retry.policy(settings.copy_.max_attempts)
        self._touched = False  # the table's state (sync LSN) was changed by this run

    def run(self) -> list[Resynced]:
        slot, tables = self._plan()
        done = []
        for table in tables:
            self._touched = False
            done.append(self._with_retries(table, slot))
        return done

    def _plan(self) -> tuple[str, list[TableInfo]]:
        with connect(self.source) as src, connect(self.dest) as dst:
            store = StateStore(dst, self.settings.name)
            row = store.require()
            refuse_recopy(dst, self.settings.name, "`pgmigrator resync`")
            require_usable_slot(src, row.slot, self.settings.name)
            everything = catalog.list_tables(src)
            missing = catalog.unmatched_patterns(everything, self.patterns)
            if missing:
                raise PreflightError(
                    f"no table on the source matches {', '.join(missing)}",
                    hint="name tables as schema.table (globs allowed, e.g. 'sales.*')",
                )
            known = {(t.schema, t.name) for t in store.tables()}
            chosen = [t for t in catalog.select(everything, self.patterns, []) if t.has_data]
            outside = [t for t in chosen if (t.schema, t.name) not in known]
            if outside and not self.add:
                raise PreflightError(
                    f"not part of pipeline {self.settings.name!r}:"
                    f" {', '.join(t.qualified for t in outside)}",
                    hint="only tables the clone copied can be resynced (check --name); to add"
                    " a table created since, create it on the destination and pass --add",
                )
            if outside:
                made_full = _add_tables(
                    src, dst, row.publication, outside, self.settings.keyless_tables
                )
                if made_full:
                    store.ensure_schema()  # (a store made by an older version lacks the column)
                    store.add_identity_full((t.schema, t.name) for t in made_full)
        if not chosen:
            raise PreflightError("the named tables hold no rows of their own (partitioned roots)")
        return row.slot, chosen

    def _with_retries(self, table: TableInfo, slot: str) -> Resynced:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._one(table, slot)
            except PgMigratorError as exc:
                if not self.policy.should_retry(exc, attempt):
                    if self._touched:
                        self._errored(table, exc.message)
                    raise
                delay = self.policy.delay(attempt)
                log.warning(
                    "resync retried",
                    table=table.qualified,
                    attempt=attempt,
                    error=exc.message,
                    retry_in_s=round(delay, 1),
                )
                time.sleep(delay)

    def _errored(self, table: TableInfo, message: str) -> None:
        try:
            with connect(self.dest) as dst:
                store = StateStore(dst, self.settings.name)
                store.set_table_state(table.schema, table.name, "errored", message)
        except PgMigratorError as exc:
            log.warning(
                "could not mark the table errored", table=table.qualified, error=exc.message
            )

    def _one(self, table: TableInfo, slot: str) -> Resynced:
        lock = connect(self.dest)
        try:
            _lock_table(lock, table, self.dest)
            helper_name = f"{slot}_rs{os.getpid()}"[:63]
            session = ReplicationSession(self.source)
            try:
                helper = session.create_slot(helper_name, temporary=True)
                worker = Worker(
                    0,
                    self.source,
                    self.dest,
                    helper.snapshot,
                    cast(Any, _Discard()),
                    RetryPolicy(max_attempts=1),
                )
            finally:
                session.close()  # the temporary slot goes; the worker holds the snapshot
            try:
                return self._copy(lock, worker, table, slot, helper.consistent_lsn)
            finally:
                worker.src.close()
        finally:
            lock.close()

    def _copy(
        self, lock: Conn, worker: Worker, table: TableInfo, slot: str, sync_lsn: Lsn
    ) -> Resynced:
        with connect(self.dest) as meta:
            store = StateStore(meta, self.settings.name)
            store.plan_table(table.schema, table.name, [(None, None)], sync_lsn)
            self._touched = True
            reconnected = self._end_follower_session(slot, table, lock)
            _empty_table(lock, table, self.dest)
            task = ChunkTask(
                self.settings.name,
                table.schema,
                table.name,
                0,
                plan.copy_out_sql(table, None, None).as_string(meta),
                plan.copy_in_sql(table).as_string(meta),
            )
            worker.use_dest(lock)
            rows, nbytes = worker.copy(task)  # commits the lock, the emptying and the rows at once
            store.table_copied(table.schema, table.name)
        log.info(
            "table resynced",
            table=table.qualified,
            rows=rows,
            sync_lsn=str(sync_lsn),
            follower_reconnected=reconnected,
        )
        return Resynced(table.qualified, rows, nbytes, sync_lsn, reconnected)

    def _end_follower_session(self, slot: str, table: TableInfo, lock: Conn) -> bool:
        """Make a running follower drop what it decoded before the new sync LSN (step 4)."""
        with connect(self.source) as src, connect(self.dest) as dst:
            status = slot_status(src, slot)
            old_pid = status.active_pid if status is not None and status.active else None
            if old_pid is not None:
                src.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
                log.info("follower session ended for the resync", walsender_pid=old_pid)
            deadline = time.monotonic() + self.follower_timeout_s
            while True:
                _terminate_waiters(dst, table, lock.info.backend_pid)
                if old_pid is None:
                    return False
                status = slot_status(src, slot)
                if status is not None and status.active and status.active_pid != old_pid:
                    return True
                if time.monotonic() > deadline:
                    raise PgMigratorError(
                        f"the follower did not reconnect within {self.follower_timeout_s:g}s",
                        hint="start `pgmigrator follow` again, then re-run the resync",
                    )
                time.sleep(0.05)


def _add_tables(
    src: Conn, dst: Conn, publication: str, tables: list[TableInfo], keyless: str
) -> list[TableInfo]:
    """Tables new to the pipeline: they must exist on the destination; the publication gets them
    (returned: those made REPLICA IDENTITY FULL).

    The publication changes before the copy's snapshot is taken: the table's changes after that
    snapshot are in the stream, and those before it are in the copy.
    """
    absent = [
        t.qualified
        for t in tables
        if dst.execute("SELECT to_regclass(%s)", (t.ident.as_string(dst),)).fetchone() == (None,)
    ]
    if absent:
        raise PreflightError(
            f"not on the destination: {', '.join(absent)}",
            hint="create them there first, with their indexes and constraints (e.g. `pg_dump"
            " --schema-only -t TABLE` from the source into the destination), then run again",
        )
    return publish_more(src, publication, tables, keyless)


def _lock_table(conn: Conn, table: TableInfo, dest: Target) -> None:
    try:
        conn.execute("BEGIN")
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(table.ident))
    except Exception as exc:
        raise translate(exc, dest, f"locking {table.qualified} for the resync") from exc


def _empty_table(conn: Conn, table: TableInfo, dest: Target) -> None:
    """TRUNCATE, or DELETE without firing foreign keys when other tables reference it."""
    try:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f'"
            " AND confrelid = %s::regclass AND conrelid <> confrelid)",
            (table.ident.as_string(conn),),
        ).fetchone()
        if row and row[0]:
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(sql.SQL("DELETE FROM ONLY {}").format(table.ident))
        else:
            conn.execute(sql.SQL("TRUNCATE ONLY {}").format(table.ident))
    except Exception as exc:
        raise translate(exc, dest, f"emptying {table.qualified}") from exc


def _terminate_waiters(conn: Conn, table: TableInfo, own_pid: int) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'relation'"
        " AND relation = %s::regclass AND NOT granted AND pid <> %s",
        (table.ident.as_string(conn), own_pid),
    )
