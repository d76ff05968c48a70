"""Framing of the streaming replication sub-protocol spoken after START_REPLICATION.

While streaming, every CopyData message from the server is either XLogData ('w', carrying one
pgoutput message) or a primary keepalive ('k'); the client answers with standby status updates
('r') reporting how far it has written, flushed and applied. See PostgreSQL's "Streaming
Replication Protocol" documentation. All integers are big-endian; times are microseconds since
2000-01-01 UTC (`now_pg_us`).

Parsing is strict and raises only `ProtocolError`. No I/O happens here.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from pgmigrator.errors import ProtocolError
from pgmigrator.events import PG_EPOCH_UNIX_US, fast_init
from pgmigrator.lsn import Lsn

__all__ = [
    "PrimaryKeepalive",
    "XLogData",
    "build_standby_status_update",
    "now_pg_us",
    "parse_copy_data",
]

_XLOG_DATA_TAG = ord("w")
_KEEPALIVE_TAG = ord("k")
_XLOG_HEADER = struct.Struct("!QQq")  # wal start, wal end, server send time
_KEEPALIVE = struct.Struct("!Qq?")  # wal end, server send time, reply requested
_STATUS_UPDATE = struct.Struct("!cQQQq?")  # 'r', write, flush, apply, client time, reply
_XLOG_HEADER_END = 1 + _XLOG_HEADER.size
_KEEPALIVE_SIZE = 1 + _KEEPALIVE.size
_UINT64_LIMIT = 1 << 64


@fast_init
@dataclass(frozen=True, slots=True)
class XLogData:
    """'w': WAL data. ``data`` is a zero-copy view of the pgoutput message in the CopyData buffer.

    ``data`` stays valid as long as the buffer it was parsed from is not modified.
    """

    wal_start: Lsn
    wal_end: Lsn
    send_time: int
    data: memoryview


@fast_init
@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """'k': the server's heartbeat; answer at once when ``reply_requested`` is set."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


# `Lsn` without its Python-level range check (an unpacked UInt64 is always in range): this runs
# twice per replicated row, and `_int_new(Lsn, value)` costs a third of `Lsn(value)`.
_int_new = int.__new__


def now_pg_us() -> int:
    """The current time in microseconds since the PostgreSQL epoch (2000-01-01 UTC)."""
    return time.time_ns() // 1000 - PG_EPOCH_UNIX_US


def parse_copy_data(buf: bytes | bytearray | memoryview) -> XLogData | PrimaryKeepalive:
    """Parse one CopyData payload received from the walsender during START_REPLICATION."""
    view = memoryview(buf)
    if type(buf) is not bytes:  # turn exotic views into flat unsigned bytes (copy only if strided)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        elif view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    size = len(view)
    if size == 0:
        raise ProtocolError("empty CopyData message", offset=0, tag="?")
    tag = view[0]
    if tag == _XLOG_DATA_TAG:
        if size < _XLOG_HEADER_END:
            raise ProtocolError("truncated XLogData header", offset=size, tag="w")
        wal_start, wal_end, send_time = _XLOG_HEADER.unpack_from(view, 1)
        return XLogData(
            _int_new(Lsn, wal_start), _int_new(Lsn, wal_end), send_time, view[_XLOG_HEADER_END:]
        )
    if tag == _KEEPALIVE_TAG:
        if size != _KEEPALIVE_SIZE:
            raise ProtocolError(
                f"keepalive must be {_KEEPALIVE_SIZE} bytes, got {size}", offset=0, tag="k"
            )
        wal_end, send_time, reply = _KEEPALIVE.unpack_from(view, 1)
        return PrimaryKeepalive(_int_new(Lsn, wal_end), send_time, reply)
    raise ProtocolError(f"unknown replication message type {tag:#04x}", offset=0, tag=chr(tag))


def build_standby_status_update(
    write: int,
    flush: int,
    apply: int,
    *,
    client_time: int | None = None,
    reply_requested: bool = False,
) -> bytes:
    """Build a standby status update ('r') to send back as CopyData.

    ``write``, ``flush`` and ``apply`` are the next WAL positions (LSN + 1 of the last byte)
    written, durably flushed and applied by the client; the server may discard WAL before
    ``flush``. ``client_time`` defaults to `now_pg_us`.
    """
    for name, value in (("write", write), ("flush", flush), ("apply", apply)):
        if not 0 <= value < _UINT64_LIMIT:
            raise ValueError(f"{name} LSN out of range: {value}")
    if client_time is None:
        client_time = now_pg_us()
    return _STATUS_UPDATE.pack(b"r", write, flush, apply, client_time, reply_requested)
