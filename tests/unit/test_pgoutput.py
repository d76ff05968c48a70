"""Unit tests for the pgoutput decoder and the event values it produces.

Hand-built byte strings check the documented layouts ("Logical Replication Message Formats");
hypothesis round-trips random messages through the test encoder and fuzzes the decoder.
"""

from __future__ import annotations

import contextlib
import pickle
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.errors import ProtocolError
from pgmigrator.events import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
    pg_timestamp_to_datetime,
)
from pgmigrator.lsn import Lsn
from pgmigrator.protocol import PgOutputDecoder, decode_message

from .pgoutput_encoder import (
    change_messages,
    encode,
    encode_tuple,
    plain_messages,
    streamed_changes,
    u8,
)

FAST = settings(max_examples=150, deadline=None)

LSN = bytes.fromhex("00000000016B3748")  # 0/16B3748
LSN2 = bytes.fromhex("0000000100000010")  # 1/10
TS = bytes.fromhex("0002B0C5E6A1B2C3")  # microseconds since 2000-01-01
TS_INT = 0x0002B0C5E6A1B2C3
XID = bytes.fromhex("000002F1")  # 753
OID = bytes.fromhex("00004000")  # 16384
ROW = TupleData(b"tnub", (b"42", None, None, b"\x00\x01"))
ROW_WIRE = b"\x00\x04" + b"t\x00\x00\x00\x0242" + b"n" + b"u" + b"b\x00\x00\x00\x02\x00\x01"


# ---------------------------------------------------------------- hand-built messages


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"B" + LSN + TS + XID, Begin(Lsn.parse("0/16B3748"), TS_INT, 753)),
        (b"C\x00" + LSN + LSN2 + TS, Commit(0, Lsn(0x16B3748), Lsn.parse("1/10"), TS_INT)),
        (b"O" + LSN + b"node_a\x00", Origin(Lsn(0x16B3748), "node_a")),
        (b"Y" + OID + b"public\x00mood\x00", Type(16384, "public", "mood")),
        (b"Y" + OID + b"\x00int4\x00", Type(16384, "pg_catalog", "int4")),
        (b"I" + OID + b"N" + ROW_WIRE, Insert(16384, ROW)),
        (b"U" + OID + b"N" + ROW_WIRE, Update(16384, None, None, ROW)),
        (b"U" + OID + b"K" + ROW_WIRE + b"N" + ROW_WIRE, Update(16384, ROW, "K", ROW)),
        (b"U" + OID + b"O" + ROW_WIRE + b"N" + ROW_WIRE, Update(16384, ROW, "O", ROW)),
        (b"D" + OID + b"K" + ROW_WIRE, Delete(16384, ROW, "K")),
        (b"D" + OID + b"O" + ROW_WIRE, Delete(16384, ROW, "O")),
        (
            b"T\x00\x00\x00\x02\x03" + OID + b"\x00\x00\x40\x01",
            Truncate((16384, 16385), True, True),
        ),
        (b"T\x00\x00\x00\x01\x02" + OID, Truncate((16384,), False, True)),
        (b"T\x00\x00\x00\x00\x00", Truncate((), False, False)),
        (
            b"M\x01" + LSN + b"pfx\x00\x00\x00\x00\x03a\x00b",
            Message(True, Lsn(0x16B3748), "pfx", b"a\x00b"),
        ),
        (b"M\x00" + LSN + b"\x00\x00\x00\x00\x00", Message(False, Lsn(0x16B3748), "", b"")),
        (b"S" + XID + b"\x01", StreamStart(753, True)),
        (b"S" + XID + b"\x00", StreamStart(753, False)),
        (b"E", StreamStop()),
        (
            b"c" + XID + b"\x00" + LSN + LSN2 + TS,
            StreamCommit(753, 0, Lsn(0x16B3748), Lsn.parse("1/10"), TS_INT),
        ),
        (b"A" + XID + b"\x00\x00\x02\xf2", StreamAbort(753, 754)),
        (b"A" + XID + XID + LSN + TS, StreamAbort(753, 753, Lsn(0x16B3748), TS_INT)),
    ],
)
def test_documented_layouts(wire: bytes, expected: PgOutputMessage) -> None:
    assert decode_message(wire) == expected
    assert decode_message(memoryview(wire)) == expected
    assert decode_message(bytearray(wire)) == expected


