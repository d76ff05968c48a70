"""Decoder for the pgoutput logical replication message format (protocol versions 1 to 4).

Input is the payload of one XLogData message (see `pgmigrator.protocol.walsender`); output is one
of the immutable values in `pgmigrator.events`. The layouts follow PostgreSQL's "Logical
Replication Message Formats" and ``src/backend/replication/logical/proto.c``: big-endian integers,
NUL-terminated UTF-8 strings, and inside a streamed transaction block (between 'S' and 'E') an
Int32 xid right after the tag of every change message (I, U, D, T, R, Y, M).

Decoding is strict: truncated data, trailing bytes, unknown tags or tuple kinds and invalid UTF-8
all raise `ProtocolError` carrying the byte offset and the message tag, never a lower-level error.
Two-phase commit messages (protocol version 3 with ``two_phase``) are refused.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pgmigrator.errors import ProtocolError
from pgmigrator.events import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    OldKind,
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
from pgmigrator.protocol._accel import accelerate

__all__ = [
    "PgOutputDecoder",
    "begin_fields",
    "commit_fields",
    "decode_message",
    "decode_row_change",
]

_U8 = struct.Struct("!B")
_U32 = struct.Struct("!I")
_U16_UNPACK = struct.Struct("!H").unpack_from
_U32_UNPACK = _U32.unpack_from
_OID_ACTION = struct.Struct("!IB")  # relation oid, then 'N', 'K' or 'O'
_OID_ACTION_UNPACK = _OID_ACTION.unpack_from
_BEGIN = struct.Struct("!QqI")  # final lsn, commit time, xid
_COMMIT = struct.Struct("!BQQq")  # flags, commit lsn, end lsn, commit time
_LSN = struct.Struct("!Q")
_REL_TAIL = struct.Struct("!BH")  # replica identity, number of columns
_COLUMN_TAIL = struct.Struct("!Ii")  # type oid, type modifier
_TRUNCATE = struct.Struct("!IB")  # number of relations, options
_MESSAGE = struct.Struct("!BQ")  # flags, lsn
_STREAM_START = struct.Struct("!IB")  # xid, first segment
_STREAM_COMMIT = struct.Struct("!IBQQq")  # xid, flags, commit lsn, end lsn, commit time
_STREAM_ABORT = struct.Struct("!II")  # xid, subxid
_ABORT_INFO = struct.Struct("!Qq")  # abort lsn, abort time (protocol 4, parallel streaming)

_N, _K, _O = 0x4E, 0x4B, 0x4F  # 'N', 'K', 'O'
_REPLICA_IDENTITIES = frozenset("dnfi")
_TWO_PHASE_TAGS = frozenset(b"bPKrp")

_new_tuple_data = TupleData.unchecked
_Decoder = Callable[[bytes, int, int | None], PgOutputMessage]


_int_new = int.__new__  # _int_new(Lsn, v): an `Lsn` without its range check (UInt64 always fits)


def _truncated(what: str, offset: int, tag: str) -> ProtocolError:
    return ProtocolError(f"truncated message: {what} runs past the end", offset=offset, tag=tag)


def _fixed(st: struct.Struct, buf: bytes, pos: int, tag: str, what: str) -> tuple[Any, ...]:
    """Unpack fixed-size fields at ``pos`` after checking that they are all there."""
    if pos + st.size > len(buf):
        raise _truncated(what, pos, tag)
    return st.unpack_from(buf, pos)


def _cstring(buf: bytes, pos: int, tag: str, what: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string; return it and the offset after the NUL."""
    nul = buf.find(0, pos)
    if nul < 0:
        raise ProtocolError(f"{what}: string is not NUL-terminated", offset=pos, tag=tag)
    try:
        return buf[pos:nul].decode(), nul + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what}: invalid UTF-8", offset=pos + exc.start, tag=tag) from None


def _check_end(buf: bytes, pos: int, tag: str) -> None:
    if pos != len(buf):
        raise ProtocolError(f"{len(buf) - pos} unexpected trailing bytes", offset=pos, tag=tag)


