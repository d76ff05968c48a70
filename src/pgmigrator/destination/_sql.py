"""SQL text and COPY payloads for the applier (no I/O).

Every statement is built from `psycopg.sql` pieces (identifiers quoted by psycopg, type names as
the server's ``format_type`` printed them) and cached on its `Table`. Values travel as
parameters (raw text bytes, sent with type *unknown* and cast by ``%s::type``) or inside a COPY
text payload; they never enter the SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper

from pgmigrator.destination._table import Table
from pgmigrator.destination.compact import unchanged_positions
from pgmigrator.errors import ApplyError
from pgmigrator.events import TupleData
from pgmigrator.protocol._accel import copy_text

_copy_text = copy_text()

OP = sql.Identifier("_pgm_op")
OP_DELETE, OP_INSERT, OP_UPDATE = 0, 1, 2  # update mask groups take OP_UPDATE, OP_UPDATE + 1, ...
_NULL = b"\\N"
_SPECIAL = re.compile(rb"[\\\t\n\r]")
_N, _U = ord("n"), ord("u")


class TextBytesDumper(Dumper):
    """Send ``bytes`` (a value's text form as pgoutput sent it) as a parameter of unknown type."""

    oid = 0

    def dump(self, obj: Buffer) -> Buffer:
        return obj


# -- COPY text payloads ------------------------------------------------------------------------


def copy_payload(groups: Iterable[tuple[bytes, Sequence[TupleData]]], ncols: int) -> bytes:
    """COPY text lines for ``(prefix, rows)`` groups; NULL and unchanged TOAST become ``\\N``.

    The lines are built with bytes joins; escaping per value is needed only when a value holds a
    backslash, tab, newline or carriage return, which counting separators over the whole
    payload detects.
    """
    groups = [(prefix, rows) for prefix, rows in groups if rows]
    if _copy_text is not None and len(groups) == 1 and not groups[0][0]:
        payload = _copy_text(groups[0][1])  # the C builder: inserts, the hot case
        if payload is not None:
            return payload
    return _py_copy_payload(groups, ncols)


def _py_copy_payload(groups: list[tuple[bytes, Sequence[TupleData]]], ncols: int) -> bytes:
    """`copy_payload` in Python, the reference for the C builder."""
    lines: list[bytes] = []
    join = b"\t".join
    for prefix, rows in groups:
        lines += [
            prefix
            + (
                join(r.values)  # type: ignore[arg-type]  # no None: checked by the kinds
                if _N not in r.kinds and _U not in r.kinds
                else join([_NULL if v is None else v for v in r.values])
            )
            for r in rows
        ]
    lines.append(b"")
    payload = b"\n".join(lines)
    nrows = len(lines) - 1
    kinds = b"".join([r.kinds for _, rows in groups for r in rows])
    if b"b" in kinds:
        raise ApplyError(
            "a change carries a binary-format value; the applier needs text",
            hint="stream pgoutput without the binary option",
        )
    tabs = nrows * (ncols - 1) + sum(len(rows) for prefix, rows in groups if prefix)
    if (
        payload.count(b"\t") != tabs
        or payload.count(b"\n") != nrows
        or payload.count(b"\\") != kinds.count(b"n") + kinds.count(b"u")
        or b"\r" in payload
    ):
        payload = _escaped_payload(groups)
    return payload


def _escaped_payload(groups: list[tuple[bytes, Sequence[TupleData]]]) -> bytes:
    lines = [
        prefix + b"\t".join([_NULL if v is None else _escape(v) for v in r.values])
        for prefix, rows in groups
        for r in rows
    ]
    lines.append(b"")
    return b"\n".join(lines)


def _escape(value: bytes) -> bytes:
    if _SPECIAL.search(value) is None:
        return value
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b"\t", b"\\t")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
    )


# -- set-based statements ---------------------------------------------------------------------
# Each takes its rows either from the staging table (``n=None``: the rows with one op code, no
# parameters) or from a VALUES list of ``n`` rows of parameters.


