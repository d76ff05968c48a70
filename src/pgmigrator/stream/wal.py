"""``pgmigrator stream``: WAL changes from a slot, encoded once, fanned out to sinks, acknowledged.

The read loop receives XLogData from `ReplicationStream` (``streaming`` off: the server hands over
each transaction whole at commit, spilling large ones to its own disk, so nothing big is held
here), feeds the `ChangeEncoder` and publishes chunks to the `Bus` when a chunk is full or nothing
more waits on the socket (latency when caught up, big batches when there is a backlog). The slot's
flush position follows the `AckTracker`: what every durable sink acknowledged. Retryable source
failures reconnect with backoff from that position (already published transactions are skipped).
On stop: what is queued is delivered (up to ``drain_timeout_s``), a final status update is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from pgmigrator.aio import wait_event
from pgmigrator.config import Settings
from pgmigrator.errors import PgMigratorError, RetryableReplicationError
from pgmigrator.events import PG_EPOCH_UNIX_US
from pgmigrator.log import get_logger
from pgmigrator.lsn import ZERO, Lsn
from pgmigrator.metrics import Collector
from pgmigrator.pg import Conn, connect
from pgmigrator.pipeline.gate import RunGate
from pgmigrator.pipeline.walbudget import WalBudgetWatcher
from pgmigrator.protocol import parse_copy_data
from pgmigrator.sinks.base import Sink, SinkContext
from pgmigrator.source.replication import ReplicationStream
from pgmigrator.stream.bus import Bus, SinkPolicy
from pgmigrator.stream.changes import ChangeEncoder
from pgmigrator.stream.dlq import DeadLetterQueue
from pgmigrator.stream.filters import Filters
from pgmigrator.stream.live import PlanQueue
from pgmigrator.stream.setup import (
    Prepared,
    current_lsn,
    marker_path,
    prepare,
    walsender_target,
    write_marker,
)
from pgmigrator.stream.snapshot import SnapshotReader

log = get_logger("stream")
_XLOG_DATA = ord("w")
_WAL_END = struct.Struct("!Q").unpack_from


@dataclass
class StreamStats:
    events: int = 0
    snapshot_rows: int = 0
    transactions: int = 0
    reconnects: int = 0
    flushed: Lsn = ZERO
    drained: bool = True


class WalStream:
    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[tuple[Sink, SinkPolicy]],
        filters: Filters,
        collector: Collector,
        *,
        create: bool = False,
        snapshot: bool = False,
        dlq: DeadLetterQueue | None = None,
        ctx: SinkContext | None = None,
    ) -> None:
        settings.require("source")
        self.settings = settings
        self.source = settings.source_target
        self.filters = filters
        self.collector = collector
        self.create = create
        self.snapshot = snapshot
        self.bus = Bus(sinks, collector, dlq=dlq)
        self.encoder = ChangeEncoder(self.source.database, filters)
        self.gate = RunGate(collector, "stream")
        self.stop_event = self.gate.stop_event
        self.reloads = PlanQueue(self, ctx or SinkContext(collector=collector))
        self.stats = StreamStats()
        self.flushed = Lsn(0)
        self.latest = Lsn(0)
        self._chunk = settings.stream.chunk_events
        self._chunk_bytes = settings.stream.chunk_bytes
        self._publishing = False

    def request_stop(self) -> None:
        self.gate.request_stop()
        self.bus.interrupt()

    def pause(self) -> str:
        return self.gate.pause()

    def resume(self) -> str:
        return self.gate.resume()

    async def run(self) -> StreamStats:
        try:
            return await self.gate.run(self._run())
        finally:
            self.reloads.cancel()

    async def _run(self) -> StreamStats:
        self.collector.set_phase("connecting")
        await self.bus.start()
        try:
            prepared = await asyncio.to_thread(
                prepare, self.settings, self.source, create=self.create, snapshot=self.snapshot
            )
            self.collector.update_info({"slot": prepared.slot, "publication": prepared.publication})
            self.flushed = prepared.start
            self.bus.tracker.reset(prepared.start)
            if prepared.session is not None:
                await self._snapshot(prepared)
            await self._stream(prepared)
        finally:
            self.stats.drained = await self.bus.close(self.settings.stream.drain_timeout_s)
        self.bus.raise_if_failed()
        self.stats.flushed = self.flushed
        return self.stats

    async def _snapshot(self, prepared: Prepared) -> None:
        assert prepared.created is not None and prepared.session is not None
        consistent = prepared.created.consistent_lsn
        marker = marker_path(self.settings, prepared.slot)
        reader = SnapshotReader(
            self.source, prepared.publication, self.filters, self.source.database
        )
        try:
            await asyncio.to_thread(write_marker, marker, prepared.slot, "running", consistent)
            await asyncio.to_thread(reader.open, prepared.created.snapshot)
        finally:
            prepared.session.close()  # the snapshot is imported (or failed): the slot stays
        self.collector.set_phase("snapshot")
        log.info("snapshot started", tables=len(reader.tables), consistent_lsn=str(consistent))
        batches = reader.batches(consistent, self._chunk, self._chunk_bytes)
        try:
            while self.filters.op_allowed("r") and not self.stop_event.is_set():
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    break
                await self.bus.publish(batch)
                self.stats.events += len(batch)
                self.collector.add_rows(len(batch))
        finally:
            await asyncio.to_thread(reader.close)  # first: a COPY cut short is not read to its end
            with contextlib.suppress(Exception):
                batches.close()
        self.stats.snapshot_rows = reader.rows
        if self.stop_event.is_set():
            return  # the marker stays "running": a restart says so instead of skipping rows
        await self.bus.wait_delivered()
        await asyncio.to_thread(write_marker, marker, prepared.slot, "done", consistent)
        log.info("snapshot delivered", rows=reader.rows)

    async def _stream(self, prepared: Prepared) -> None:
        if self.stop_event.is_set():
            return
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                await self._session(prepared)
                return
            except PgMigratorError as exc:
                if not exc.retryable or self.bus.failure is not None:
                    raise
                self.stats.reconnects += 1
                self.collector.set_health("source", "down", exc.message)
                self.collector.record_error(exc.message, component="stream")
                log.warning(
                    "connection lost, reconnecting", error=exc.message, retry_in_s=round(delay, 1)
                )
                await wait_event(self.stop_event, delay)
                delay = min(delay * 2, 30.0) * random.uniform(0.8, 1.2)

    async def _session(self, prepared: Prepared) -> None:
        stream = ReplicationStream(
            walsender_target(self.source), prepared.slot, prepared.publication, streaming=False
        )
        stream.flushed = self.flushed
        self.encoder.reset()
        self.encoder.skip_through = self.encoder.last_commit
        monitor: Conn | None = None
        keeper = asyncio.create_task(self._keep_alive(stream))
        try:
            await asyncio.to_thread(stream.open, self.flushed)
            monitor = await asyncio.to_thread(connect, self.source)
            self.collector.set_phase("streaming")
            self.collector.set_health("source", "ok")
            self.gate.running()
            budget = WalBudgetWatcher(self.source, prepared.slot, self.settings.wal_budget,
                                      self.collector)  # fmt: skip
            budget.on_level = self._on_budget
            watcher = asyncio.create_task(budget.run(self.stop_event))
            try:
                await self._read(stream, monitor)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self._publish()
            drained = await self.bus.close(self.settings.stream.drain_timeout_s)
            self.stats.drained = drained
            self._advance(stream)
            await stream.settle()  # everything delivered: the slot's restart point catches up
            stream.send_status()
            log.info("stopped", flushed_lsn=str(self.flushed), drained=drained)
        finally:
            keeper.cancel()
            stream.close()
            if monitor is not None:
                await asyncio.to_thread(monitor.close)

    async def _read(self, stream: ReplicationStream, monitor: Conn) -> None:
        last_probe = last_report = 0.0
        encoder = self.encoder
        while not self.stop_event.is_set():
            self.bus.raise_if_failed()
            if self.gate.paused or self.reloads.pending:
                await self._publish()  # hand over what is encoded, then hold still
                self._advance(stream)
                if self.reloads.pending:
                    await self.reloads.apply_all()
                stream.idle = False  # keepalives are not read while paused: no advance past acks
                await self.gate.hold(lambda: self._tick(stream))
                continue
            msg = await stream.next(timeout=0)
            if msg is None:  # nothing waiting on the socket: hand over what we have, then wait
                await self._publish()
                self._advance(stream)
                msg = await stream.next(timeout=0.5)
            if msg is not None:
                stream.idle = False
                encoder.feed(msg.data)
                self._pump(stream)
                if len(encoder.out) >= self._chunk or encoder.out_bytes >= self._chunk_bytes:
                    await self._publish()
            now = time.monotonic()
            if now - last_probe >= 1.0:
                last_probe = now
                self._advance(stream)
                self.latest = await asyncio.to_thread(current_lsn, monitor)
                self._metrics(stream)
                self._sink_gauges()
            if now - last_report >= 10.0:
                last_report = now
                log.info(
                    "streaming",
                    flushed_lsn=str(self.flushed),
                    events=self.stats.events,
                    queued=self.bus.queued(),
                )

    def _on_budget(self, level: str) -> None:
        """Over the WAL maximum with ``detach_sinks``: let go of the sink that holds the slot."""
        if level == "down" and self.settings.wal_budget.detach_sinks:
            loop = self.gate._loop
            if loop is not None:
                loop.call_soon_threadsafe(self.bus.detach_laggard)

    def _tick(self, stream: ReplicationStream) -> None:
        """While paused: acknowledge what the sinks delivered, keep the walsender informed."""
        self._advance(stream)
        stream.tick()

    def _pump(self, stream: ReplicationStream) -> None:
        """Feed what libpq already holds, without an ``await`` per message (the backlog hot path).

        Stops at a full chunk or when nothing is buffered; keepalives go to the stream as usual.
        """
        assert stream.conn is not None
        pgconn = stream.conn.pgconn
        encoder = self.encoder
        feed, out, chunk, chunk_bytes = encoder.feed, encoder.out, self._chunk, self._chunk_bytes
        wal_end = 0
        try:
            while len(out) < chunk and encoder.out_bytes < chunk_bytes:
                size, data = pgconn.get_copy_data(1)
                if size <= 0:
                    if size < 0:
                        raise stream._stream_end()
                    break
                if data[0] == _XLOG_DATA:
                    stream.idle = False  # a later keepalive must not advance past this data
                    wal_end = _WAL_END(data, 9)[0]
                    feed(bytes(data[25:]))
                else:
                    stream._keepalive(parse_copy_data(data))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise RetryableReplicationError(f"replication connection lost: {exc}") from exc
        finally:
            if wal_end > stream.received:
                stream.received = Lsn(wal_end)

    async def _keep_alive(self, stream: ReplicationStream) -> None:
        """While the reader waits on a full ``block`` queue, keep reporting to the walsender.

        Without it a sink slower than ``wal_sender_timeout`` would get the connection closed.
        """
        while True:
            await asyncio.sleep(min(1.0, stream.status_interval / 2))
            if self._publishing and stream.conn is not None:
                self._advance(stream)
                with contextlib.suppress(PgMigratorError):
                    stream.send_status()

    async def _publish(self) -> None:
        events, mark = self.encoder.drain()
        if events or mark is not None:
            self._publishing = True
            try:
                await self.bus.publish(events, mark)
            finally:
                self._publishing = False
            self.stats.events += len(events)
            if events:
                self.collector.add_rows(len(events))

    def _advance(self, stream: ReplicationStream) -> None:
        """Move the slot's flush position to what every durable sink acknowledged."""
        acked = self.bus.tracker.flush_lsn()
        if acked > stream.flushed:
            stream.flushed = acked
        self.flushed = max(self.flushed, stream.flushed)
        stream.idle = (
            not self.encoder.in_txn and not self.encoder.out and self.bus.tracker.caught_up()
        )

    def _metrics(self, stream: ReplicationStream) -> None:
        self.stats.transactions = self.encoder.transactions
        latest = max(self.latest, stream.received)
        commit_us = self.encoder.last_commit_time
        acked = self.bus.tracker.flush_lsn()
        if stream.idle:  # nothing pending: everything received is handled
            self.collector.set_lsns(
                applied=max(acked, stream.received),
                confirmed=stream.flushed,
                latest=latest,
                lag_s=0,
            )
            return
        self.collector.set_lsns(
            applied=acked,
            confirmed=stream.flushed,
            latest=latest,
            commit_time=(PG_EPOCH_UNIX_US + commit_us) / 1e6 if commit_us else None,
        )

    def _sink_gauges(self) -> None:
        for worker in self.bus.workers:
            self.collector.sink_counter(worker.name, queue_depth=worker.depth)