def _read_tuple(buf: bytes, pos: int, tag: str) -> tuple[TupleData, int]:
    """Read TupleData at ``pos``: Int16 column count, then per column a kind and maybe a value.

    This is the hot path. Instead of checking bounds before every read it lets indexing and
    unpacking fail (caught below) and checks once at the end that no value ran past the buffer:
    offsets only grow, so an overrun anywhere leaves ``pos`` beyond the end.
    """
    if pos + 2 > len(buf):
        raise _truncated("tuple column count", pos, tag)
    (ncols,) = _U16_UNPACK(buf, pos)
    pos += 2
    kinds = bytearray(ncols)
    values: list[bytes | None] = [None] * ncols
    i = start = 0
    try:
        for i in range(ncols):
            kind = buf[pos]
            kinds[i] = kind
            if kind in (0x74, 0x62):  # 't', 'b': Int32 length, then the value
                (size,) = _U32_UNPACK(buf, pos + 1)
                start = pos + 5
                pos = start + size
                values[i] = buf[start:pos]
            elif kind in (0x6E, 0x75):  # 'n', 'u': NULL, unchanged TOAST
                pos += 1
            else:
                raise ProtocolError(
                    f"column {i}: unknown tuple data kind {kind:#04x}", offset=pos, tag=tag
                )
    except (IndexError, struct.error):
        if pos <= len(buf):  # the kind or the length of column i is cut off
            raise _truncated(f"tuple column {i}", pos, tag) from None
    if pos > len(buf):  # the last value read (starting at `start`) overran the buffer
        raise _truncated(f"a tuple value of {pos - start} bytes", start, tag)
    return _new_tuple_data(bytes(kinds), tuple(values)), pos


def _decode_insert(buf: bytes, pos: int, xid: int | None) -> Insert:
    # The most frequent message: checks are inlined rather than done by _fixed and _check_end.
    if pos + 5 > len(buf):
        raise _truncated("relation oid", pos, "I")
    oid, action = _OID_ACTION_UNPACK(buf, pos)
    if action != _N:
        raise ProtocolError(
            f"expected 'N' before the new tuple, got {action:#04x}", offset=pos + 4, tag="I"
        )
    new, pos = _read_tuple(buf, pos + 5, "I")
    if pos != len(buf):
        _check_end(buf, pos, "I")
    return Insert(oid, new, xid)


def _decode_update(buf: bytes, pos: int, xid: int | None) -> Update:
    oid, action = _fixed(_OID_ACTION, buf, pos, "U", "relation oid")
    pos += 5
    old: TupleData | None = None
    old_kind: OldKind | None = None
    if action in (_K, _O):
        old_kind = "K" if action == _K else "O"
        old, pos = _read_tuple(buf, pos, "U")
        if pos >= len(buf):
            raise _truncated("new tuple marker", pos, "U")
        action = buf[pos]
        pos += 1
    if action != _N:
        raise ProtocolError(f"expected 'K', 'O' or 'N', got {action:#04x}", offset=pos - 1, tag="U")
    new, pos = _read_tuple(buf, pos, "U")
    _check_end(buf, pos, "U")
    return Update(oid, old, old_kind, new, xid)


def _decode_delete(buf: bytes, pos: int, xid: int | None) -> Delete:
    oid, action = _fixed(_OID_ACTION, buf, pos, "D", "relation oid")
    if action != _K and action != _O:
        raise ProtocolError(f"expected 'K' or 'O', got {action:#04x}", offset=pos + 4, tag="D")
    old, end = _read_tuple(buf, pos + 5, "D")
    _check_end(buf, end, "D")
    return Delete(oid, old, "K" if action == _K else "O", xid)


def _decode_begin(buf: bytes, pos: int, xid: int | None) -> Begin:
    final_lsn, commit_time, txid = _fixed(_BEGIN, buf, pos, "B", "begin fields")
    _check_end(buf, pos + _BEGIN.size, "B")
    return Begin(_int_new(Lsn, final_lsn), commit_time, txid)


