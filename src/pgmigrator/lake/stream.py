"""Streaming changes from the lake's slot into Iceberg, exactly once.

The stream starts at the lowest position any lake table has committed. Each table skips the
changes it already holds (`Position`: transactions committed before its LSN, plus the written
part of a transaction committed in pieces; DESIGN.md rule 2, per Iceberg table), so a restart
after a crash (even between a change-log commit and the merge that follows it) writes nothing
twice. ``_seq`` counts every change of a transaction, so it is the same on every replay.

Changes are buffered per table (`ChangeBuffer`) and handed to a background commit at a source
commit boundary every ``flush_interval_s`` seconds (once the previous commit has landed: while
it runs, the next batch grows) or ``max_rows`` rows; a transaction with more than ``max_rows``
changes is committed in pieces, so memory stays bounded. For each table the change log is
appended, then the net effect is merged into the current state, each commit carrying the new
position. Only then does the slot's flush LSN move (``stream.flushed``): the slot never discards
WAL the lake does not hold. New source columns (a Relation with more columns) are added to both
tables first.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pgmigrator.aio import wait_event
from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError
from pgmigrator.events import Begin, Commit, Delete, Insert, Relation, Truncate, Update
from pgmigrator.lake.batch import ChangeBuffer, Position
from pgmigrator.lake.types import map_type
from pgmigrator.lake.writer import CHANGES_SUFFIX, IcebergLake
from pgmigrator.log import get_logger
from pgmigrator.lsn import ZERO, Lsn
from pgmigrator.protocol import PgOutputDecoder
from pgmigrator.source.replication import ReplicationStream

log = get_logger("lake.stream")
TableKey = tuple[str, str]


@dataclass
class StreamStats:
    transactions: int = 0
    rows: int = 0
    skipped: int = 0
    flushes: int = 0
    reconnects: int = 0
    committed_lsn: Lsn = ZERO


@dataclass
class _Txn:
    final_lsn: Lsn
    commit_time: int
    seq: int = 0


@dataclass
class _State:
    relations: dict[int, Relation] = field(default_factory=dict)
    buffers: dict[TableKey, ChangeBuffer] = field(default_factory=dict)
    txn: _Txn | None = None
    last_end: Lsn | None = None  # end LSN of the last complete transaction buffered
    rows: int = 0  # buffered changes
    txn_rows: int = 0  # of which in the open transaction
    started: float = 0.0


class LakeStream:
    def __init__(
        self,
        source: Target,
        slot: str,
        publication: str,
        lake: IcebergLake,
        table_lsns: dict[TableKey, Position],
        *,
        flush_interval_s: float = 5.0,
        max_rows: int = 100_000,
        collector: Any = None,
    ) -> None:
        self.source = source
        self.slot = slot
        self.publication = publication
        self.lake = lake
        self.table_lsns = dict(table_lsns)
        self.flush_interval_s = flush_interval_s
        self.max_rows = max_rows
        self.collector = collector  # pgmigrator.metrics.Collector, or None
        self.stop_event = asyncio.Event()
        self.stats = StreamStats()
        self._commit_task: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self) -> StreamStats:
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                await self._session()
                break
            except PgMigratorError as exc:
                if not exc.retryable:
                    raise
                self.stats.reconnects += 1
                if self.collector is not None:
                    self.collector.record_error(exc.message, component="lake")
                    self.collector.set_health("source", "down", exc.message)
                log.warning("stream interrupted, reconnecting", error=exc.message)
                await wait_event(self.stop_event, delay)
                delay = min(delay * 2, 30.0) * random.uniform(0.8, 1.2)
        return self.stats

    async def _session(self) -> None:
        start = Lsn(min((p.lsn for p in self.table_lsns.values()), default=0))
        stream = ReplicationStream(self.source, self.slot, self.publication, streaming=False)
        await asyncio.to_thread(stream.open, start)
        if self.collector is not None:
            self.collector.set_phase("streaming")
            self.collector.set_health("source", "ok")
        state = _State(started=time.monotonic())
        decoder = PgOutputDecoder()
        try:
            while not self.stop_event.is_set():
                msg = await stream.next(timeout=min(1.0, self.flush_interval_s))
                if msg is not None:
                    self._feed(state, decoder.decode(msg.data))
                if state.txn is not None:
                    if state.txn_rows >= self.max_rows:  # a large transaction: commit a piece
                        await self._flush(state, stream)
                elif state.rows >= self.max_rows or (
                    time.monotonic() - state.started >= self.flush_interval_s
                    and not self._committing()  # while a commit runs, the next batch grows
                ):
                    await self._flush(state, stream)
                stream.idle = state.txn is None and not state.buffers and not self._committing()
            if state.txn is None:
                await self._flush(state, stream)
            await self._wait_commit()
            stream.send_status()
        finally:
            await self._settle_commit()
            stream.close()

    async def _settle_commit(self) -> None:
        """After a failure elsewhere: let a commit in flight land (or fail: it is redone later)."""
        task, self._commit_task = self._commit_task, None
        if task is None:
            return
        await asyncio.wait([task])
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.warning("lake commit failed", error=str(exc).splitlines()[0][:200])

    def _feed(self, state: _State, msg: object) -> None:
        if isinstance(msg, Begin):
            state.txn = _Txn(msg.final_lsn, msg.commit_time)
            state.txn_rows = 0
        elif isinstance(msg, (Insert, Update, Delete)):
            self._change(state, msg, msg.relation_oid)
        elif isinstance(msg, Commit):
            state.txn = None
            state.last_end = msg.end_lsn
            self.stats.transactions += 1
        elif isinstance(msg, Relation):
            state.relations[msg.oid] = msg
        elif isinstance(msg, Truncate):
            for oid in msg.relation_oids:
                self._change(state, msg, oid)

    def _change(self, state: _State, msg: Insert | Update | Delete | Truncate, oid: int) -> None:
        rel = state.relations.get(oid)
        txn = state.txn
        if rel is None or txn is None:
            return
        seq = txn.seq  # counts every change of the transaction: the same on every replay
        if not isinstance(msg, Truncate) or oid == msg.relation_oids[-1]:
            txn.seq += 1
        key = (rel.namespace, rel.name)
        stored = self.table_lsns.get(key)
        if stored is None:
            return  # not a lake table
        if stored.holds(txn.final_lsn, seq):  # this table already has that change
            self.stats.skipped += 1
            return
        buf = state.buffers.get(key)
        if buf is None:
            buf = state.buffers[key] = ChangeBuffer(rel.namespace, rel.name)
        buf.add(msg, rel, txn.final_lsn, seq, txn.commit_time)
        state.rows += 1
        state.txn_rows += 1

    async def _flush(self, state: _State, stream: ReplicationStream) -> None:
        """Hand what is buffered to a background commit; inside a transaction, as a piece of it.

        Decoding goes on while the lake commits; one commit is in flight at a time, so the
        commits (and the slot's flush LSN after them) stay in stream order.
        """
        state.started = time.monotonic()
        end, txn = state.last_end, state.txn
        if (end is None and txn is None) or (end is None and not state.buffers):
            return
        buffers = list(state.buffers.values())
        piece = (txn.final_lsn, txn.seq) if txn is not None else None
        rows = state.rows
        state.buffers = {}
        state.rows = state.txn_rows = 0
        state.last_end = None
        await self._wait_commit()
        self._commit_task = asyncio.create_task(
            self._commit_batch(buffers, end, piece, rows, stream)
        )

    def _committing(self) -> bool:
        return self._commit_task is not None and not self._commit_task.done()

    async def _wait_commit(self) -> None:
        task, self._commit_task = self._commit_task, None
        if task is not None:
            await task  # raises what the commit raised

    async def _commit_batch(
        self,
        buffers: list[ChangeBuffer],
        end: Lsn | None,
        piece: tuple[Lsn, int] | None,
        rows: int,
        stream: ReplicationStream,
    ) -> None:
        if buffers:
            began = time.monotonic()
            await asyncio.to_thread(self._commit_all, buffers, end, piece)
            self.stats.rows += rows
            self.stats.flushes += 1
            log.info(
                "lake commit",
                lsn=str(end),
                piece_of=str(piece[0]) if piece is not None else None,
                tables=len(buffers),
                rows=rows,
                seconds=round(time.monotonic() - began, 2),
                transactions=self.stats.transactions,
            )
        if end is None:
            return
        self.stats.committed_lsn = end
        if end > stream.flushed:
            stream.flushed = end  # everything up to ``end`` is committed in the lake
            stream.send_status()
        if self.collector is not None:
            self.collector.add_rows(rows)
            self.collector.set_lsns(applied=end, confirmed=stream.flushed, latest=stream.received)

    def _commit_all(
        self, buffers: list[ChangeBuffer], end: Lsn | None, piece: tuple[Lsn, int] | None
    ) -> None:
        for buf in buffers:
            key = (buf.schema, buf.table)
            done = max(self.table_lsns[key].lsn, end or 0)
            pos = Position(done, *piece) if piece is not None else Position(done)
            self._commit(buf, pos)

    def _commit(self, buf: ChangeBuffer, pos: Position) -> None:
        changes = self.lake.load(buf.schema, buf.table + CHANGES_SUFFIX)
        current = self.lake.load(buf.schema, buf.table)
        if changes is None or current is None:
            log.warning("lake table missing, changes dropped", table=f"{buf.schema}.{buf.table}")
            return
        latest = buf.rows[-1].relation
        wanted = [(c.name, map_type(c.type_oid, c.type_modifier)) for c in latest.columns]
        for table in (changes, current):
            self.lake.add_columns(table, wanted)
        self.lake.append_changes(changes, buf, pos)
        key = [c.name for c in latest.columns if c.is_key]
        self.lake.merge(current, buf, key, pos)
        self.table_lsns[(buf.schema, buf.table)] = pos
        if buf.unchanged_toast:
            log.warning(
                "unchanged TOAST values stored as NULL",
                table=f"{buf.schema}.{buf.table}",
                values=buf.unchanged_toast,
                hint="set REPLICA IDENTITY FULL on the table so the source sends them",
            )
