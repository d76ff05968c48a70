"""Unit tests of the lake's pure parts: type mapping, text to Arrow, CSV chunks, net effect."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.types import DecimalType, IntegerType, LongType, StringType, TimestamptzType

from pgmigrator.events import Column, Delete, Insert, Relation, Truncate, TupleData, Update
from pgmigrator.lake.batch import ChangeBuffer, Position, csv_to_table
from pgmigrator.lake.types import LakeError, from_iceberg, map_type, to_arrow
from pgmigrator.lake.writer import key_filter


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


def test_type_mapping() -> None:
    assert map_type(23, -1).iceberg == IntegerType()
    assert map_type(21, -1).iceberg == IntegerType()
    assert map_type(20, -1).iceberg == LongType()
    assert map_type(1700, numeric_typmod(12, 3)).iceberg == DecimalType(12, 3)
    assert map_type(1700, -1).iceberg == StringType()  # unconstrained numeric
    assert map_type(1700, numeric_typmod(50, 2)).iceberg == StringType()  # beyond decimal(38)
    assert map_type(1184, -1).iceberg == TimestamptzType()
    assert map_type(3802, -1).iceberg == StringType()  # jsonb
    assert map_type(1007, -1).iceberg == StringType()  # int4[]
    assert map_type(99999, -1).iceberg == StringType()  # an unknown (user-defined) type
    for oid, mod in ((23, -1), (1700, numeric_typmod(10, 2)), (2950, -1), (17, -1), (25, -1)):
        t = map_type(oid, mod)
        assert from_iceberg(t.iceberg).arrow == t.arrow


def text(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string())


def test_text_values_convert_per_column() -> None:
    assert to_arrow(text(["1", None, "-7"]), map_type(23, -1), "c").to_pylist() == [1, None, -7]
    assert to_arrow(text(["t", "f", None]), map_type(16, -1), "c").to_pylist() == [
        True,
        False,
        None,
    ]
    dec = to_arrow(text(["1.50", None]), map_type(1700, numeric_typmod(10, 2)), "c")
    assert dec.to_pylist() == [Decimal("1.50"), None]
    tz = to_arrow(
        text(["2024-01-02 03:04:05.5+02", "2024-01-02 03:04:05+05:30"]), map_type(1184, -1), "c"
    )
    assert tz.to_pylist() == [
        dt.datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 21, 34, 5, tzinfo=dt.UTC),
    ]
    assert to_arrow(text(["10:00:01.25"]), map_type(1083, -1), "c").to_pylist() == [
        dt.time(10, 0, 1, 250000)
    ]
    assert to_arrow(text(["\\x00ff", None]), map_type(17, -1), "c").to_pylist() == [
        b"\x00\xff",
        None,
    ]
    u = uuid.uuid4()
    assert to_arrow(text([str(u)]), map_type(2950, -1), "c").to_pylist() == [u]


def test_a_value_without_an_iceberg_form_is_a_clear_error() -> None:
    with pytest.raises(LakeError) as info:
        to_arrow(text(["infinity"]), map_type(1082, -1), "born")
    assert "born" in info.value.message and info.value.hint


def test_csv_chunk_keeps_nulls_empty_strings_quotes_and_newlines() -> None:
    columns = [("id", map_type(23, -1)), ("s", map_type(25, -1))]
    data = b'1,\n2,""\n3,"a ""q"",\nb"\n'
    table = csv_to_table(data, columns)
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("s").to_pylist() == [None, "", 'a "q",\nb']


REL = Relation(
    1, "public", "t", "d", (Column(1, "id", 23, -1), Column(0, "v", 25, -1))
)  # fmt: skip
COLS = [("id", map_type(23, -1)), ("v", map_type(25, -1))]


def row(*values: bytes | None) -> TupleData:
    kinds = bytes(ord("n") if v is None else ord("t") for v in values)
    return TupleData(kinds, tuple(values))


def test_net_effect_follows_ordered_apply() -> None:
    buf = ChangeBuffer("public", "t")
    changes = [
        Insert(1, row(b"1", b"a")),
        Update(1, None, None, row(b"1", b"b")),  # insert then update: insert of the last image
        Insert(1, row(b"2", b"x")),
        Delete(1, row(b"2", None), "K"),  # insert then delete: nothing
        Update(1, row(b"3", None), "K", row(b"4", b"moved")),  # key change: delete 3, upsert 4
    ]
    for seq, change in enumerate(changes):
        buf.add(change, REL, 100, seq, 0)
    assert buf.upserts(COLS).to_pylist() == [{"id": 1, "v": "b"}, {"id": 4, "v": "moved"}]
    assert sorted(buf.touched_keys(COLS[:1]).column("id").to_pylist()) == [1, 2, 3, 4]
    log = buf.changelog(COLS)
    assert log.column("_op").to_pylist() == ["c", "u", "c", "d", "u"]
    assert log.column("_seq").to_pylist() == [0, 1, 2, 3, 4]
    assert buf.changelog(COLS, Position(101)).num_rows == 0  # all of transaction 100 is in
    assert buf.changelog(COLS, Position(50, 100, 3)).column("_seq").to_pylist() == [3, 4]


def test_position_holds() -> None:
    pos = Position(200, partial_lsn=300, partial_seq=5)
    assert pos.holds(199, 1_000)  # an older transaction: all of it
    assert not pos.holds(200, 0)  # a transaction committed at the position: not yet
    assert pos.holds(300, 4) and not pos.holds(300, 5)  # the piece written so far
    assert not pos.holds(301, 0)


def test_truncate_empties_what_came_before() -> None:
    buf = ChangeBuffer("public", "t")
    buf.add(Insert(1, row(b"1", b"a")), REL, 10, 0, 0)
    buf.add(Truncate((1,), False, False), REL, 20, 0, 0)
    buf.add(Insert(1, row(b"2", b"b")), REL, 30, 0, 0)
    assert buf.truncated
    assert buf.upserts(COLS).to_pylist() == [{"id": 2, "v": "b"}]


def test_rows_of_an_older_layout_get_nulls_for_new_columns() -> None:
    wider = Relation(1, "public", "t", "d", (*REL.columns, Column(0, "note", 25, -1)))
    buf = ChangeBuffer("public", "t")
    buf.add(Insert(1, row(b"1", b"a")), REL, 10, 0, 0)
    buf.add(Insert(1, row(b"2", b"b", b"n")), wider, 11, 0, 0)
    cols = [*COLS, ("note", map_type(25, -1))]
    assert buf.upserts(cols).column("note").to_pylist() == [None, "n"]


def test_a_table_without_key_keeps_identical_inserts() -> None:
    keyless = Relation(2, "public", "log", "n", (Column(0, "msg", 25, -1),))
    buf = ChangeBuffer("public", "log")
    for seq in range(3):
        buf.add(Insert(2, row(b"same")), keyless, 10, seq, 0)
    assert buf.upserts([("msg", map_type(25, -1))]).column("msg").to_pylist() == ["same"] * 3
    assert buf.touched_keys([("msg", map_type(25, -1))]).num_rows == 0


def test_key_filter() -> None:
    assert key_filter(pa.table({"id": pa.array([], pa.int32())})) is None
    single = key_filter(pa.table({"id": [1, 2]}))
    assert "id" in repr(single) and "In" in repr(single)
    composite = key_filter(pa.table({"a": [1, 2], "b": ["x", "y"]}))
    assert "Or" in repr(composite) and "And" in repr(composite)
    ranged = repr(key_filter(pa.table({"id": [*range(1, 101), 200, 202]})))
    assert "GreaterThanOrEqual" in ranged and "LessThanOrEqual" in ranged and "200" in ranged
    assert ranged.count("GreaterThanOrEqual") == 1  # 1..100 is one range, not 100 literals


def test_key_filter_binds_exactly_the_keys() -> None:
    from pyiceberg.expressions.visitors import expression_evaluator
    from pyiceberg.schema import Schema
    from pyiceberg.typedef import Record
    from pyiceberg.types import NestedField

    schema = Schema(NestedField(1, "id", LongType(), required=False))
    keys = [*range(10, 20), 25, 27, 30, 31]
    evaluate = expression_evaluator(schema, key_filter(pa.table({"id": keys})), True)
    assert [i for i in range(0, 40) if evaluate(Record(i))] == keys
    many = pa.table(
        {"a": list(range(3000)), "b": ["k"] * 3000}
    )  # a balanced OR: no recursion error
    evaluate = expression_evaluator(
        Schema(
            NestedField(1, "a", LongType(), required=False),
            NestedField(2, "b", StringType(), required=False),
        ),
        key_filter(many),
        True,
    )
    assert evaluate(Record(2999, "k")) and not evaluate(Record(2999, "x"))