def _decode_commit(buf: bytes, pos: int, xid: int | None) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = _fixed(_COMMIT, buf, pos, "C", "commit fields")
    _check_end(buf, pos + _COMMIT.size, "C")
    return Commit(flags, _int_new(Lsn, commit_lsn), _int_new(Lsn, end_lsn), commit_time)


def _decode_origin(buf: bytes, pos: int, xid: int | None) -> Origin:
    (lsn,) = _fixed(_LSN, buf, pos, "O", "origin lsn")
    name, pos = _cstring(buf, pos + 8, "O", "origin name")
    _check_end(buf, pos, "O")
    return Origin(_int_new(Lsn, lsn), name)


def _decode_relation(buf: bytes, pos: int, xid: int | None) -> Relation:
    (oid,) = _fixed(_U32, buf, pos, "R", "relation oid")
    namespace, pos = _cstring(buf, pos + 4, "R", "namespace")
    name, pos = _cstring(buf, pos, "R", "relation name")
    identity, ncols = _fixed(_REL_TAIL, buf, pos, "R", "replica identity")
    replica_identity = chr(identity)
    if replica_identity not in _REPLICA_IDENTITIES:
        raise ProtocolError(f"unknown replica identity {identity:#04x}", offset=pos, tag="R")
    pos += _REL_TAIL.size
    columns = []
    for i in range(ncols):
        (flags,) = _fixed(_U8, buf, pos, "R", f"column {i} flags")
        column_name, pos = _cstring(buf, pos + 1, "R", f"column {i} name")
        type_oid, type_modifier = _fixed(_COLUMN_TAIL, buf, pos, "R", f"column {i} type")
        pos += _COLUMN_TAIL.size
        columns.append(Column(flags, column_name, type_oid, type_modifier))
    _check_end(buf, pos, "R")
    return Relation(oid, namespace or "pg_catalog", name, replica_identity, tuple(columns), xid)


def _decode_type(buf: bytes, pos: int, xid: int | None) -> Type:
    (oid,) = _fixed(_U32, buf, pos, "Y", "type oid")
    namespace, pos = _cstring(buf, pos + 4, "Y", "namespace")
    name, pos = _cstring(buf, pos, "Y", "type name")
    _check_end(buf, pos, "Y")
    return Type(oid, namespace or "pg_catalog", name, xid)


def _decode_truncate(buf: bytes, pos: int, xid: int | None) -> Truncate:
    count, options = _fixed(_TRUNCATE, buf, pos, "T", "truncate header")
    pos += _TRUNCATE.size
    if pos + 4 * count != len(buf):
        what = f"{count} relation oids"
        if pos + 4 * count > len(buf):
            raise _truncated(what, pos, "T")
        raise ProtocolError(f"trailing bytes after {what}", offset=pos + 4 * count, tag="T")
    oids: tuple[int, ...] = struct.unpack_from(f"!{count}I", buf, pos)
    return Truncate(oids, bool(options & 1), bool(options & 2), xid)


def _decode_message(buf: bytes, pos: int, xid: int | None) -> Message:
    flags, lsn = _fixed(_MESSAGE, buf, pos, "M", "message header")
    prefix, pos = _cstring(buf, pos + _MESSAGE.size, "M", "message prefix")
    (size,) = _fixed(_U32, buf, pos, "M", "content length")
    pos += 4
    if pos + size > len(buf):
        raise _truncated(f"{size} bytes of content", pos, "M")
    _check_end(buf, pos + size, "M")
    return Message(bool(flags & 1), _int_new(Lsn, lsn), prefix, buf[pos : pos + size], xid)


def _decode_stream_start(buf: bytes, pos: int, xid: int | None) -> StreamStart:
    txid, first = _fixed(_STREAM_START, buf, pos, "S", "stream start fields")
    _check_end(buf, pos + _STREAM_START.size, "S")
    return StreamStart(txid, first == 1)