def test_relation_layout() -> None:
    wire = (
        b"R" + OID + b"public\x00orders\x00" + b"d" + b"\x00\x02"
        + b"\x01id\x00" + b"\x00\x00\x00\x14" + b"\xff\xff\xff\xff"  # int8, typmod -1
        + b"\x00note\x00" + b"\x00\x00\x04\x13" + b"\x00\x00\x00\x68"  # varchar(100)
    )  # fmt: skip
    rel = decode_message(wire)
    assert rel == Relation(
        16384,
        "public",
        "orders",
        "d",
        (Column(1, "id", 20, -1), Column(0, "note", 1043, 104)),
    )
    assert isinstance(rel, Relation)
    assert rel.column_names == ("id", "note")
    assert [c.name for c in rel.key_columns] == ["id"]
    assert decode_message(b"R" + OID + b"\x00pg_class\x00n\x00\x00") == Relation(
        16384, "pg_catalog", "pg_class", "n", ()
    )


def test_streamed_changes_carry_xid() -> None:
    assert decode_message(b"I" + XID + OID + b"N" + ROW_WIRE, in_stream=True) == Insert(
        16384, ROW, 753
    )
    assert decode_message(b"D" + XID + OID + b"K" + ROW_WIRE, in_stream=True) == Delete(
        16384, ROW, "K", 753
    )
    truncate = b"T" + XID + b"\x00\x00\x00\x01\x01" + OID
    assert decode_message(truncate, in_stream=True) == Truncate((16384,), True, False, 753)
    message = b"M" + XID + b"\x01" + LSN + b"p\x00\x00\x00\x00\x00"
    assert decode_message(message, in_stream=True) == Message(True, Lsn(0x16B3748), "p", b"", 753)
    # stream control messages have their own xid and are unaffected by in_stream
    assert decode_message(b"S" + XID + b"\x01", in_stream=True) == StreamStart(753, True)
    assert decode_message(b"O" + LSN + b"x\x00", in_stream=True) == Origin(Lsn(0x16B3748), "x")