def create_staging(t: Table) -> sql.Composed:
    """(Re)create the session's staging table: an op code plus the columns, typed for staging."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(c, typ) for c, typ in zip(t.columns, t.tmp_types, strict=True)
    )
    return sql.SQL(
        "DROP TABLE IF EXISTS {tmp}; CREATE TEMP TABLE {tmp} ({op} int2, {cols})"
    ).format(tmp=t.tmp, op=OP, cols=cols)


def copy_into(t: Table, staging: bool) -> sql.Composed:
    """``COPY`` into the staging table (with the op code) or straight into the table."""
    cols = sql.SQL(", ").join([OP, *t.columns] if staging else t.columns)
    target = t.tmp if staging else t.ident
    return sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols)


def truncate_staging(t: Table) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(t.tmp)


def _source(t: Table, positions: Sequence[int], n: int | None, op: int) -> sql.Composed:
    """``<rows> AS s WHERE`` plus the op filter for the staging table, ready for key joins."""
    if n is None:
        return sql.SQL("{} AS s WHERE s.{} = {} AND ").format(t.tmp, OP, sql.Literal(op))
    return sql.SQL("({}) AS s ({}) WHERE ").format(
        _values(t, positions, n), sql.SQL(", ").join(t.pcolumns[i] for i in positions)
    )


def _values(t: Table, positions: Sequence[int], n: int) -> sql.Composed:
    one = sql.SQL("({})").format(sql.SQL(", ").join(_param(t, i) for i in positions))
    return sql.SQL("VALUES {}").format(sql.SQL(", ").join([one] * n))


def _key_join(t: Table, n: int | None) -> sql.Composable:
    cols = t.columns if n is None else t.pcolumns
    return sql.SQL(" AND ").join(sql.SQL("d.{c} = s.{c}").format(c=cols[i]) for i in t.key)


def delete_rows(t: Table, n: int | None) -> sql.Composed:
    """DELETE of the rows whose keys are staged or given; parameters: the key values."""
    ident = t.ident if n is None else t.pident
    return sql.SQL("DELETE FROM {} AS d USING {}{}").format(
        ident, _source(t, t.key, n, OP_DELETE), _key_join(t, n)
    )


def update_rows(
    t: Table, mask: bytes, n: int | None, op: int
) -> tuple[sql.Composed | None, list[int]]:
    """UPDATE of the columns ``mask`` does not mark unchanged, from staged or given rows.

    Returns the statement (None when there is nothing to set) and the positions of each row's
    parameters (key, then set columns).
    """
    sets = _settable(t, mask, moved=False)
    if not sets:
        return None, []
    positions = [*t.key, *sets]
    cols, ident = (t.columns, t.ident) if n is None else (t.pcolumns, t.pident)
    assignments = sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=cols[i]) for i in sets)
    stmt = sql.SQL("UPDATE {} AS d SET {} FROM {}{}").format(
        ident, assignments, _source(t, positions, n, op), _key_join(t, n)
    )
    return stmt, positions


def insert_rows(t: Table, n: int | None) -> sql.Composed:
    """INSERT of staged rows or of ``n`` rows of parameters (every column)."""
    if n is None:
        cols = sql.SQL(", ").join(t.columns)
        return sql.SQL("INSERT INTO {} ({}) {}SELECT {} FROM {} WHERE {} = {}").format(
            t.ident, cols, t.overriding, cols, t.tmp, OP, sql.Literal(OP_INSERT)
        )
    return sql.SQL("INSERT INTO {} ({}) {}{}").format(
        t.pident,
        sql.SQL(", ").join(t.pcolumns),
        t.overriding,
        _values(t, range(len(t.columns)), n),
    )


# -- row-by-row statements ---------------------------------------------------------------------


def _param(t: Table, i: int) -> sql.Composed:
    return sql.SQL("%s::{}").format(t.casts[i])


def _settable(t: Table, mask: bytes, moved: bool) -> list[int]:
    """Columns an UPDATE sets: not unchanged TOAST, not GENERATED ALWAYS, keys only if moved."""
    skip = unchanged_positions(mask) | t.always | (frozenset() if moved else frozenset(t.key))
    return [i for i in range(len(t.columns)) if i not in skip]


def update_moved(t: Table, mask: bytes) -> tuple[sql.Composed | None, list[int]]:
    """UPDATE of one row found by its old key, key columns included; params: set cols, old key."""
    sets = _settable(t, mask, moved=True)
    if not sets:
        return None, sets
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(t.pcolumns[i], _param(t, i)) for i in sets
    )
    where = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(t.pcolumns[i], _param(t, i)) for i in t.key
    )
    return sql.SQL("UPDATE {} SET {} WHERE {}").format(t.pident, assignments, where), sets


def _match_whole_row(t: Table, old_kinds: bytes) -> tuple[sql.Composable, list[int]]:
    """WHERE clause hitting exactly one row equal to the old row (duplicates allowed).

    Returns the clause and the positions whose old values are its parameters; unchanged-TOAST
    columns are left out, NULLs compared with IS NULL, types without ``=`` compared as text.
    """
    conds: list[sql.Composable] = []
    params: list[int] = []
    for i, kind in enumerate(old_kinds):
        col = t.pcolumns[i]
        if kind == _U:
            continue
        if kind == _N:
            conds.append(sql.SQL("{} IS NULL").format(col))
            continue
        params.append(i)
        if i in t.text_eq:
            conds.append(sql.SQL("{}::text = %s::text").format(col))
        else:
            conds.append(sql.SQL("{} = {}").format(col, _param(t, i)))
    if not conds:
        raise ApplyError(f"{t.name}: cannot identify a row: the old row has no comparable column")
    tid = sql.SQL("(tableoid, ctid)" if t.partitioned else "ctid")
    where = sql.SQL("{} = (SELECT {} FROM {} WHERE {} LIMIT 1)").format(
        tid, tid, t.pident, sql.SQL(" AND ").join(conds)
    )
    return where, params


def delete_whole_row(t: Table, old_kinds: bytes) -> tuple[sql.Composed, list[int]]:
    """DELETE of one row equal to the old row; parameters: the old values at the positions."""
    where, params = _match_whole_row(t, old_kinds)
    return sql.SQL("DELETE FROM {} WHERE {}").format(t.pident, where), params


def update_whole_row(
    t: Table, old_kinds: bytes, mask: bytes
) -> tuple[sql.Composed | None, list[int], list[int]]:
    """UPDATE of one row equal to the old row; parameters: set columns, then old values."""
    sets = _settable(t, mask, moved=True)
    if not sets:
        return None, sets, []
    where, params = _match_whole_row(t, old_kinds)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(t.pcolumns[i], _param(t, i)) for i in sets
    )
    return sql.SQL("UPDATE {} SET {} WHERE {}").format(t.pident, assignments, where), sets, params