def _decode_stream_stop(buf: bytes, pos: int, xid: int | None) -> StreamStop:
    _check_end(buf, pos, "E")
    return StreamStop()


def _decode_stream_commit(buf: bytes, pos: int, xid: int | None) -> StreamCommit:
    fields = _fixed(_STREAM_COMMIT, buf, pos, "c", "stream commit fields")
    txid, flags, commit_lsn, end_lsn, commit_time = fields
    _check_end(buf, pos + _STREAM_COMMIT.size, "c")
    return StreamCommit(txid, flags, _int_new(Lsn, commit_lsn), _int_new(Lsn, end_lsn), commit_time)


def _decode_stream_abort(buf: bytes, pos: int, xid: int | None) -> StreamAbort:
    txid, subxid = _fixed(_STREAM_ABORT, buf, pos, "A", "stream abort xids")
    pos += _STREAM_ABORT.size
    if pos == len(buf):  # protocol 2-3, or 4 without parallel streaming
        return StreamAbort(txid, subxid)
    abort_lsn, abort_time = _fixed(_ABORT_INFO, buf, pos, "A", "abort lsn and time")
    _check_end(buf, pos + _ABORT_INFO.size, "A")
    return StreamAbort(txid, subxid, _int_new(Lsn, abort_lsn), abort_time)


# tag byte -> (decoder, whether an Int32 xid follows the tag inside a streamed block)
_DISPATCH: dict[int, tuple[_Decoder, bool]] = {
    ord("I"): (_decode_insert, True),
    ord("U"): (_decode_update, True),
    ord("D"): (_decode_delete, True),
    ord("B"): (_decode_begin, False),
    ord("C"): (_decode_commit, False),
    ord("O"): (_decode_origin, False),
    ord("R"): (_decode_relation, True),
    ord("Y"): (_decode_type, True),
    ord("T"): (_decode_truncate, True),
    ord("M"): (_decode_message, True),
    ord("S"): (_decode_stream_start, False),
    ord("E"): (_decode_stream_stop, False),
    ord("c"): (_decode_stream_commit, False),
    ord("A"): (_decode_stream_abort, False),
}


def _unknown_tag(tag: int) -> ProtocolError:
    if tag in _TWO_PHASE_TAGS:
        return ProtocolError(
            "two-phase commit messages are not supported (use a slot without two_phase)",
            offset=0,
            tag=chr(tag),
        )
    return ProtocolError(f"unknown message type {tag:#04x}", offset=0, tag=chr(tag))


def decode_message(
    buf: bytes | bytearray | memoryview, *, in_stream: bool = False
) -> PgOutputMessage:
    """Decode one pgoutput message.

    ``in_stream`` tells whether the message sits inside a streamed-transaction block (after a
    `StreamStart` and before its `StreamStop`): change messages then carry an xid. A memoryview
    is copied into ``bytes`` once, so row values are plain ``bytes`` slices of that copy (that
    is faster than slicing the view and converting every value).
    """
    return _decode(buf if type(buf) is bytes else bytes(buf), in_stream)


def _decode(buf: bytes, in_stream: bool) -> PgOutputMessage:
    if not buf:
        raise ProtocolError("empty message", offset=0, tag="?")
    tag = buf[0]
    entry = _DISPATCH.get(tag)
    if entry is None:
        raise _unknown_tag(tag)
    decoder, has_xid = entry
    xid: int | None = None
    pos = 1
    if in_stream and has_xid:
        if len(buf) < 5:
            raise _truncated("streamed transaction xid", 1, chr(tag))
        (xid,) = _U32_UNPACK(buf, 1)
        pos = 5
    try:
        return decoder(buf, pos, xid)
    except _LOW_LEVEL_ERRORS as exc:  # safety net
        raise _malformed(exc, tag) from exc


#: What a decoder may raise on data it did not expect; reported as a `ProtocolError`.
_LOW_LEVEL_ERRORS = (IndexError, ValueError, struct.error, OverflowError)


def _malformed(exc: Exception, tag: int) -> ProtocolError:
    return ProtocolError(f"malformed message: {exc}", offset=0, tag=chr(tag))


