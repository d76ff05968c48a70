"""Conflict handling's pure parts: per-change times, array literals, resolution of a winner."""

from __future__ import annotations

from datetime import UTC, datetime

from psycopg import sql

from pgmigrator.destination._table import Table
from pgmigrator.destination.conflicts import (
    Conflict,
    ConflictPolicy,
    _array,
    _resolve,
    _winner,
    expand_times,
)
from pgmigrator.events import Column, Delete, Insert, Relation, TupleData, Update

REL = Relation(1, "public", "acc", "d", (Column(1, "id", 23, -1), Column(0, "v", 25, -1)))


def table() -> Table:
    ident = sql.Identifier("public", "acc")
    cols = (sql.Identifier("id"), sql.Identifier("v"))
    return Table(
        oid=1,
        name="public.acc",
        ident=ident,
        columns=cols,
        pident=ident,
        pcolumns=cols,
        casts=(sql.SQL("integer"), sql.SQL("text")),
        tmp_types=(sql.SQL("integer"), sql.SQL("text")),
        key=(0,),
        full=False,
        always=frozenset(),
        text_eq=frozenset(),
        partitioned=False,
        key_indexed=True,
        other_unique=False,
        tmp=sql.Identifier("pgm_apply_1"),
        relation=REL,
    )


def row(i: int, v: str) -> TupleData:
    return TupleData(b"tt", (str(i).encode(), v.encode()))


def test_expand_times_gives_each_change_its_transactions_commit_time() -> None:
    assert expand_times([(0, 10), (2, 20), (3, 30)], 5) == [10, 10, 20, 30, 30]
    assert expand_times([(0, 7)], 1) == [7]


def test_array_literal_quotes_every_element() -> None:
    values = [b"plain", b'quo"te', b"back\\slash", b"{brace,comma}", None]
    assert _array(values) == b'{"plain","quo\\"te","back\\\\slash","{brace,comma}",NULL}'


def test_local_win_drops_every_change_to_the_key_and_nothing_else() -> None:
    t = table()
    changes = [
        Update(1, None, None, row(7, "a")),
        Insert(1, row(8, "b")),
        Update(1, None, None, row(7, "c")),
        Delete(1, row(7, "c"), "K"),
    ]
    assert _resolve(t, changes, skip={(b"7",)}, replace=set()) == [changes[1]]


def test_incoming_insert_that_wins_replaces_the_existing_row() -> None:
    t = table()
    changes = [Insert(1, row(7, "new")), Update(1, None, None, row(7, "newer"))]
    out = _resolve(t, changes, skip=set(), replace={(b"7",)})
    assert out == [Delete(1, row(7, "new"), "K"), *changes]


def test_conflict_message_names_table_key_and_both_versions() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    text = Conflict(
        "public.acc", {"id": "7"}, '{"id":7,"v":"here"}', when, "local", "UPDATE {...}", when, None
    ).describe()
    assert text.startswith("conflict on public.acc (id=7)")
    assert '{"id":7,"v":"here"}' in text and "UPDATE {...}" in text


def test_an_update_of_a_row_deleted_here_says_so_and_keeps_the_deletion() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    text = Conflict(
        "public.acc", {"id": "7"}, "", None, "local", 'UPDATE {"id":"7"}', when, None
    ).describe()
    assert text.startswith("conflict on public.acc (id=7): the row is not here")
    assert 'UPDATE {"id":"7"}' in text
    assert _winner(ConflictPolicy("last-writer-wins"), None, 10) == "local"
    assert _winner(ConflictPolicy("error"), None, 10) is None
    assert _winner(ConflictPolicy("last-writer-wins"), 11, 10) == "local"
    assert _winner(ConflictPolicy("last-writer-wins"), 9, 10) == "incoming"
