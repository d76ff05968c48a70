"""Event encoding: type mapping by OID, the event shape, ids, unchanged TOAST, filters in the codec."""

from __future__ import annotations

import base64

import orjson
import pytest

from pgmigrator.events import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    TupleData,
    Update,
)
from pgmigrator.lsn import Lsn
from pgmigrator.stream.changes import ChangeEncoder
from pgmigrator.stream.encode import ColumnSpec, TableCodec, iso_from_pg_us
from pgmigrator.stream.filters import Filters
from pgmigrator.stream.listen import NotifyEncoder
from pgmigrator.stream.snapshot import copy_fields
from tests.unit.pgoutput_encoder import encode as wire

T, N, U = ord("t"), ord("n"), ord("u")


def tup(*values: bytes | None, unchanged: tuple[int, ...] = ()) -> TupleData:
    kinds = bytes(U if i in unchanged else (N if v is None else T) for i, v in enumerate(values))
    vals = tuple(None if i in unchanged else v for i, v in enumerate(values))
    return TupleData(kinds, vals)


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (23, b"42", 42),
        (20, b"-9223372036854775808", -9223372036854775808),
        (21, b"7", 7),
        (701, b"0.1", 0.1),
        (700, b"NaN", "NaN"),
        (701, b"-Infinity", "-Infinity"),
        (1700, b"12345678901234567890.000000000001", "12345678901234567890.000000000001"),
        (16, b"t", True),
        (16, b"f", False),
        (3802, b'{"a": [1, 2]}', {"a": [1, 2]}),
        (114, b"[1, null]", [1, None]),
        (17, b"\\x00ff10", base64.b64encode(b"\x00\xff\x10").decode()),
        (1184, b"2024-01-01 10:00:00.5+00", "2024-01-01T10:00:00.5Z"),
        (1184, b"2024-01-01 12:00:00+02", "2024-01-01T10:00:00Z"),
        (1184, b"infinity", "infinity"),
        (1114, b"2024-01-01 10:00:00", "2024-01-01T10:00:00"),
        (1082, b"2024-01-01", "2024-01-01"),
        (1007, b"{1,2,3}", "{1,2,3}"),
        (2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (25, "héllo".encode(), "héllo"),
    ],
)
def test_type_mapping(oid: int, text: bytes, expected: object) -> None:
    codec = TableCodec("db", "public", "t", [ColumnSpec("v", oid, False)])
    assert orjson.loads(orjson.dumps(codec.row([text]))) == {"v": expected}


def test_null_and_unchanged_toast() -> None:
    codec = TableCodec(
        "db",
        "s",
        "t",
        [ColumnSpec("id", 23, True), ColumnSpec("doc", 25, False), ColumnSpec("x", 23, False)],
    )
    data = tup(b"1", None, None, unchanged=(1,))
    row, unchanged = codec.row_toast(data.kinds, data.values)
    assert row == {"id": 1, "x": None}
    assert unchanged == ["doc"]


def test_drop_and_mask_columns_are_folded_into_the_codec() -> None:
    cols = [
        ColumnSpec("id", 23, True),
        ColumnSpec("ssn", 25, False),
        ColumnSpec("email", 25, False),
    ]
    codec = TableCodec("db", "s", "t", cols, drop=frozenset({"ssn"}), mask=frozenset({"email"}))
    assert codec.row([b"1", b"123-45", b"a@b"]) == {"id": 1, "email": "***"}
    assert codec.key([b"1", b"123-45", b"a@b"]) == {"id": 1}


REL = Relation(
    16384,
    "public",
    "items",
    "d",
    (Column(1, "id", 23, -1), Column(0, "price", 1700, -1), Column(0, "doc", 25, -1)),
)


def feed_all(encoder: ChangeEncoder, *msgs: object) -> None:
    for msg in msgs:
        encoder.feed(wire(msg))  # type: ignore[arg-type]


def test_transaction_events_shape_ids_and_mark() -> None:
    enc = ChangeEncoder("shop", Filters())
    commit_us = 789_000_000
    feed_all(
        enc,
        Begin(Lsn(0x1000), commit_us, 77),
        REL,
        Insert(16384, tup(b"1", b"9.99", b"x")),
        Update(16384, None, None, tup(b"1", b"10.50", None, unchanged=(2,))),
        Delete(16384, tup(b"1", None, None), "K"),
        Commit(0, Lsn(0x1000), Lsn(0x1040), commit_us),
    )
    events, mark = enc.drain()
    assert mark == Lsn(0x1040)
    docs = [orjson.loads(e.body) for e in events]
    assert [d["id"] for d in docs] == ["0/1000:1", "0/1000:2", "0/1000:3"]
    assert [d["op"] for d in docs] == ["c", "u", "d"]
    assert docs[0]["source"] == {
        "db": "shop",
        "schema": "public",
        "table": "items",
        "lsn": "0/1000",
        "xid": 77,
        "commit_time": iso_from_pg_us(commit_us),
    }
    assert docs[0]["key"] == {"id": 1}
    assert docs[0]["after"] == {"id": 1, "price": "9.99", "doc": "x"}
    assert docs[0]["before"] is None
    assert docs[1]["after"] == {"id": 1, "price": "10.50"}
    assert docs[1]["unchanged_toast"] == ["doc"]
    assert docs[2]["before"] == {"id": 1}
    assert docs[2]["after"] is None
    assert all(e.lsn == Lsn(0x1000) and e.table == "items" for e in events)
    assert enc.drain() == ([], None)