_ROW_DECODERS: dict[int, Callable[[bytes, int, int | None], Insert | Update | Delete]] = {
    ord("I"): _decode_insert,
    ord("U"): _decode_update,
    ord("D"): _decode_delete,
}


def decode_row_change(buf: bytes) -> Insert | Update | Delete | None:
    """Decode ``buf`` if it is an Insert, Update or Delete outside a streamed block, else None.

    The reader's hot path: one call instead of the dispatch of `PgOutputDecoder.decode`, with the
    same strict checks. Any other message (None) goes through the decoder as usual.
    """
    decoder = _ROW_DECODERS.get(buf[0]) if buf else None
    if decoder is None:
        return None
    try:
        return decoder(buf, 1, None)
    except _LOW_LEVEL_ERRORS as exc:  # safety net
        raise _malformed(exc, buf[0]) from exc


def begin_fields(buf: bytes) -> tuple[Lsn, int, int]:
    """``(final_lsn, commit_time, xid)`` of a Begin message, without building a `Begin`."""
    if len(buf) != 1 + _BEGIN.size:
        _decode_begin(buf, 1, None)  # raises the precise error
    final_lsn, commit_time, xid = _BEGIN.unpack_from(buf, 1)
    return _int_new(Lsn, final_lsn), commit_time, xid


def commit_fields(buf: bytes) -> tuple[Lsn, int]:
    """``(end_lsn, commit_time)`` of a Commit message, without building a `Commit`."""
    if len(buf) != 1 + _COMMIT.size:
        _decode_commit(buf, 1, None)  # raises the precise error
    _, _, end_lsn, commit_time = _COMMIT.unpack_from(buf, 1)
    return _int_new(Lsn, end_lsn), commit_time


_STREAM_START_TAG, _STREAM_STOP_TAG = ord("S"), ord("E")
_BOUNDARY_TAGS = frozenset(b"SEBCcA")  # stream boundaries, and what never occurs inside a block


class PgOutputDecoder:
    """Stateful pgoutput decoder for one replication session.

    It remembers whether it is inside a streamed-transaction block ('S' ... 'E') so that it knows
    whether change messages carry an xid, and it rejects messages that cannot occur where they
    appear ('S' inside a block, 'E' outside one, B/C/c/A inside one). After reconnecting, use a
    new decoder or call `reset`.
    """

    __slots__ = ("_in_stream",)

    def __init__(self) -> None:
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        """Whether the last message left us inside a streamed-transaction block."""
        return self._in_stream

    def reset(self) -> None:
        """Forget any open streamed block (for a new replication session)."""
        self._in_stream = False

    def decode(self, buf: bytes | bytearray | memoryview) -> PgOutputMessage:
        """Decode one message and update the streaming state."""
        if type(buf) is not bytes:
            buf = bytes(buf)
        if buf and buf[0] in _BOUNDARY_TAGS:
            return self._decode_boundary(buf, buf[0])
        return _decode(buf, self._in_stream)

    def _decode_boundary(self, buf: bytes, tag: int) -> PgOutputMessage:
        if tag == _STREAM_STOP_TAG:
            if not self._in_stream:
                raise ProtocolError("stream stop outside a streamed block", offset=0, tag="E")
        elif self._in_stream:
            raise ProtocolError(
                "message not allowed inside a streamed block", offset=0, tag=chr(tag)
            )
        msg = _decode(buf, self._in_stream)
        if tag == _STREAM_START_TAG:
            self._in_stream = True
        elif tag == _STREAM_STOP_TAG:
            self._in_stream = False
        return msg


#: The pure-Python reference versions, kept for the C accelerator's fallback and its tests.
_py_read_tuple, _py_decode_row_change = _read_tuple, decode_row_change
#: ``ACCELERATED``: whether the C accelerator replaced the two per-row functions (see `_accel`).
_read_tuple, decode_row_change, ACCELERATED = accelerate(_read_tuple, decode_row_change)
