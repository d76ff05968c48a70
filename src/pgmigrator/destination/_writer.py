"""Writing compacted steps to the destination: VALUES lists, COPY + set-based SQL, single rows.

Three ways to write a `NetEffect`, picked by the applier from its size:

* `write_values`: a few rows; one statement per operation (and per unchanged-TOAST mask) with
  the rows as a VALUES list of parameters (at most `VALUES_ROWS` rows a statement);
* `write_staged`: many rows; one COPY into the session's staging table, then DELETE, UPDATE per
  mask, INSERT and emptying the staging table, sent as one multi-statement query;
* `copy_inserts`: many inserts and nothing else; COPY straight into the table. `OpenCopy` is
  the same COPY kept open across the chunks of a batch, so that the destination inserts one chunk
  while the next is decoded (the applier finishes it before anything else uses the connection).

`write_one` applies an update or delete alone (ordered steps, whole-row identity) and `replay`
applies a run of changes in source order. Statements are built once per table and shape and
kept, rendered, in the table's cache.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import generators, pq

from pgmigrator.destination import _sql
from pgmigrator.destination._table import Table
from pgmigrator.destination.compact import NetEffect, mask_of
from pgmigrator.errors import ApplyError
from pgmigrator.events import Delete, Insert, TupleData, Update

Conn = psycopg.Connection[Any]


class Cursor(Protocol):
    """Where statements go: a psycopg cursor (now) or `Deferred` (with the transaction's end)."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


#: Rows per VALUES statement, at most (and at most 65535 parameters).
VALUES_ROWS = 64


#: Statement shapes a destination session prepares, at most; later ones are sent inline.
MAX_PREPARED = 512


class Prepared:
    """The statements a destination session has prepared, by template: ``names[query]``.

    A name enters once its PREPARE ran without error (a PREPARE is not undone by a ROLLBACK, so
    a transaction that fails later keeps it); names are never reused within the session, so one
    whose PREPARE failed cannot clash. A new session starts with a new `Prepared`.
    """

    def __init__(self) -> None:
        self.names: dict[bytes, bytes] = {}
        self._count = 0

    def new_name(self) -> bytes:
        self._count += 1
        return b"pgm_%d" % self._count


class Deferred:
    """A transaction's small writes, values inlined client-side, sent later in one round trip.

    BEGIN, the VALUES-list and single-row statements, and the commit wait here and reach the
    server as one simple-protocol query when the transaction commits, or earlier when something
    needs the connection (a COPY, a catalog query, a savepoint): one round trip per destination
    transaction instead of one per statement, which is what a caught-up follower's latency is
    made of. Each value is quoted by libpq (``PQescapeLiteral``, which knows the connection's
    encoding), so values never enter the SQL text unquoted. A statement is split at its ``%s``
    placeholders once and kept; psycopg's ``ClientCursor.mogrify`` did the same work anew for
    every statement (a quarter of a caught-up follower's CPU).

    With a `Prepared`, each statement shape is prepared (``PREPARE ... AS`` with ``$n``, just
    before the batch that first uses it) and then sent as ``EXECUTE name(values)``: the destination parses
    and plans a shape once a session instead of once a row (its per-transaction CPU, and so the
    follower's latency under load, drops).
    """

    def __init__(
        self, conn: Conn, templates: dict[bytes, list[bytes]], prepared: Prepared | None = None
    ) -> None:
        self._quote = pq.Escaping(conn.pgconn).escape_literal
        self._templates = templates  # the applier's: kept across transactions
        self._prepared = prepared
        self._new: dict[bytes, bytes] = {}  # shapes the statements not sent yet prepare
        self.statements: list[bytes] = []
        self.tables: set[str] = set()  # for the error message, if the flush fails

    def execute(self, query: bytes, params: Sequence[bytes | None] = (), /) -> None:
        parts = self._templates.get(query)
        if parts is None:
            parts = self._templates[query] = split_placeholders(query)
        if len(parts) != len(params) + 1:
            raise ValueError(f"{len(parts) - 1} placeholders but {len(params)} values")
        quote = self._quote
        values = [b"NULL" if value is None else quote(value) for value in params]
        name = self._name(query) if values else None
        if name is not None:
            self.statements.append(b"EXECUTE %s(%s)" % (name, b", ".join(values)))
            return
        out = [parts[0]]
        for value, part in zip(values, parts[1:], strict=True):
            out.append(value)
            out.append(part)
        self.statements.append(b"".join(out))

    def _name(self, query: bytes) -> bytes | None:
        """The prepared statement for ``query`` (a new one is prepared by the next `flush`)."""
        prepared = self._prepared
        if prepared is None:
            return None
        name = prepared.names.get(query) or self._new.get(query)
        if name is None and len(prepared.names) + len(self._new) < MAX_PREPARED:
            name = self._new[query] = prepared.new_name()
        return name

    def append(self, statement: bytes) -> None:
        """A statement without parameters (rendered already)."""
        self.statements.append(statement)

    def flush(self, conn: Conn) -> None:
        """Send what waits, as one query (the caller turns an error into a precise one).

        New shapes' PREPAREs go first, as a query of their own: the server keeps a copy of the
        whole query a PREPARE came in, which for a batch would be all of its rows' values.
        """
        statements, self.statements = self.statements, []
        new, self._new = self._new, {}
        if new:
            prepares = (_prepare(name, self._templates[query]) for query, name in new.items())
            run_simple(conn, b"; ".join(prepares))
            if self._prepared is not None:
                self._prepared.names.update(new)  # (after an error none of them is trusted)
        if statements:
            run_simple(conn, b"; ".join(statements))


def _prepare(name: bytes, parts: list[bytes]) -> bytes:
    """``PREPARE name AS`` the statement split into ``parts``, ``$1``, ``$2``... between them."""
    numbered = [parts[0]]
    for n, part in enumerate(parts[1:], 1):
        numbered.append(b"$%d" % n)
        numbered.append(part)
    return b"PREPARE %s AS %s" % (name, b"".join(numbered))


def run_simple(conn: Conn, query: bytes) -> None:
    """Run ``query`` (no parameters, results discarded) as one simple-protocol query.

    What ``conn.execute(query)`` does without the cursor around it (a cursor object, the
    prepared-statement bookkeeping and the result conversion were a tenth of a caught-up
    follower's CPU); errors are psycopg's own, as ``execute`` raises them.
    """
    with conn.lock:
        conn.pgconn.send_query(query)
        results = conn.wait(generators.execute(conn.pgconn))
    for res in results:
        if res.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


_PLACEHOLDER = re.compile(rb"%(.)", re.DOTALL)


def split_placeholders(query: bytes) -> list[bytes]:
    """``query``'s text around its ``%s`` placeholders (``%%`` is a literal ``%``)."""
    parts: list[bytes] = []
    current: list[bytes] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(query):
        current.append(query[pos : m.start()])
        pos = m.end()
        if m.group(1) == b"%":
            current.append(b"%")
        elif m.group(1) == b"s":
            parts.append(b"".join(current))
            current = []
        else:
            raise ValueError(f"unsupported placeholder %{m.group(1).decode(errors='replace')}")
    current.append(query[pos:])
    parts.append(b"".join(current))
    return parts


def cached(t: Table, key: tuple[Any, ...], build: Callable[..., Any], *args: Any) -> Any:
    """``build(t, *args)`` rendered to bytes, built once per table and ``key``."""
    found = t.cache.get(key)
    if found is None:
        built = build(t, *args)
        if isinstance(built, tuple):
            head = built[0]
            found = (None if head is None else head.as_bytes(None), *built[1:])
        else:
            found = built.as_bytes(None)
        t.cache[key] = found
    return found


def _chunks(rows: Sequence[TupleData], width: int) -> Sequence[Sequence[TupleData]]:
    if len(rows) <= 1:  # (most calls: a caught-up follower's single-row steps)
        return (rows,) if rows else ()
    size = max(1, min(VALUES_ROWS, 65535 // max(width, 1)))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def write_values(cur: Cursor, t: Table, net: NetEffect) -> None:
    """Apply a small net effect with VALUES-list statements (deletes, updates, inserts)."""
    key = t.key
    for rows in _chunks(net.deletes, len(key)):
        stmt = cached(t, ("dv", len(rows)), _sql.delete_rows, len(rows))
        cur.execute(stmt, [r.values[i] for r in rows for i in key])
    for mask, all_rows in net.updates.items():
        for rows in _chunks(all_rows, len(t.columns)):
            n = len(rows)
            stmt, pos = cached(t, ("uv", mask, n), _sql.update_rows, mask, n, 0)
            if stmt is not None:
                cur.execute(stmt, [r.values[i] for r in rows for i in pos])
    for rows in _chunks(net.inserts, len(t.columns)):
        stmt = cached(t, ("iv", len(rows)), _sql.insert_rows, len(rows))
        cur.execute(stmt, [v for r in rows for v in r.values])


def write_staged(conn: Conn, t: Table, net: NetEffect) -> None:
    """Apply a large net effect through the staging table (which must exist)."""
    masks = list(net.updates)
    groups = [
        (b"%d\t" % _sql.OP_DELETE, net.deletes),
        (b"%d\t" % _sql.OP_INSERT, net.inserts),
        *((b"%d\t" % (_sql.OP_UPDATE + n), net.updates[m]) for n, m in enumerate(masks)),
    ]
    copy(conn, cached(t, ("copy-staging",), _sql.copy_into, True), groups, t)
    statements: list[bytes] = []
    if net.deletes:
        statements.append(cached(t, ("ds",), _sql.delete_rows, None))
    for n, mask in enumerate(masks):
        stmt, _ = cached(t, ("us", mask, n), _sql.update_rows, mask, None, _sql.OP_UPDATE + n)
        if stmt is not None:
            statements.append(stmt)
    if net.inserts:
        statements.append(cached(t, ("is",), _sql.insert_rows, None))
    statements.append(cached(t, ("ts",), _sql.truncate_staging))
    if not t.key_indexed:  # no index to drive a nested loop: let the planner hash instead
        statements = [b"SET enable_hashjoin = on", *statements, b"SET enable_hashjoin = off"]
    conn.execute(b"; ".join(statements))  # no parameters: one simple-protocol round trip


def copy_inserts(conn: Conn, t: Table, rows: Sequence[TupleData]) -> None:
    """COPY a run of inserts straight into the table."""
    copy(conn, cached(t, ("copy",), _sql.copy_into, False), [(b"", rows)], t)


class OpenCopy:
    """A COPY into one table, left open while more inserted rows may follow."""

    def __init__(self, conn: Conn, t: Table) -> None:
        self.oid = t.oid
        self.table = t.name
        self.rows = 0
        self._ncols = len(t.columns)
        self._context = conn.cursor().copy(cached(t, ("copy",), _sql.copy_into, False))
        self._copy = self._context.__enter__()

    def write(self, rows: Sequence[TupleData]) -> None:
        self.write_text(_sql.copy_payload([(b"", rows)], self._ncols), len(rows))

    def write_text(self, lines: bytes, rows: int) -> None:
        """Send ``rows`` rows already built as COPY text lines."""
        self._copy.write(lines)
        self.rows += rows

    def finish(self) -> None:
        """End the COPY and wait for the destination to take every row (raises its error)."""
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        """End the COPY with an error, so that the destination discards it."""
        error = ApplyError("COPY abandoned by the applier")
        with contextlib.suppress(psycopg.Error, ApplyError):
            self._context.__exit__(ApplyError, error, None)


def copy(
    conn: Conn, stmt: bytes, groups: Sequence[tuple[bytes, Sequence[TupleData]]], t: Table
) -> None:
    payload = _sql.copy_payload(groups, len(t.columns))
    with conn.cursor().copy(stmt) as cp:
        cp.write(payload)


def create_staging(conn: Conn, t: Table) -> None:
    conn.execute(_sql.create_staging(t))


def replay(conn: Conn, t: Table, changes: Sequence[Insert | Update | Delete]) -> None:
    """Apply ``changes`` one by one in source order (one pipeline, no per-row round trip)."""
    with conn.pipeline():
        cur = conn.cursor()
        for change in changes:
            if isinstance(change, Insert):
                cur.execute(cached(t, ("iv", 1), _sql.insert_rows, 1), change.new.values)
            else:
                write_one(cur, t, change)


def write_one(cur: Cursor, t: Table, change: Update | Delete) -> None:
    """Apply one update or delete by key, or by whole old row (REPLICA IDENTITY FULL)."""
    if t.full:
        _write_one_full(cur, t, change)
        return
    if not t.key:
        raise ApplyError(
            f"cannot apply {type(change).__name__.upper()} to {t.name}: the source table "
            "has no replica identity",
            hint="give the source table a primary key or a REPLICA IDENTITY",
        )
    key = t.key
    if isinstance(change, Delete):
        cur.execute(cached(t, ("dv", 1), _sql.delete_rows, 1), [change.old.values[i] for i in key])
        return
    new, old = change.new, change.old or change.new
    if all(old.values[i] == new.values[i] for i in key):
        write_values(cur, t, NetEffect(updates={mask_of(new): [new]}))
    elif t.always.intersection(key):
        _move_identity(cur, t, old, new)
    else:
        mask = mask_of(new)
        stmt, sets = cached(t, ("um", mask), _sql.update_moved, mask)
        if stmt is not None:
            cur.execute(stmt, [new.values[i] for i in sets] + [old.values[i] for i in key])


def _move_identity(cur: Cursor, t: Table, old: TupleData, new: TupleData) -> None:
    # UPDATE cannot set a GENERATED ALWAYS column: delete the old row, insert the new one.
    if b"u" in new.kinds:
        raise ApplyError(
            f"{t.name}: cannot move a row to a new GENERATED ALWAYS key while keeping "
            "unchanged TOAST values",
            hint="make the identity column GENERATED BY DEFAULT on the destination",
        )
    cur.execute(cached(t, ("dv", 1), _sql.delete_rows, 1), [old.values[i] for i in t.key])
    cur.execute(cached(t, ("iv", 1), _sql.insert_rows, 1), new.values)


def _write_one_full(cur: Cursor, t: Table, change: Update | Delete) -> None:
    old = change.old
    if old is None:
        raise ApplyError(f"{t.name}: UPDATE without the old row on a REPLICA IDENTITY FULL table")
    if isinstance(change, Delete):
        stmt, where = cached(t, ("dw", old.kinds), _sql.delete_whole_row, old.kinds)
        cur.execute(stmt, [old.values[i] for i in where])
        return
    mask = mask_of(change.new)
    stmt, sets, where = cached(t, ("uw", old.kinds, mask), _sql.update_whole_row, old.kinds, mask)
    if stmt is not None:
        cur.execute(stmt, [change.new.values[i] for i in sets] + [old.values[i] for i in where])
