"""The PostgreSQL applier: decoded changes in, set-based SQL out, exactly once.

The follow loop drives one `PostgresApplier` from one thread: ``start`` (connect, tag the
session with a replication origin, return the LSN to resume from), ``relation`` for each
`Relation` message, then per destination transaction ``begin``, ``apply`` (any number of times)
and ``commit``, which advances the origin in the same transaction as the rows
(`pg_replication_origin_xact_setup`), so a crash at any point neither loses nor repeats a batch.

``apply`` splits its changes at each TRUNCATE, groups the rest by relation and folds each group
to its net effect per key (`compact`). Small groups run as VALUES-list statements; larger ones
are copied (COPY text) into a per-session staging table and applied with one DELETE, one UPDATE
per unchanged-TOAST mask and one INSERT (a run of inserts alone is copied straight into the
table, through one COPY left open across the chunks of a batch); see `_writer`. When a set-based
step hits a unique violation (a secondary unique key swapped within the batch) the group is
rolled back to a savepoint and replayed in source order.
With a `ConflictPolicy` (bidirectional replication) each run of changes is first checked for
conflicts with local writes, one query per table (`conflicts.check`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import LiteralString, cast

import psycopg
from psycopg import sql

from pgmigrator.destination import _writer, conflicts
from pgmigrator.destination._session import apply_error, open_session
from pgmigrator.destination._table import Table, describe, same_layout
from pgmigrator.destination.compact import NetEffect, Step, compact, may_collide
from pgmigrator.destination.conflicts import ConflictPolicy
from pgmigrator.dsn import Target
from pgmigrator.errors import ApplyError, RetryableApplyError
from pgmigrator.events import (
    Delete,
    Insert,
    Relation,
    Truncate,
    TupleData,
    Update,
    pg_timestamp_to_datetime,
)
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn
from pgmigrator.protocol.runs import InsertRun, expand

log = get_logger("apply")

#: Net effects smaller than this run as VALUES-list statements; larger ones go through COPY.
#: Measured crossover on the 2-core dev box (mixed updates and inserts): COPY + staging costs
#: about 1 ms a batch more, VALUES parameters about 15 us a row more.
SMALL_BATCH = 48
_ORIGIN_SETUP = b"SELECT pg_replication_origin_xact_setup(%s::pg_lsn, %s::timestamptz)"
#: A transaction that wrote nothing commits without a commit record, and so without moving the
#: origin: an XID makes it write one (a source transaction holding only a logical message).
_WRITE_NOTHING = b"SELECT pg_current_xact_id()"
_SAVEPOINT = "pgm_apply"
Change = Insert | Update | Delete
Item = Change | InsertRun  # a run: inserts the replication stream's C loop kept undecoded
_NO_GROUP: list[Item] = []  # never appended to: the first change opens a real group


class PostgresApplier:
    """Applies decoded changes to a PostgreSQL destination; see the module docstring."""

    def __init__(
        self,
        dest: Target,
        origin: str,
        *,
        collector: object | None = None,
        conflicts: ConflictPolicy | None = None,
    ) -> None:
        self._target = dest
        self._origin = origin
        self._origin_id = 0  # its roident, known once started
        self._conflicts = conflicts
        # Kept for the caller's sake; rows are counted by the follow loop (counting them here
        # too would count them twice in the collector's totals).
        self._collector = collector
        self._conn: Conn | None = None
        self._tables: dict[int, Table] = {}
        self._staged: set[int] = set()  # staging tables that exist in the session
        self._staged_in_txn: set[int] = set()  # ... created by the open transaction
        self._txn_rows = 0  # changes applied by the open transaction
        self._txn_tables: dict[int, int] = {}  # ... per relation oid
        self._last_commit_tables: dict[tuple[str, str], int] = {}
        self._open_copy: _writer.OpenCopy | None = None  # inserts still streaming into a table
        self._deferred: _writer.Deferred | None = None  # small writes waiting for the commit
        self._templates: dict[bytes, list[bytes]] = {}  # the deferred statements, split
        self._prepared = _writer.Prepared()  # ... and those the session has prepared
        self._in_txn = False
        self._rows_applied = 0
        self._doing = ""

    @property
    def rows_applied(self) -> int:
        """Changes (inserts, updates, deletes) applied by committed transactions, cumulative."""
        return self._rows_applied

    @property
    def origin(self) -> str:
        """The replication origin every commit advances."""
        return self._origin

    @property
    def last_commit_tables(self) -> dict[tuple[str, str], int]:
        """Changes per ``(schema, table)`` of the last committed transaction."""
        return self._last_commit_tables

    # -- session ---------------------------------------------------------------------------------

    def start(self) -> Lsn:
        """(Re)connect, set up the session and origin; return the LSN to resume from."""
        self.close()
        self._conn, self._origin_id, lsn = open_session(self._target, self._origin)
        self._prepared = _writer.Prepared()
        log.info("applier ready", origin=self._origin, resume_lsn=str(lsn))
        return lsn

    def close(self) -> None:
        """Drop the connection (an open transaction is rolled back by the server)."""
        conn, self._conn = self._conn, None
        self._open_copy = None
        self._staged.clear()
        self._end_txn()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def relation(self, rel: Relation) -> None:
        """Register or refresh the destination metadata for ``rel.oid``."""
        known = self._tables.get(rel.oid)
        if known is not None and same_layout(known.relation, rel):
            return
        conn = self._need_conn(flush=False)  # catalog reads only: queued writes stay queued
        try:
            table = describe(conn.cursor(), rel)
        except psycopg.Error as exc:
            raise self._error(exc, f"reading the catalog for {rel.namespace}.{rel.name}") from exc
        self._tables[rel.oid] = table
        self._staged.discard(rel.oid)
        log.debug("relation registered", table=table.name, key=len(table.key), full=table.full)
        if table.key and not table.key_indexed:
            log.warning(
                "no destination index on the key: updates and deletes scan", table=table.name
            )

    # -- transactions ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Open a destination transaction (its BEGIN waits for its first statement)."""
        if self._in_txn:
            raise ApplyError("begin() called inside an open destination transaction")
        if self._conflicts is None:  # (a conflict check needs every write now)
            self._deferred = _writer.Deferred(self._need_conn(), self._templates, self._prepared)
            self._deferred.append(b"BEGIN")
        else:
            self._run("BEGIN", doing="opening a transaction")
        self._in_txn = True

    def commit(self, end_lsn: Lsn, commit_time_us: int) -> None:
        """Record ``end_lsn`` as the origin's progress and commit it with the rows."""
        self._need_txn()
        conn = self._need_conn(flush=False)
        at = pg_timestamp_to_datetime(commit_time_us).isoformat().encode()
        setup = (str(end_lsn).encode(), at)  # both rendered from integers: nothing to quote
        head = [] if self._txn_rows else [_WRITE_NOTHING]
        deferred, doing = self._deferred, f"committing up to LSN {end_lsn}"
        try:
            if deferred is not None:  # the writes still waiting, then the commit: one round trip
                if deferred.tables:
                    doing = f"applying changes to {', '.join(sorted(deferred.tables))} and {doing}"
                for stmt in head:
                    deferred.append(stmt)
                deferred.execute(_ORIGIN_SETUP, setup)  # prepared, like the writes
                deferred.append(b"COMMIT")
                deferred.flush(conn)
            else:  # no parameters: one simple-protocol round trip for all
                inline = _ORIGIN_SETUP % tuple(b"'%s'" % v for v in setup)
                conn.execute(b"; ".join([*head, inline, b"COMMIT"]))
        except psycopg.Error as exc:
            self._staged -= self._staged_in_txn
            self._end_txn()
            raise self._error(exc, doing) from exc
        self._rows_applied += self._txn_rows
        self._last_commit_tables = {
            (t.relation.namespace, t.relation.name): rows
            for oid, rows in self._txn_tables.items()
            if (t := self._tables.get(oid)) is not None
        }
        self._end_txn()  # the staging tables it created stay

    def execute(self, stmt: LiteralString, params: Sequence[object]) -> None:
        """Run one statement of the pipeline's own (a switchover sentinel row) in the open transaction."""
        self._need_txn()
        try:
            self._need_conn().execute(stmt, params)
        except psycopg.Error as exc:
            raise self._error(exc, "recording a pipeline row") from exc

    def rollback(self) -> None:
        """Roll the open transaction back (nothing of it stays, origin included)."""
        self._deferred = None  # never sent: nothing to undo there
        open_copy, self._open_copy = self._open_copy, None
        if open_copy is not None:
            open_copy.abort()
        conn = self._conn
        self._staged -= self._staged_in_txn
        self._end_txn()
        if conn is None or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self.close()  # the server rolled it back when the connection went
                return
            raise self._error(exc, "rolling back") from exc

    def _end_txn(self) -> None:
        self._deferred = None
        self._in_txn = False
        self._txn_rows = 0
        self._txn_tables = {}
        self._staged_in_txn.clear()

    # -- apply -----------------------------------------------------------------------------------

    def apply(
        self,
        changes: Sequence[Item | Truncate],
        times: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Apply ``changes`` (source order) inside the open transaction.

        ``times`` (`Changes.times`: the source commit time of each transaction's changes) turns
        the conflict check on, when the applier has a conflict policy.
        """
        self._need_txn()
        if self._conflicts is not None and times:
            changes = expand(changes)  # (the reader makes no runs when it tracks times)
            changes = self._checked(changes, conflicts.expand_times(times, len(changes)))
        groups: dict[int, list[Item]] = {}
        oid, group = -1, _NO_GROUP  # the previous change's group: most runs hit one table
        for change in changes:
            if isinstance(change, Truncate):
                self._apply_groups(groups)
                groups, oid, group = {}, -1, _NO_GROUP
                self._truncate(change)
                continue
            if change.relation_oid != oid:
                oid = change.relation_oid
                group = groups.setdefault(oid, [])
            group.append(change)
        self._apply_groups(groups)

    def _checked(
        self, changes: Sequence[Insert | Update | Delete | Truncate], times: list[int]
    ) -> list[Insert | Update | Delete | Truncate]:
        assert self._conflicts is not None
        self._doing = f"conflict check of {len(changes)} change(s)"
        try:
            return conflicts.check_batch(
                self._need_conn().cursor(),
                self._table,
                changes,
                times,
                self._origin_id,
                self._conflicts,
            )
        except psycopg.Error as exc:
            raise self._error(exc, self._doing) from exc

    def _apply_groups(self, groups: dict[int, list[Item]]) -> None:
        for oid, changes in groups.items():
            table = self._table(oid)
            try:
                rows = self._apply_relation(table, changes)
            except psycopg.Error as exc:
                if self._conflicts is not None and isinstance(exc, psycopg.errors.UniqueViolation):
                    raise conflicts.concurrent_insert(table.name, exc) from exc
                raise self._error(exc, f"{self._doing} on {table.name}") from exc
            self._txn_rows += rows
            self._txn_tables[oid] = self._txn_tables.get(oid, 0) + rows

    def _apply_relation(self, t: Table, items: list[Item]) -> int:
        """Apply one table's changes; returns how many row changes they were."""
        runs = [r for r in items if isinstance(r, InsertRun)]
        if not runs:
            self._apply_changes(t, cast(list[Change], items))  # no run among them
            return len(items)
        rows = sum(r.rows for r in runs)
        if len(runs) == len(items) and rows >= SMALL_BATCH and self._conflicts is None:
            self._stream_runs(t, runs, rows)  # inserts only: straight into COPY, never decoded
        else:
            self._apply_changes(t, expand(items))
        return rows + len(items) - len(runs)

    def _apply_changes(self, t: Table, changes: list[Change]) -> None:
        steps = compact(changes, t.key)
        if not (t.key and t.other_unique and may_collide(steps)):
            for step in steps:
                self._step(t, step, stream=self._conflicts is None)
            return
        conn = self._need_conn()
        if any(isinstance(s, NetEffect) and len(s) >= SMALL_BATCH for s in steps):
            self._ensure_staging(t)  # outside the savepoint, which would undo it
        self._doing = "SAVEPOINT"
        conn.execute("SAVEPOINT " + _SAVEPOINT)
        try:
            for step in steps:
                self._step(t, step)
        except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as exc:
            conn.execute("ROLLBACK TO SAVEPOINT " + _SAVEPOINT)
            log.warning(
                "unique violation in set-based apply, replaying in source order",
                table=t.name,
                changes=len(changes),
                detail=str(exc).splitlines()[0],
            )
            self._doing = f"ordered replay of {len(changes)} change(s)"
            _writer.replay(conn, t, changes)
        conn.execute("RELEASE SAVEPOINT " + _SAVEPOINT)

    def _step(self, t: Table, step: Step, stream: bool = False) -> None:
        """Write one compacted step; with ``stream``, inserts may stay in an open COPY."""
        if (
            stream
            and isinstance(step, NetEffect)
            and len(step) >= SMALL_BATCH
            and not step.deletes
            and not step.updates
        ):
            self._stream_inserts(t, step.inserts)
            return
        small = not isinstance(step, NetEffect) or len(step) < SMALL_BATCH
        cur: _writer.Cursor
        if stream and small and self._deferred is not None:
            if self._open_copy is not None:
                self._finish_copy()  # the COPY came first in the stream: it runs first
            cur = self._deferred  # sent with the transaction's other small writes
            self._deferred.tables.add(t.name)
        else:
            conn = self._need_conn()
            cur = conn.cursor()
        if not isinstance(step, NetEffect):
            self._doing = type(step).__name__.upper() + " (single row)"
            _writer.write_one(cur, t, step)
        elif small:
            self._doing = f"DELETE/UPDATE/INSERT of {len(step)} row(s)"
            _writer.write_values(cur, t, step)
        elif not step.deletes and not step.updates:
            conn = self._need_conn()
            self._doing = f"COPY of {len(step)} inserted row(s)"
            _writer.copy_inserts(conn, t, step.inserts)
        else:
            conn = self._need_conn()
            self._ensure_staging(t)
            self._doing = f"set-based DELETE/UPDATE/INSERT of {len(step)} row(s)"
            _writer.write_staged(conn, t, step)

    def _stream_inserts(self, t: Table, rows: Sequence[TupleData]) -> None:
        self._copy_into(t).write(rows)

    def _stream_runs(self, t: Table, runs: list[InsertRun], rows: int) -> None:
        text = runs[0].copy_text() if len(runs) == 1 else b"".join(r.copy_text() for r in runs)
        self._copy_into(t).write_text(text, rows)

    def _copy_into(self, t: Table) -> _writer.OpenCopy:
        """The COPY into ``t`` left open across chunks (one into another table is finished)."""
        if self._open_copy is None or self._open_copy.oid != t.oid:
            conn = self._need_conn()
            self._doing = f"COPY of inserted rows into {t.name}"
            self._open_copy = _writer.OpenCopy(conn, t)
        return self._open_copy

    def _finish_copy(self) -> None:
        open_copy, self._open_copy = self._open_copy, None
        if open_copy is None:
            return
        try:
            open_copy.finish()
        except psycopg.Error as exc:
            raise self._error(
                exc, f"COPY of {open_copy.rows} inserted row(s) into {open_copy.table}"
            ) from exc

    def _ensure_staging(self, t: Table) -> None:
        if t.oid in self._staged:
            return
        self._doing = "creating the staging table"
        _writer.create_staging(self._need_conn(), t)
        self._staged.add(t.oid)
        if self._in_txn:
            self._staged_in_txn.add(t.oid)

    def _truncate(self, change: Truncate) -> None:
        tables = [self._table(oid) for oid in change.relation_oids]
        stmt = sql.SQL("TRUNCATE ONLY {}{}{}").format(
            sql.SQL(", ").join(t.ident for t in tables),
            sql.SQL(" RESTART IDENTITY" if change.restart_identity else ""),
            sql.SQL(" CASCADE" if change.cascade else ""),
        )
        names = ", ".join(t.name for t in tables)
        self._run(stmt, doing=f"TRUNCATE of {names}")

    # -- helpers ---------------------------------------------------------------------------------

    def _table(self, oid: int) -> Table:
        table = self._tables.get(oid)
        if table is None:
            raise ApplyError(
                f"change for relation oid {oid} before its Relation message",
                hint="this is a bug in the caller: relation() must see every Relation first",
            )
        return table

    def _run(self, stmt: str | sql.Composed, *, doing: str) -> None:
        conn = self._need_conn()
        try:
            conn.execute(stmt)
        except psycopg.Error as exc:
            raise self._error(exc, doing) from exc

    def _need_conn(self, flush: bool = True) -> Conn:
        """The connection, free for a statement: an open COPY is finished first, then (unless
        ``flush`` is false) the deferred statements that followed it are sent."""
        if self._conn is None or self._conn.closed:
            raise RetryableApplyError(
                "the destination connection is not open", hint="call start() to reconnect"
            )
        if self._open_copy is not None:
            self._finish_copy()
        if flush and self._deferred is not None and self._deferred.statements:
            self._flush_deferred(self._conn)
        return self._conn

    def _flush_deferred(self, conn: Conn) -> None:
        assert self._deferred is not None
        count, tables = len(self._deferred.statements), sorted(self._deferred.tables)
        try:
            self._deferred.flush(conn)
        except psycopg.Error as exc:
            doing = f"applying {count} statement(s) to {', '.join(tables) or 'the destination'}"
            raise self._error(exc, doing) from exc

    def _need_txn(self) -> None:
        if not self._in_txn:
            raise ApplyError("no open destination transaction: call begin() first")

    def _error(self, exc: BaseException, doing: str) -> ApplyError:
        broken = self._conn is not None and self._conn.broken
        return apply_error(exc, self._target, doing, broken=broken)