def test_row_values_are_bytes_even_from_memoryview() -> None:
    msg = decode_message(memoryview(b"xxI" + OID + b"N" + ROW_WIRE)[2:])
    assert isinstance(msg, Insert)
    assert all(type(v) is bytes for v in msg.new.values if v is not None)


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("wire", "tag", "offset", "fragment"),
    [
        (b"", "?", 0, "empty"),
        (b"Z", "Z", 0, "unknown message type"),
        (b"b" + LSN, "b", 0, "two-phase"),
        (b"B" + LSN, "B", 1, "truncated"),
        (b"B" + LSN + TS + XID + b"\x00", "B", 21, "trailing"),
        (b"I" + OID + b"X" + ROW_WIRE, "I", 5, "expected 'N'"),
        (b"I" + OID + b"N\x00\x01x", "I", 8, "unknown tuple data kind"),
        (b"I" + OID + b"N\x00\x02n", "I", 9, "truncated"),
        (b"I" + OID + b"N\x00\x01t\x00\x00\x00\x09abc", "I", 13, "a tuple value of 9 bytes"),
        (b"I" + OID + b"N\x00\x02t\x00\x00\x00\x09abcn", "I", 13, "a tuple value of 9 bytes"),
        (b"I" + OID + b"N\x00\x01t\x00\x00", "I", 8, "tuple column 0"),
        (b"U" + OID + b"K" + ROW_WIRE, "U", len(ROW_WIRE) + 6, "new tuple marker"),
        (b"U" + OID + b"K" + ROW_WIRE + b"K" + ROW_WIRE, "U", len(ROW_WIRE) + 6, "expected"),
        (b"D" + OID + b"N" + ROW_WIRE, "D", 5, "expected 'K' or 'O'"),
        (b"Y" + OID + b"public", "Y", 5, "NUL-terminated"),
        (b"Y" + OID + b"pub\xfflic\x00t\x00", "Y", 8, "UTF-8"),
        (b"R" + OID + b"s\x00t\x00x\x00\x00", "R", 9, "replica identity"),
        (b"T\x00\x00\x00\x02\x00" + OID, "T", 6, "truncated"),
        (b"T\x00\x00\x00\x01\x00" + OID + b"\x00", "T", 10, "trailing"),
        (b"M\x01" + LSN + b"p\x00\x00\x00\x00\x05abc", "M", 16, "truncated"),
        (b"A" + XID + XID + LSN, "A", 9, "truncated"),
        (b"E\x00", "E", 1, "trailing"),
    ],
)
def test_malformed_messages(wire: bytes, tag: str, offset: int, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(wire)
    assert info.value.tag == tag
    assert info.value.offset == offset
    assert fragment in info.value.message


def test_streamed_xid_truncated() -> None:
    with pytest.raises(ProtocolError, match="xid"):
        decode_message(b"I\x00\x00", in_stream=True)


# ---------------------------------------------------------------- stateful decoder


def test_decoder_tracks_stream_blocks() -> None:
    dec = PgOutputDecoder()
    assert decode_sequence(dec, b"B" + LSN + TS + XID, b"I" + OID + b"N" + ROW_WIRE) == [
        Begin(Lsn(0x16B3748), TS_INT, 753),
        Insert(16384, ROW),
    ]
    assert dec.decode(b"C\x00" + LSN + LSN2 + TS) == Commit(
        0, Lsn(0x16B3748), Lsn(1 << 32 | 16), TS_INT
    )
    assert dec.decode(b"S" + XID + b"\x01") == StreamStart(753, True)
    assert dec.in_stream
    assert dec.decode(b"I" + XID + OID + b"N" + ROW_WIRE) == Insert(16384, ROW, 753)
    assert dec.decode(b"E") == StreamStop()
    assert not dec.in_stream
    assert dec.decode(memoryview(b"A" + XID + XID)) == StreamAbort(753, 753)


@pytest.mark.parametrize(
    ("prelude", "wire", "fragment"),
    [
        ([], b"E", "outside a streamed block"),
        ([b"S" + XID + b"\x01"], b"S" + XID + b"\x00", "inside a streamed block"),
        ([b"S" + XID + b"\x01"], b"B" + LSN + TS + XID, "inside a streamed block"),
        ([b"S" + XID + b"\x01"], b"c" + XID + b"\x00" + LSN + LSN2 + TS, "inside"),
    ],
)
def test_decoder_rejects_misplaced_messages(
    prelude: list[bytes], wire: bytes, fragment: str
) -> None:
    dec = PgOutputDecoder()
    decode_sequence(dec, *prelude)
    state = dec.in_stream
    with pytest.raises(ProtocolError, match=fragment):
        dec.decode(wire)
    assert dec.in_stream == state  # a refused message leaves the state alone
    dec.reset()
    assert not dec.in_stream


def test_failed_stream_start_keeps_state() -> None:
    dec = PgOutputDecoder()
    with pytest.raises(ProtocolError):
        dec.decode(b"S\x00")
    assert not dec.in_stream
    with pytest.raises(ProtocolError, match="empty"):
        dec.decode(b"")


def decode_sequence(dec: PgOutputDecoder, *wires: bytes) -> list[PgOutputMessage]:
    return [dec.decode(w) for w in wires]


# ---------------------------------------------------------------- TupleData and helpers


def test_tuple_data_helpers() -> None:
    row = TupleData(b"tntu", (b"caf\xc3\xa9", None, b"", None))
    assert len(row) == 4
    assert [row.text(i) for i in range(4)] == ["café", None, "", None]
    assert row.as_text_list() == ["café", None, "", None]
    assert row.is_null(1) and not row.is_null(3)
    assert row.is_unchanged_toast(3) and not row.is_unchanged_toast(1)
    assert row.has_unchanged_toast()
    assert not TupleData(b"t", (b"x",)).has_unchanged_toast()
    with pytest.raises(ValueError, match="binary"):
        ROW.text(3)
    with pytest.raises(ValueError, match="column 3 is in binary"):
        ROW.as_text_list()
    assert ROW.text(0) == "42"


def test_tuple_data_value_semantics() -> None:
    same = TupleData(b"tnub", (b"42", None, None, b"\x00\x01"))
    assert same == ROW and hash(same) == hash(ROW)
    assert TupleData(b"tnut", (b"42", None, None, b"\x00\x01")) != ROW
    assert ROW != ("tnub",)
    assert pickle.loads(pickle.dumps(ROW)) == ROW
    assert "kinds=b'tnub'" in repr(ROW)
    with pytest.raises(AttributeError):
        ROW.kinds = b""
    with pytest.raises(AttributeError):
        del ROW.values


@pytest.mark.parametrize(
    ("kinds", "values"),
    [(b"tt", (b"a",)), (b"t", (None,)), (b"n", (b"a",)), (b"x", (None,))],
)
def test_tuple_data_validates(kinds: bytes, values: tuple[bytes | None, ...]) -> None:
    with pytest.raises(ValueError):
        TupleData(kinds, values)


def test_pg_timestamp_to_datetime() -> None:
    assert pg_timestamp_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp_to_datetime(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert pg_timestamp_to_datetime(86_400_000_001) == datetime(2000, 1, 2, 0, 0, 0, 1, tzinfo=UTC)


def test_encoder_matches_hand_built_bytes() -> None:
    assert encode_tuple(ROW) == ROW_WIRE
    assert encode(Insert(16384, ROW, 753)) == b"I" + XID + OID + b"N" + ROW_WIRE


# ---------------------------------------------------------------- properties


@FAST
@given(plain_messages)
def test_round_trip_outside_stream(msg: PgOutputMessage) -> None:
    assert decode_message(encode(msg)) == msg


@FAST
@given(streamed_changes)
def test_round_trip_streamed_changes(msg: PgOutputMessage) -> None:
    assert decode_message(encode(msg), in_stream=True) == msg


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("txn"), st.lists(change_messages(st.none()), max_size=4)),
            st.tuples(st.just("stream"), st.lists(streamed_changes, max_size=4)),
        ),
        max_size=5,
    )
)
def test_decoder_round_trips_mixed_session(blocks: list[tuple[str, list[PgOutputMessage]]]) -> None:
    session: list[PgOutputMessage] = []
    for kind, changes in blocks:
        if kind == "txn":
            session += [Begin(Lsn(10), 1, 7), *changes, Commit(0, Lsn(10), Lsn(11), 2)]
        else:
            session += [
                StreamStart(9, True),
                *changes,
                StreamStop(),
                StreamCommit(9, 0, Lsn(5), Lsn(6), 3),
            ]
    dec = PgOutputDecoder()
    assert [dec.decode(encode(m)) for m in session] == session
    assert not dec.in_stream


