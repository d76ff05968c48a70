"""Turning decoded pgoutput messages into applier commands, with batching and table sync LSNs.

The reader is synchronous and free of I/O apart from the spill files: the follow loop feeds it
each XLogData payload and forwards the commands it emits, in order, to the applier:

- ``Relation`` (register or refresh a table's shape),
- ``Changes`` (a bounded list of row changes, possibly part of a still-open source transaction),
- ``CommitBatch`` (commit the destination transaction at a source commit boundary).

Many source transactions go into one destination transaction while there is a backlog (limits by
rows and milliseconds); the follow loop calls :meth:`Reader.flush` as soon as no further message is
waiting on the socket, so a caught-up stream commits each transaction at once (latency). (The
walsender's XLogData ``wal_end`` is the record's own LSN in logical replication, not the server's
WAL end, so it cannot tell whether a backlog exists.) A table copied under a later snapshot skips changes of transactions committed
before its sync LSN (DESIGN.md rule 2). Streamed transactions are spilled to disk until they commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pgmigrator.events import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from pgmigrator.lsn import Lsn
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.protocol import PgOutputDecoder, decode_message

Change = Insert | Update | Delete | Truncate


@dataclass(frozen=True, slots=True)
class Changes:
    changes: list[Change]


@dataclass(frozen=True, slots=True)
class CommitBatch:
    end_lsn: Lsn
    commit_time: int
    transactions: int
    rows: int


@dataclass(frozen=True, slots=True)
class Sentinel:
    """A switchover sentinel (``pg_logical_emit_message(true, 'pgmigrator', ...)``) at its place in the stream."""

    id: str
    lsn: Lsn


SENTINEL_PREFIX = "pgmigrator"
Command = Relation | Changes | CommitBatch | Sentinel


@dataclass
class BatchLimits:
    max_rows: int = 50_000  # per destination transaction when there is a backlog
    max_ms: float = 500.0  # per destination transaction when there is a backlog
    chunk_rows: int = (
        5_000  # rows handed to the applier at once (bounds memory within a transaction)
    )


@dataclass
class _Batch:
    rows: int = 0
    transactions: int = 0
    started: float = 0.0
    last_commit: tuple[Lsn, int] | None = None
    pending: list[Change] = field(default_factory=list)


class Reader:
    def __init__(
        self,
        emit: Callable[[Command], None],
        sync_lsns: dict[tuple[str, str], Lsn],
        spill: SpillStore,
        limits: BatchLimits | None = None,
        on_message: Callable[[Message, Lsn], None] | None = None,
    ) -> None:
        self.emit = emit
        self.sync_lsns = sync_lsns
        self.spill = spill
        self.limits = limits or BatchLimits()
        self.on_message = on_message
        self.decoder = PgOutputDecoder()
        self.relations: dict[int, Relation] = {}
        self.txn: Begin | None = None
        self.origin: str | None = None
        self.stream_xid: int | None = None
        self.batch = _Batch()
        self.skipped_rows = 0

    @property
    def idle(self) -> bool:
        """True when nothing received is waiting to be applied (the slot may then advance freely)."""
        return (
            self.txn is None
            and self.batch.last_commit is None
            and not self.batch.pending
            and self.spill.open_transactions() == 0
        )

    def feed(self, payload: memoryview, wal_end: Lsn) -> None:
        msg = self.decoder.decode(payload)
        xid: int | None = getattr(msg, "xid", None)
        if (
            self.stream_xid is not None
            and xid is not None
            and not isinstance(msg, (StreamStop, Relation))
        ):
            self.spill.append(self.stream_xid, xid, bytes(payload))
            return
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg, wal_end)

    def _begin(self, msg: Begin, wal_end: Lsn) -> None:
        self.txn = msg
        self.origin = None
        if self.batch.transactions == 0 and not self.batch.pending:
            self.batch.started = time.monotonic()

    def _relation(self, msg: Relation, wal_end: Lsn) -> None:
        self.relations[msg.oid] = msg
        self._push_pending()
        self.emit(msg)

    def _change(self, msg: Change, wal_end: Lsn) -> None:
        final = self.txn.final_lsn if self.txn is not None else Lsn(0)
        self._add_change(msg, final)

    def _add_change(self, msg: Change, final_lsn: Lsn) -> None:
        if self._skipped(msg, final_lsn):
            self.skipped_rows += 1
            return
        self.batch.pending.append(msg)
        self.batch.rows += 1
        if len(self.batch.pending) >= self.limits.chunk_rows:
            self._push_pending()

    def _skipped(self, msg: Change, final_lsn: Lsn) -> bool:
        if not self.sync_lsns:
            return False
        oids = msg.relation_oids if isinstance(msg, Truncate) else (msg.relation_oid,)
        for oid in oids:
            rel = self.relations.get(oid)
            sync = self.sync_lsns.get((rel.namespace, rel.name)) if rel else None
            if sync is None or final_lsn >= sync:
                return False
        return True

    def _commit(self, msg: Commit, wal_end: Lsn) -> None:
        self.txn = None
        self._committed(msg.end_lsn, msg.commit_time, wal_end)

    def _committed(self, end_lsn: Lsn, commit_time: int, wal_end: Lsn) -> None:
        batch = self.batch
        batch.transactions += 1
        batch.last_commit = (end_lsn, commit_time)
        elapsed_ms = (time.monotonic() - batch.started) * 1000
        if batch.rows >= self.limits.max_rows or elapsed_ms >= self.limits.max_ms:
            self.flush()

    def flush(self) -> None:
        """Commit what is batched, at the last complete source transaction.

        Never while a source transaction is open: its changes may already be in the destination
        transaction, and committing them under the previous commit's LSN would apply them twice
        after a restart. Its own Commit flushes instead.
        """
        batch = self.batch
        if batch.last_commit is None or self.txn is not None:
            return
        self._push_pending()
        self.emit(
            CommitBatch(batch.last_commit[0], batch.last_commit[1], batch.transactions, batch.rows)
        )
        self.batch = _Batch(started=time.monotonic())

    def _push_pending(self) -> None:
        if self.batch.pending:
            self.emit(Changes(self.batch.pending))
            self.batch.pending = []

    def _origin(self, msg: Origin, wal_end: Lsn) -> None:
        self.origin = msg.name

    def _message(self, msg: Message, wal_end: Lsn) -> None:
        self._logical_message(msg, self.txn.final_lsn if self.txn else msg.lsn)

    def _logical_message(self, msg: Message, lsn: Lsn) -> None:
        if msg.prefix == SENTINEL_PREFIX and msg.transactional:
            sentinel_id = _sentinel_id(msg.content)
            if sentinel_id is not None:
                self._push_pending()  # keep its place: after every change before it
                self.emit(Sentinel(sentinel_id, msg.lsn))
        if self.on_message is not None:
            self.on_message(msg, lsn)

    def _stream_start(self, msg: StreamStart, wal_end: Lsn) -> None:
        self.stream_xid = msg.xid

    def _stream_stop(self, msg: StreamStop, wal_end: Lsn) -> None:
        self.stream_xid = None

    def _stream_abort(self, msg: StreamAbort, wal_end: Lsn) -> None:
        self.spill.abort(msg.xid, msg.subxid)

    def _stream_commit(self, msg: StreamCommit, wal_end: Lsn) -> None:
        for raw in self.spill.replay(msg.xid):
            change = decode_message(raw, in_stream=True)
            if isinstance(change, (Insert, Update, Delete, Truncate)):
                self._add_change(change, msg.commit_lsn)
            elif isinstance(change, Message):
                self._logical_message(change, msg.commit_lsn)
        self._committed(msg.end_lsn, msg.commit_time, wal_end)

    def reset(self) -> None:
        """Forget everything not yet committed (after a reconnect the server resends it)."""
        self.decoder = PgOutputDecoder()
        self.txn = None
        self.stream_xid = None
        self.batch = _Batch(started=time.monotonic())
        self.spill.discard_all()


_HANDLERS: dict[type, Callable[[Reader, Any, Lsn], None]] = {
    Begin: Reader._begin,
    Commit: Reader._commit,
    Relation: Reader._relation,
    Insert: Reader._change,
    Update: Reader._change,
    Delete: Reader._change,
    Truncate: Reader._change,
    Origin: Reader._origin,
    Message: Reader._message,
    StreamStart: Reader._stream_start,
    StreamStop: Reader._stream_stop,
    StreamAbort: Reader._stream_abort,
    StreamCommit: Reader._stream_commit,
}


def _sentinel_id(content: bytes) -> str | None:
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None
