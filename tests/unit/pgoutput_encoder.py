"""Test-only encoder: turns `pgmigrator.events` values back into pgoutput / walsender wire bytes.

It mirrors PostgreSQL's ``proto.c`` writers so that property tests can round-trip random
messages through the decoder. Change messages are written with their xid prefix exactly when
``msg.xid`` is not ``None`` (as the server does inside a streamed block). The hypothesis
strategies at the end generate such messages.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

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
)
from pgmigrator.lsn import Lsn


def cstring(text: str) -> bytes:
    """A NUL-terminated UTF-8 string."""
    return text.encode() + b"\0"


def namespace(name: str) -> bytes:
    """The server writes an empty string for pg_catalog."""
    return cstring("" if name == "pg_catalog" else name)


def encode_tuple(data: TupleData) -> bytes:
    """TupleData: Int16 column count, then kind [+ Int32 length + bytes] per column."""
    out = bytearray(struct.pack("!H", len(data.kinds)))
    for kind, value in zip(data.kinds, data.values, strict=True):
        out.append(kind)
        if value is not None:
            out += struct.pack("!I", len(value)) + value
    return bytes(out)


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def _encode_relation(msg: Relation) -> bytes:
    out = bytearray(b"R" + _xid(msg.xid) + struct.pack("!I", msg.oid))
    out += namespace(msg.namespace) + cstring(msg.name)
    out += msg.replica_identity.encode() + struct.pack("!H", len(msg.columns))
    for col in msg.columns:
        out += struct.pack("!B", col.flags) + cstring(col.name)
        out += struct.pack("!Ii", col.type_oid, col.type_modifier)
    return bytes(out)


def _encode_update(msg: Update) -> bytes:
    out = b"U" + _xid(msg.xid) + struct.pack("!I", msg.relation_oid)
    if msg.old is not None:
        assert msg.old_kind is not None
        out += msg.old_kind.encode() + encode_tuple(msg.old)
    return out + b"N" + encode_tuple(msg.new)


def _encode_stream_abort(msg: StreamAbort) -> bytes:
    out = b"A" + struct.pack("!II", msg.xid, msg.subxid)
    if msg.abort_lsn is not None:
        assert msg.abort_time is not None
        out += struct.pack("!Qq", msg.abort_lsn, msg.abort_time)
    return out


def encode(msg: PgOutputMessage) -> bytes:
    """Encode any decoded message back to its wire form."""
    match msg:
        case Begin():
            return b"B" + struct.pack("!QqI", msg.final_lsn, msg.commit_time, msg.xid)
        case Commit():
            return b"C" + struct.pack(
                "!BQQq", msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_time
            )
        case Origin():
            return b"O" + struct.pack("!Q", msg.lsn) + cstring(msg.name)
        case Relation():
            return _encode_relation(msg)
        case Type():
            return (
                b"Y"
                + _xid(msg.xid)
                + struct.pack("!I", msg.oid)
                + namespace(msg.namespace)
                + cstring(msg.name)
            )
        case Insert():
            return (
                b"I"
                + _xid(msg.xid)
                + struct.pack("!I", msg.relation_oid)
                + b"N"
                + encode_tuple(msg.new)
            )
        case Update():
            return _encode_update(msg)
        case Delete():
            return (
                b"D"
                + _xid(msg.xid)
                + struct.pack("!I", msg.relation_oid)
                + msg.old_kind.encode()
                + encode_tuple(msg.old)
            )
        case Truncate():
            flags = (1 if msg.cascade else 0) | (2 if msg.restart_identity else 0)
            oids = msg.relation_oids
            return b"T" + _xid(msg.xid) + struct.pack(f"!IB{len(oids)}I", len(oids), flags, *oids)
        case Message():
            return (
                b"M"
                + _xid(msg.xid)
                + struct.pack("!BQ", 1 if msg.transactional else 0, msg.lsn)
                + cstring(msg.prefix)
                + struct.pack("!I", len(msg.content))
                + msg.content
            )
        case StreamStart():
            return b"S" + struct.pack("!IB", msg.xid, 1 if msg.first_segment else 0)
        case StreamStop():
            return b"E"
        case StreamCommit():
            return b"c" + struct.pack(
                "!IBQQq", msg.xid, msg.flags, msg.commit_lsn, msg.end_lsn, msg.commit_time
            )
        case StreamAbort():
            return _encode_stream_abort(msg)
    raise TypeError(f"cannot encode {msg!r}")


def encode_xlog_data(wal_start: int, wal_end: int, send_time: int, payload: bytes) -> bytes:
    """XLogData CopyData payload ('w')."""
    return b"w" + struct.pack("!QQq", wal_start, wal_end, send_time) + payload


def encode_keepalive(wal_end: int, send_time: int, reply_requested: bool) -> bytes:
    """Primary keepalive CopyData payload ('k')."""
    return b"k" + struct.pack("!Qq?", wal_end, send_time, reply_requested)


# ---------------------------------------------------------------- hypothesis strategies

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
lsns = st.integers(0, 2**64 - 1).map(Lsn)
names = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=12)
namespaces = st.text(  # never empty: the empty namespace means pg_catalog on the wire
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=12
)
values = st.binary(max_size=24)
cells = st.one_of(
    st.tuples(st.just(ord("n")), st.none()),
    st.tuples(st.just(ord("u")), st.none()),
    st.tuples(st.just(ord("t")), values),
    st.tuples(st.just(ord("b")), values),
)
rows = st.lists(cells, max_size=10).map(
    lambda cs: TupleData(bytes(k for k, _ in cs), tuple(v for _, v in cs))
)
old_kinds = st.sampled_from(["K", "O"])


def change_messages(xids: st.SearchStrategy[int | None]) -> st.SearchStrategy[PgOutputMessage]:
    """Messages that carry an xid inside a streamed block; ``xids`` is none() or u32."""
    columns = st.lists(st.builds(Column, u8, names, u32, i32), max_size=5).map(tuple)
    oid_lists = st.lists(u32, max_size=5).map(tuple)
    identities = st.sampled_from("dnfi")
    return st.one_of(
        st.builds(Insert, u32, rows, xids),
        st.builds(Update, u32, st.none(), st.none(), rows, xids),
        st.builds(Update, u32, rows, old_kinds, rows, xids),
        st.builds(Delete, u32, rows, old_kinds, xids),
        st.builds(Truncate, oid_lists, st.booleans(), st.booleans(), xids),
        st.builds(Relation, u32, namespaces, names, identities, columns, xids),
        st.builds(Type, u32, namespaces, names, xids),
        st.builds(Message, st.booleans(), lsns, names, st.binary(max_size=40), xids),
    )


control_messages = st.one_of(
    st.builds(Begin, lsns, i64, u32),
    st.builds(Commit, u8, lsns, lsns, i64),
    st.builds(Origin, lsns, names),
    st.builds(StreamStart, u32, st.booleans()),
    st.just(StreamStop()),
    st.builds(StreamCommit, u32, u8, lsns, lsns, i64),
    st.builds(StreamAbort, u32, u32),
    st.builds(StreamAbort, u32, u32, lsns, i64),
)
plain_messages = st.one_of(change_messages(st.none()), control_messages)
streamed_changes = change_messages(u32)
