"""Turning decoded pgoutput messages into applier commands, with batching and table sync LSNs.

The reader is synchronous and free of I/O apart from the spill files: the follow loop feeds it
each XLogData payload and forwards the commands it emits, in order, to the applier:

- ``Relation`` (register or refresh a table's shape),
- ``Changes`` (a bounded list of row changes, possibly part of a still-open source transaction),
- ``CommitBatch`` (commit the destination transaction at a source commit boundary).

Many source transactions go into one destination transaction while there is a backlog (limits by
rows and milliseconds); the follow loop calls :meth:`Reader.flush` as soon as the applier is free,
so a caught-up stream commits each transaction at once (latency) and a backlog gathers while the
applier works. (The walsender's XLogData ``wal_end`` is the record's own LSN in logical
replication, not the server's WAL end, so it cannot tell whether a backlog exists.) A table
copied under a later snapshot skips changes of transactions committed before its sync LSN
(DESIGN.md rule 2). Streamed transactions are spilled to disk until they commit.

Bidirectional replication (DESIGN.md rule 6): with an `OriginFilter`, a transaction whose pgoutput
Origin message ('O', sent right after Begin or StreamStart) names one of our own replication
origins is dropped whole: it is a change our applier made, coming back. Its Relation messages
still pass (pgoutput sends each relation's layout once per session), and its end LSN is kept in
`Reader.dropped_lsn` so that the follow loop can acknowledge it once everything before it is
applied (a dropped transaction has nothing to apply, but must not pin WAL on the server). With
``track_times`` every `Changes` also carries the source commit time of each transaction's run of
changes, for the applier's conflict check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgmigrator.events import (
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
from pgmigrator.pipeline import sentinel
from pgmigrator.pipeline.commands import (
    SENTINEL_PREFIX,
    BatchLimits,
    Change,
    Changes,
    Command,
    CommitBatch,
    Sentinel,
)
from pgmigrator.pipeline.origins import OriginFilter
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.protocol import PgOutputDecoder, decode_message
from pgmigrator.protocol.pgoutput import begin_fields, commit_fields, decode_row_change
from pgmigrator.protocol.runs import take_row

if TYPE_CHECKING:
    from pgmigrator.protocol._speedups import TxnState

_BEGIN_TAG, _COMMIT_TAG = ord("B"), ord("C")
_int_new = int.__new__  # _int_new(Lsn, v): an `Lsn` from a UInt64 the wire gave, no range check
_ROW_TAGS = frozenset(b"IUD")


@dataclass
class _Batch:
    rows: int = 0
    transactions: int = 0
    started: float = 0.0
    last_commit: tuple[Lsn, int] | None = None
    pending: list[Change] = field(default_factory=list)
    pending_rows: int = 0  # row changes in ``pending`` (an `InsertRun` holds several)
    times: list[tuple[int, int]] = field(default_factory=list)  # see Changes.times


class Reader:
    def __init__(
        self,
        emit: Callable[[Command], None],
        sync_lsns: dict[tuple[str, str], Lsn],
        spill: SpillStore,
        limits: BatchLimits | None = None,
        on_message: Callable[[Message, Lsn], None] | None = None,
        *,
        origin_filter: OriginFilter | None = None,
        track_times: bool = False,
        pipeline: str | None = None,
    ) -> None:
        self.emit = emit
        self.pipeline = pipeline  # sentinels naming another pipeline are not ours
        self.origin_filter = origin_filter
        self.track_times = track_times
        self.dropping = False  # inside a transaction the origin filter drops
        self._txn_time = 0  # source commit time of the transaction being read
        self.sync_lsns = sync_lsns
        self.spill = spill
        self.limits = limits or BatchLimits()
        self.on_message = on_message
        self.decoder = PgOutputDecoder()
        self.relations: dict[int, Relation] = {}
        self.final_lsn: Lsn | None = None  # commit LSN of the open transaction, None outside one
        self.origin: str | None = None
        self.stream_xid: int | None = None
        self.batch = _Batch()
        self.skipped_rows = 0

    @property
    def dropped_lsn(self) -> Lsn:
        """End LSN of the last transaction the origin filter dropped (0 without a filter)."""
        return self.origin_filter.last_lsn if self.origin_filter else Lsn(0)

    @property
    def idle(self) -> bool:
        """True when nothing received is waiting to be applied (the slot may then advance freely)."""
        return (
            self.final_lsn is None
            and self.batch.last_commit is None
            and not self.batch.pending
            and self.spill.open_transactions() == 0
        )

    def feed(self, payload: memoryview | bytes, wal_end: Lsn) -> None:
        buf = payload if type(payload) is bytes else bytes(payload)
        if self.stream_xid is None and buf:  # the hot path: rows, begins and commits
            tag = buf[0]
            if tag in _ROW_TAGS and not self.dropping:
                if (
                    take_row is not None
                    and self.final_lsn is not None
                    and self._fast_ok()
                    and take_row(self.batch.pending, buf)
                ):  # as the C loop does: runs of inserts stay whole
                    self._row_taken()
                    return
                change = decode_row_change(buf)
                assert change is not None
                self._add_change(change, self.final_lsn or Lsn(0))
                return
            if tag == _BEGIN_TAG:
                final_lsn, commit_time, _ = begin_fields(buf)
                self._begin(final_lsn, commit_time)
                return
            if tag == _COMMIT_TAG:
                end_lsn, commit_time = commit_fields(buf)
                self._commit(end_lsn, commit_time, wal_end)
                return
        msg = self.decoder.decode(buf)
        xid: int | None = getattr(msg, "xid", None)
        if (
            self.stream_xid is not None
            and xid is not None
            and not isinstance(msg, (StreamStop, Relation))
        ):
            f = self.origin_filter
            if f is not None and self.stream_xid in f.streams:
                f.rows += 1
                return
            self.spill.append(self.stream_xid, xid, buf)
            return
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg, wal_end)

    def fast_rows(self, txn: TxnState) -> tuple[list[Change], int] | None:
        """Where the replication stream's C loop may put row changes, and how many (`RowSink`).

        Only where nothing filters (no streamed block, no dropped origin, no commit times, no sync
        LSNs): there `_add_change` does nothing but append, and Begin and Commit only move the
        batch's transaction state, which goes into ``txn`` for the C loop to carry on (read back
        by `rows_added`). The C loop keeps runs of inserts undecoded, as `InsertRun` entries.
        """
        if not self._fast_ok():
            return None
        batch = self.batch
        final = self.final_lsn
        txn.open = final is not None
        if final is not None:
            txn.final_lsn = final
            txn.begin_time = self._txn_time
        txn.begins = txn.commits = 0
        txn.rows = batch.rows
        txn.max_rows = self.limits.max_rows
        txn.max_ns = max_ns = int(self.limits.max_ms * 1e6)
        empty = final is None and batch.transactions == 0 and not batch.pending  # no Begin yet
        txn.deadline_ns = 0 if empty else int(batch.started * 1e9) + max_ns
        return batch.pending, self.limits.chunk_rows - batch.pending_rows

    def rows_added(self, count: int, txn: TxnState) -> None:
        """The C loop put ``count`` row changes into the list `fast_rows` gave, and moved ``txn``."""
        batch = self.batch
        batch.rows += count
        batch.pending_rows += count
        if txn.commits:
            batch.transactions += txn.commits
            batch.last_commit = (_int_new(Lsn, txn.end_lsn), txn.commit_time)
        if txn.open:
            if txn.begins:  # a new transaction, begun in C: no Origin message seen for it yet
                self.final_lsn = _int_new(Lsn, txn.final_lsn)
                self._txn_time = txn.begin_time
                self.origin = None
        else:
            self.final_lsn = None
        if txn.deadline_ns:
            batch.started = (txn.deadline_ns - txn.max_ns) / 1e9
        if txn.flush_due:
            self.flush()
        elif batch.pending_rows >= self.limits.chunk_rows:
            self._push_pending()

    def _row_taken(self) -> None:
        batch = self.batch
        batch.rows += 1
        batch.pending_rows += 1
        if batch.pending_rows >= self.limits.chunk_rows:
            self._push_pending()

    def _fast_ok(self) -> bool:
        return not (
            self.stream_xid is not None or self.dropping or self.track_times or self.sync_lsns
        )

    def _begin(self, final_lsn: Lsn, commit_time: int) -> None:
        self.final_lsn = final_lsn
        self.origin = None
        self.dropping = False
        self._txn_time = commit_time
        if self.batch.transactions == 0 and not self.batch.pending:
            self.batch.started = time.monotonic()

    def _relation(self, msg: Relation, wal_end: Lsn) -> None:
        self.relations[msg.oid] = msg
        self._push_pending()
        self.emit(msg)

    def _change(self, msg: Change, wal_end: Lsn) -> None:
        if self.dropping:
            assert self.origin_filter is not None
            self.origin_filter.rows += 1
            return
        self._add_change(msg, self.final_lsn or Lsn(0))

    def _add_change(self, msg: Change, final_lsn: Lsn) -> None:
        if self._skipped(msg, final_lsn):
            self.skipped_rows += 1
            return
        batch = self.batch
        batch.pending.append(msg)
        batch.rows += 1
        batch.pending_rows += 1
        if self.track_times:
            times = batch.times
            if not times or times[-1][1] != self._txn_time:
                times.append((len(batch.pending) - 1, self._txn_time))
        if batch.pending_rows >= self.limits.chunk_rows:
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

    def _commit(self, end_lsn: Lsn, commit_time: int, wal_end: Lsn) -> None:
        self.final_lsn = None
        if self.dropping:
            assert self.origin_filter is not None
            self.dropping = False
            self.origin_filter.dropped(end_lsn)
            return
        self._committed(end_lsn, commit_time, wal_end)

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
        if batch.last_commit is None or self.final_lsn is not None:
            return
        self._push_pending()
        self.emit(
            CommitBatch(batch.last_commit[0], batch.last_commit[1], batch.transactions, batch.rows)
        )
        self.batch = _Batch(started=time.monotonic())

    def _push_pending(self) -> None:
        batch = self.batch
        if batch.pending:
            self.emit(Changes(batch.pending, tuple(batch.times) if self.track_times else None))
            batch.pending = []
            batch.pending_rows = 0
            batch.times = []

    def _origin(self, msg: Origin, wal_end: Lsn) -> None:
        self.origin = msg.name
        f = self.origin_filter
        if f is None or not f.drops(msg.name):
            return
        if self.stream_xid is not None:  # the start of a block of a streamed transaction
            f.streams.add(self.stream_xid)
            self.spill.discard(self.stream_xid)
        elif self.final_lsn is not None:
            self.dropping = True

    def _message(self, msg: Message, wal_end: Lsn) -> None:
        if self.dropping:
            return
        self._logical_message(msg, self.final_lsn or msg.lsn)

    def _logical_message(self, msg: Message, lsn: Lsn) -> None:
        if msg.prefix == SENTINEL_PREFIX and msg.transactional:
            found = sentinel.parse(msg.content, self.pipeline)
            if found is not None:
                self._push_pending()  # keep its place: after every change before it
                self.emit(Sentinel(found[1], msg.lsn, found[0]))
        if self.on_message is not None:
            self.on_message(msg, lsn)

    def _stream_start(self, msg: StreamStart, wal_end: Lsn) -> None:
        self.stream_xid = msg.xid

    def _stream_stop(self, msg: StreamStop, wal_end: Lsn) -> None:
        self.stream_xid = None

    def _stream_abort(self, msg: StreamAbort, wal_end: Lsn) -> None:
        if self.origin_filter is not None and msg.subxid in (msg.xid, 0):
            self.origin_filter.streams.discard(msg.xid)
        self.spill.abort(msg.xid, msg.subxid)

    def _stream_commit(self, msg: StreamCommit, wal_end: Lsn) -> None:
        f = self.origin_filter
        if f is not None and msg.xid in f.streams:
            f.streams.discard(msg.xid)
            self.spill.discard(msg.xid)
            f.dropped(msg.end_lsn)
            return
        self._txn_time = msg.commit_time
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
        self.final_lsn = None
        self.stream_xid = None
        self.dropping = False
        if self.origin_filter is not None:
            self.origin_filter.streams.clear()
        self.batch = _Batch(started=time.monotonic())
        self.spill.discard_all()


_HANDLERS: dict[type, Callable[[Reader, Any, Lsn], None]] = {
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