def _decode_or_protocol_error(wire: bytes | memoryview, in_stream: bool) -> None:
    try:
        decode_message(wire, in_stream=in_stream)
    except ProtocolError as exc:
        assert exc.tag and exc.offset >= 0


tags = st.sampled_from(list(b"BCORYIUDTMSEcAbPKrpZ"))


@FAST
@given(
    st.one_of(
        st.binary(max_size=48),
        st.tuples(tags, st.binary(max_size=48)).map(lambda t: bytes([t[0]]) + t[1]),
    ),
    st.booleans(),
)
def test_fuzz_random_bytes_only_raise_protocol_error(wire: bytes, in_stream: bool) -> None:
    _decode_or_protocol_error(wire, in_stream)
    _decode_or_protocol_error(memoryview(wire), in_stream)


@FAST
@given(
    st.one_of(plain_messages.map(lambda m: (m, False)), streamed_changes.map(lambda m: (m, True)))
)
def test_fuzz_truncated_and_extended_messages(case: tuple[PgOutputMessage, bool]) -> None:
    msg, in_stream = case
    wire = encode(msg)
    for cut in range(len(wire)):
        if isinstance(msg, StreamAbort) and cut == 9:
            continue  # the protocol 2-3 abort is a prefix of the protocol 4 one
        with pytest.raises(ProtocolError):
            decode_message(wire[:cut], in_stream=in_stream)
    with pytest.raises(ProtocolError):
        decode_message(wire + b"\x00", in_stream=in_stream)


@FAST
@given(
    plain_messages,
    st.lists(st.tuples(st.integers(0, 1000), u8), min_size=1, max_size=4),
    st.booleans(),
)
def test_fuzz_mutated_messages(
    msg: PgOutputMessage, flips: list[tuple[int, int]], in_stream: bool
) -> None:
    wire = bytearray(encode(msg))
    for position, byte in flips:
        wire[position % len(wire)] = byte
    _decode_or_protocol_error(bytes(wire), in_stream)


@FAST
@given(st.lists(st.one_of(plain_messages.map(encode), st.binary(max_size=20)), max_size=12))
def test_fuzz_stateful_decoder(wires: list[bytes]) -> None:
    dec = PgOutputDecoder()
    for wire in wires:
        with contextlib.suppress(ProtocolError):
            dec.decode(wire)


def test_struct_sizes_match_documentation() -> None:
    assert len(encode(Begin(Lsn(1), 2, 3))) == 1 + 8 + 8 + 4
    assert len(encode(Commit(0, Lsn(1), Lsn(2), 3))) == 1 + 1 + 8 + 8 + 8
    assert len(encode(StreamCommit(1, 0, Lsn(1), Lsn(2), 3))) == 1 + 4 + 1 + 8 + 8 + 8