def test_index_counts_filtered_changes_so_ids_are_stable() -> None:
    enc = ChangeEncoder("db", Filters(operations=["d"]))
    feed_all(
        enc,
        Begin(Lsn(0x2000), 0, 1),
        REL,
        Insert(16384, tup(b"1", b"1", b"a")),
        Insert(16384, tup(b"2", b"1", b"a")),
        Delete(16384, tup(b"1", None, None), "K"),
        Commit(0, Lsn(0x2000), Lsn(0x2030), 0),
    )
    events, mark = enc.drain()
    assert [e.id for e in events] == ["0/2000:3"]
    assert mark == Lsn(0x2030)


def test_excluded_table_yields_no_events_but_the_mark_advances() -> None:
    enc = ChangeEncoder("db", Filters(exclude=["public.items"]))
    feed_all(
        enc,
        Begin(Lsn(0x3000), 0, 1),
        REL,
        Insert(16384, tup(b"1", b"1", b"a")),
        Commit(0, Lsn(0x3000), Lsn(0x3010), 0),
    )
    assert enc.drain() == ([], Lsn(0x3010))


def test_skip_through_drops_already_published_transactions() -> None:
    enc = ChangeEncoder("db", Filters())
    enc.skip_through = Lsn(0x4000)
    feed_all(
        enc,
        Begin(Lsn(0x4000), 0, 1),
        REL,
        Insert(16384, tup(b"1", b"1", b"a")),
        Commit(0, Lsn(0x4000), Lsn(0x4010), 0),
        Begin(Lsn(0x5000), 0, 2),
        Insert(16384, tup(b"2", b"1", b"a")),
        Commit(0, Lsn(0x5000), Lsn(0x5010), 0),
    )
    events, mark = enc.drain()
    assert [e.id for e in events] == ["0/5000:1"]
    assert mark == Lsn(0x5010)


def test_truncate_and_messages() -> None:
    enc = ChangeEncoder("db", Filters())
    feed_all(
        enc,
        Begin(Lsn(0x6000), 0, 5),
        REL,
        Truncate((16384,), False, False),
        Message(True, Lsn(0x5FF0), "app", b'{"k": 1}'),
        Commit(0, Lsn(0x6000), Lsn(0x6010), 0),
        Message(False, Lsn(0x7000), "raw", b"\xff\x00"),
    )
    events, mark = enc.drain()
    docs = [orjson.loads(e.body) for e in events]
    assert [(d["id"], d["op"]) for d in docs] == [
        ("0/6000:1", "t"),
        ("0/6000:2", "m"),
        ("0/7000:0", "m"),
    ]
    assert docs[1]["message"]["content"] == '{"k": 1}'
    assert docs[2]["message"]["content"] is None
    assert base64.b64decode(docs[2]["message"]["content_base64"]) == b"\xff\x00"
    assert mark == Lsn(0x7000)


def test_full_old_row_is_before_image() -> None:
    rel = Relation(1, "s", "f", "f", (Column(1, "id", 23, -1), Column(1, "v", 25, -1)))
    enc = ChangeEncoder("db", Filters())
    feed_all(
        enc,
        Begin(Lsn(0x10), 0, 1),
        rel,
        Update(1, tup(b"1", b"old"), "O", tup(b"1", b"new")),
        Commit(0, Lsn(0x10), Lsn(0x20), 0),
    )
    doc = orjson.loads(enc.drain()[0][0].body)
    assert doc["before"] == {"id": 1, "v": "old"}
    assert doc["after"] == {"id": 1, "v": "new"}


def test_copy_text_format_unescaping() -> None:
    line = b"1\t\\N\ta\\tb\\nc\\\\d\t\\\\x0102\n"
    assert copy_fields(line) == [b"1", None, b"a\tb\nc\\d", b"\\x0102"]


def test_notify_events() -> None:
    enc = NotifyEncoder("db", start_us=1234)
    a = orjson.loads(enc.encode("jobs", '{"job": 7}', 99).body)
    b = orjson.loads(enc.encode("jobs", "not json", 99).body)
    assert a["id"] == "n1234:1" and b["id"] == "n1234:2"
    assert a["op"] == "n" and a["channel"] == "jobs" and a["pid"] == 99
    assert a["payload"] == {"job": 7}
    assert b["payload"] == "not json"
    assert a["source"]["db"] == "db" and a["source"]["lsn"] is None
