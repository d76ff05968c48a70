"""Runs of inserts kept as pgoutput tuples (`InsertRun`, `take_row`) against the reference path.

The reference is what the reader did before runs existed: decode every change with the Python
decoder and build COPY text with the Python builder. `take_row` must keep exactly the same
changes, in the same order (runs expanded), leave alone what the decoder must judge, and a run's
COPY text must be the bytes the Python builder makes of its decoded rows.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.destination import _sql
from pgmigrator.errors import ProtocolError
from pgmigrator.events import Delete, Insert, Relation, TupleData, Update
from pgmigrator.protocol import pgoutput
from pgmigrator.protocol.runs import InsertRun, expand, take_row

from .pgoutput_encoder import change_messages, encode

pytestmark = pytest.mark.skipif(take_row is None, reason="the C accelerator is not in use")
PY_ROW = pgoutput._py_decode_row_change
row_changes = change_messages(st.none()).filter(lambda m: isinstance(m, (Insert, Update, Delete)))
text_values = st.binary(max_size=20) | st.sampled_from([b"\\", b"\t\n\r", b"a\\b\tc", b"\xc3\xa9"])
cells = st.one_of(st.tuples(st.just("n"), st.none()), st.tuples(st.just("t"), text_values))


def plain_insert(oid: int, ncols: int) -> st.SearchStrategy[Insert]:
    """Inserts whose columns are all text or NULL: the ones that join runs."""
    row = st.lists(cells, min_size=ncols, max_size=ncols).map(
        lambda cs: TupleData("".join(k for k, _ in cs).encode(), tuple(v for _, v in cs))
    )
    return row.map(lambda r: Insert(oid, r))


mixed = st.lists(
    st.one_of(plain_insert(7, 3), plain_insert(8, 1), row_changes), min_size=1, max_size=30
)


def take_all(messages: list[bytes]) -> tuple[list[object], list[int]]:
    rows: list[object] = []
    refused = [i for i, wire in enumerate(messages) if not take_row(rows, wire)]  # type: ignore[misc]
    return rows, refused


@settings(max_examples=300, deadline=None)
@given(mixed)
def test_same_changes_in_the_same_order_as_the_decoder(changes: list[object]) -> None:
    wires = [encode(c) for c in changes]  # type: ignore[arg-type]
    rows, refused = take_all(wires)
    assert refused == []
    assert expand(rows) == [PY_ROW(w) for w in wires]  # type: ignore[arg-type]
    for prev, run in itertools.pairwise(rows):  # runs are as long as they can be
        if isinstance(prev, InsertRun) and isinstance(run, InsertRun):
            assert prev.relation_oid != run.relation_oid


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.lists(plain_insert(7, n), min_size=1, max_size=20)))
def test_copy_text_is_the_python_builders(inserts: list[Insert]) -> None:
    rows, _ = take_all([encode(i) for i in inserts])
    [run] = rows
    assert isinstance(run, InsertRun) and run.rows == len(inserts) and run.relation_oid == 7
    expected = _sql._py_copy_payload([(b"", [i.new for i in inserts])], len(inserts[0].new.kinds))
    assert run.copy_text() == expected
    assert run.tuples() == [i.new for i in inserts]
    assert run.nbytes == sum(len(encode(i)) - 6 for i in inserts)


def test_what_the_decoder_must_judge_is_left_to_it() -> None:
    good = encode(Insert(7, TupleData(b"tn", (b"1", None))))
    binary = Insert(7, TupleData(b"tb", (b"1", b"\x00")))
    no_columns = Insert(7, TupleData(b"", ()))
    rows: list[object] = []
    assert take_row(rows, encode(binary)) and take_row(rows, encode(no_columns))  # type: ignore[misc]
    assert rows == [binary, no_columns]  # decoded as before: the applier's builder refuses binary
    for cut in range(len(good)):  # every truncation, and trailing bytes: the decoder says why
        assert not take_row(rows, good[:cut])  # type: ignore[misc]
        if cut:
            with pytest.raises(ProtocolError):
                PY_ROW(good[:cut])
    assert not take_row(rows, good + b"x")  # type: ignore[misc]
    assert not take_row(rows, encode(Relation(1, "s", "t", "d", ())))  # type: ignore[misc]
    assert len(rows) == 2


def test_a_run_read_by_the_applier_is_never_extended() -> None:
    one = encode(Insert(7, TupleData(b"t", (b"1",))))
    rows: list[object] = []
    take_row(rows, one)  # type: ignore[misc]
    take_row(rows, one)  # type: ignore[misc]
    first = rows[0]
    assert isinstance(first, InsertRun) and first.rows == 2
    assert first.copy_text() == b"1\n1\n"  # sealed: the applier owns it now
    take_row(rows, one)  # type: ignore[misc]
    assert len(rows) == 2 and first.rows == 2 and rows[1].rows == 1  # type: ignore[attr-defined]
    assert first.copy_text() == b"1\n1\n"
