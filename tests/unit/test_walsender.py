"""Unit tests for the walsender CopyData framing (XLogData, keepalive, standby status update)."""

from __future__ import annotations

import struct
import time
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.errors import ProtocolError
from pgmigrator.events import PG_EPOCH_UNIX_US, Insert, TupleData
from pgmigrator.lsn import Lsn
from pgmigrator.protocol import (
    PgOutputDecoder,
    PrimaryKeepalive,
    XLogData,
    build_standby_status_update,
    now_pg_us,
    parse_copy_data,
)

from .pgoutput_encoder import encode, encode_keepalive, encode_xlog_data

FAST = settings(max_examples=150, deadline=None)

START = bytes.fromhex("00000000016B3748")  # 0/16B3748
END = bytes.fromhex("0000000100000010")  # 1/10
SENT = bytes.fromhex("0002B0C5E6A1B2C3")


def test_xlog_data_layout() -> None:
    frame = b"w" + START + END + SENT + b"payload"
    msg = parse_copy_data(frame)
    assert isinstance(msg, XLogData)
    assert msg.wal_start == Lsn.parse("0/16B3748") and isinstance(msg.wal_start, Lsn)
    assert str(msg.wal_end) == "1/10"
    assert msg.send_time == 0x0002B0C5E6A1B2C3
    assert msg.data.tobytes() == b"payload"
    assert msg.data.obj is frame  # a view into the received buffer, not a copy


def test_xlog_data_from_memoryview_and_bytearray() -> None:
    frame = bytearray(b"w" + START + END + SENT + b"xy")
    for buf in (frame, memoryview(frame), memoryview(b"--" + bytes(frame))[2:]):
        msg = parse_copy_data(buf)
        assert isinstance(msg, XLogData)
        assert msg.data.tobytes() == b"xy"
    empty = parse_copy_data(b"w" + START + END + SENT)
    assert isinstance(empty, XLogData) and len(empty.data) == 0


def test_exotic_memoryviews_are_flattened() -> None:
    frame = b"k" + END + SENT + b"\x01"
    signed = memoryview(frame).cast("b")
    assert parse_copy_data(signed) == PrimaryKeepalive(Lsn.parse("1/10"), 0x0002B0C5E6A1B2C3, True)
    strided = memoryview(b"".join(bytes([b, 0]) for b in frame))[::2]
    assert parse_copy_data(strided) == parse_copy_data(frame)
    words = array("H", b"w" + START + END + SENT + b"x")  # 26 bytes -> 13 unsigned shorts
    msg = parse_copy_data(memoryview(words))
    assert isinstance(msg, XLogData) and msg.data.tobytes() == b"x"


@pytest.mark.parametrize(("flag", "expected"), [(b"\x00", False), (b"\x01", True)])
def test_keepalive_layout(flag: bytes, expected: bool) -> None:
    msg = parse_copy_data(b"k" + END + SENT + flag)
    assert msg == PrimaryKeepalive(Lsn(0x1_0000_0010), 0x0002B0C5E6A1B2C3, expected)


@pytest.mark.parametrize(
    ("frame", "tag", "fragment"),
    [
        (b"", "?", "empty"),
        (b"x123", "x", "unknown replication message type"),
        (b"w" + START + END, "w", "truncated XLogData"),
        (b"k" + END + SENT, "k", "keepalive must be 18 bytes"),
        (b"k" + END + SENT + b"\x01\x00", "k", "keepalive must be 18 bytes"),
    ],
)
def test_malformed_copy_data(frame: bytes, tag: str, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment) as info:
        parse_copy_data(frame)
    assert info.value.tag == tag


def test_standby_status_update_layout() -> None:
    wire = build_standby_status_update(
        0x16B3748, 0x16B3700, 0x1_0000_0000, client_time=12345, reply_requested=True
    )
    assert wire == (
        b"r"
        + bytes.fromhex("00000000016B3748")
        + bytes.fromhex("00000000016B3700")
        + bytes.fromhex("0000000100000000")
        + bytes.fromhex("0000000000003039")
        + b"\x01"
    )
    assert len(wire) == 1 + 4 * 8 + 1


def test_standby_status_update_defaults() -> None:
    before = now_pg_us()
    wire = build_standby_status_update(Lsn(3), Lsn(2), Lsn(1))
    after = now_pg_us()
    _tag, write, flush, apply, client_time, reply = struct.unpack("!cQQQq?", wire)
    assert (write, flush, apply, reply) == (3, 2, 1, False)
    assert before <= client_time <= after


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_standby_status_update_rejects_bad_lsn(bad: int) -> None:
    with pytest.raises(ValueError, match="flush LSN out of range"):
        build_standby_status_update(0, bad, 0)


def test_now_pg_us() -> None:
    expected = int(time.time() * 1_000_000) - PG_EPOCH_UNIX_US
    assert abs(now_pg_us() - expected) < 5_000_000
    assert now_pg_us() > 24 * 365 * 86_400 * 1_000_000  # we are well past 2024


def test_xlog_data_payload_feeds_the_decoder() -> None:
    insert = Insert(16384, TupleData(b"tn", (b"1", None)))
    frame = encode_xlog_data(10, 20, 30, encode(insert))
    msg = parse_copy_data(frame)
    assert isinstance(msg, XLogData)
    assert PgOutputDecoder().decode(msg.data) == insert


lsns = st.integers(0, 2**64 - 1)
times = st.integers(-(2**63), 2**63 - 1)


@FAST
@given(lsns, lsns, times, st.binary(max_size=64))
def test_xlog_data_round_trip(start: int, end: int, sent: int, payload: bytes) -> None:
    msg = parse_copy_data(encode_xlog_data(start, end, sent, payload))
    assert msg == XLogData(Lsn(start), Lsn(end), sent, memoryview(payload))


@FAST
@given(lsns, times, st.booleans())
def test_keepalive_round_trip(end: int, sent: int, reply: bool) -> None:
    assert parse_copy_data(encode_keepalive(end, sent, reply)) == PrimaryKeepalive(
        Lsn(end), sent, reply
    )


@FAST
@given(lsns, lsns, lsns, times, st.booleans())
def test_status_update_round_trip(w: int, f: int, a: int, t: int, reply: bool) -> None:
    wire = build_standby_status_update(w, f, a, client_time=t, reply_requested=reply)
    assert struct.unpack("!cQQQq?", wire) == (b"r", w, f, a, t, reply)


@FAST
@given(
    st.one_of(
        st.binary(max_size=40),
        st.tuples(st.sampled_from([b"w", b"k"]), st.binary(max_size=40)).map(b"".join),
    )
)
def test_fuzz_only_protocol_errors(frame: bytes) -> None:
    try:
        msg = parse_copy_data(frame)
    except ProtocolError:
        return
    assert isinstance(msg, XLogData | PrimaryKeepalive)
