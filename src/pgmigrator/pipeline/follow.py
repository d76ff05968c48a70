"""``pgmigrator follow``: stream changes from the slot and apply them to the destination, exactly once.

Two tasks share one ordered, bounded queue: the *reader* (event loop) receives XLogData, decodes it
and turns it into applier commands; the *apply loop* runs the blocking applier on its own thread.
The destination commits every batch together with the replication origin's LSN; only after that
commit does the stream's flush position (the slot's confirmed LSN) move. On a retryable failure
(walsender terminated, source or destination restarted) both sides reconnect with backoff and
resume from the origin's LSN: nothing is lost and nothing is applied twice. SIGINT/SIGTERM stop
after the batch in flight, with a final status update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pgmigrator.aio import first_error, wait_event
from pgmigrator.config import Settings
from pgmigrator.destination.conflicts import ConflictPolicy
from pgmigrator.destination.postgres import PostgresApplier
from pgmigrator.destination.progress import OriginProgress
from pgmigrator.errors import PgMigratorError
from pgmigrator.events import PG_EPOCH_UNIX_US
from pgmigrator.log import get_logger, set_level
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.commands import (
    BatchLimits,
    Command,
    CommandRunner,
    CommitBatch,
    Committed,
    Done,
    is_small,
)
from pgmigrator.pipeline.followstate import load_state
from pgmigrator.pipeline.gate import RunGate
from pgmigrator.pipeline.newtables import watcher
from pgmigrator.pipeline.origins import OriginFilter
from pgmigrator.pipeline.reader import Reader
from pgmigrator.pipeline.resync import load_sync_lsns
from pgmigrator.pipeline.sidetasks import confirm_durable, watch_source
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.pipeline.walbudget import WalBudgetWatcher
from pgmigrator.retry import Backoff, exhausted
from pgmigrator.source.replication import ReplicationStream
from pgmigrator.stream.reload import ReloadPlan

log = get_logger("follow")
_STOP = object()
PUMP_MESSAGES = 2_000  # messages fed between two turns of the event loop
#: After a turn that emptied the socket of at least this many messages the loop naps `NAP_S`, so
#: that the next read takes a millisecond's worth in one gulp (see `Follow._read_loop`).
NAP_MESSAGES = 64
NAP_S = 0.001


@dataclass
class FollowStats:
    transactions: int = 0
    rows: int = 0
    batches: int = 0
    reconnects: int = 0


class Follow:
    def __init__(
        self,
        settings: Settings,
        collector: Collector | None = None,
        limits: BatchLimits | None = None,
        *,
        origin_filter: OriginFilter | None = None,
        conflicts: ConflictPolicy | None = None,
    ) -> None:
        settings.require("source", "dest")
        self.settings = settings
        self.origin_filter = origin_filter  # bidirectional: drop our own changes (pipeline/bidi.py)
        self._selection: tuple[list[str], list[str]] | None = None  # the clone's table patterns
        self.conflicts = conflicts
        self.collector = collector or Collector(settings.name)
        self.limits = limits or BatchLimits()
        self.source = settings.source_target
        self.dest = settings.dest_target
        self.gate = RunGate(self.collector, "follow")
        self.stop_event = self.gate.stop_event
        self.lifecycle = self.gate.lifecycle
        self.stats = FollowStats()
        self.applied_lsn = Lsn(0)
        self.latest_lsn = Lsn(0)  # the source's current WAL position, polled every second
        self._last_report = time.monotonic()
        self._inflight = 0
        self._sentinel_pending = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply")
        self._backoff: Backoff | None = None
        self._budget: WalBudgetWatcher | None = None

    def request_stop(self) -> None:
        """Stop after the batch in flight (signal handlers, API); safe from any thread."""
        self.gate.request_stop()

    async def reload(self, plan: ReloadPlan) -> None:
        """Config reload: log level, retry and WAL budget limits apply live (sinks are stream's)."""
        new = plan.settings
        if plan.log_level:
            set_level(new.log_level)
        if plan.limits:
            if self._backoff is not None:
                self._backoff.policy = new.retry.policy()
            if self._budget is not None:
                self._budget.budget = new.wal_budget
        if plan.add or plan.remove or plan.replace or plan.filters:
            log.warning("config reload: sinks and stream filters do not apply to follow; ignored")
        self.settings = new

    def pause(self) -> str:
        """Stop consuming changes (status updates keep the walsender alive); any thread."""
        return self.gate.pause()

    def resume(self) -> str:
        return self.gate.resume()

    async def run(self) -> FollowStats:
        return await self.gate.run(self._run())

    async def _run(self) -> FollowStats:
        state = await asyncio.to_thread(load_state, self.settings, self.source, self.dest)
        slot, publication, sync_lsns = state.slot, state.publication, state.sync_lsns
        # (bidirectional: each direction's own publication, not the clone's patterns' business)
        self._selection = state.selection if self.origin_filter is None else None
        self.applied_lsn = max(self.applied_lsn, state.confirmed)
        self.collector.set_info("slot", slot)
        backoff = self._backoff = Backoff(self.settings.retry.policy())
        budget = self._budget = WalBudgetWatcher(
            self.source, slot, self.settings.wal_budget, self.collector
        )
        budget.on_lost = self.request_stop  # invalidated: stop now, even while paused
        watcher = asyncio.create_task(budget.run(self.stop_event))
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    if backoff.failures:  # `pgmigrator resync` may have moved a table's sync LSN
                        sync_lsns = await asyncio.to_thread(
                            load_sync_lsns, self.dest, self.settings.name
                        )
                    await self._session(slot, publication, sync_lsns)
                    budget.raise_if_lost()
                    return self.stats
                except PgMigratorError as exc:
                    budget.raise_if_lost()
                    if not exc.retryable:
                        raise
                    delay = backoff.failed(time.monotonic() - started)
                    if delay is None:
                        raise exhausted(exc, backoff.failures) from exc
                    self.stats.reconnects += 1
                    self.collector.record_error(exc.message, component="follow")
                    log.warning(
                        "connection lost, reconnecting",
                        error=exc.message,
                        retry_in_s=round(delay, 1),
                    )
                    await self._sleep(delay)
            budget.raise_if_lost()
            return self.stats
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            self._executor.shutdown(wait=True)

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self.stop_event, seconds)

    async def _session(
        self, slot: str, publication: str, sync_lsns: dict[tuple[str, str], Lsn]
    ) -> None:
        loop = asyncio.get_running_loop()
        applier = PostgresApplier(
            self.dest, self.settings.origin_name, collector=self.collector, conflicts=self.conflicts
        )
        # bidirectional: no streaming of in-progress transactions, whose origin PG 15 may not send
        stream = ReplicationStream(
            self.source, slot, publication, streaming=self.origin_filter is None
        )
        spill = SpillStore()
        progress = OriginProgress(self.dest, self.settings.origin_name)
        try:
            origin = await loop.run_in_executor(self._executor, applier.start)
            start = max(
                self.applied_lsn, origin
            )  # the slot never starts before its confirmed position
            self.applied_lsn = start
            await loop.run_in_executor(self._executor, stream.open, start)
            self.collector.set_phase("streaming")
            self.gate.running()
            self.collector.set_health("source", "ok")
            self.collector.set_health("destination", "ok")
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
            out: list[Command] = []
            reader = Reader(
                out.append,
                sync_lsns,
                spill,
                self.limits,
                origin_filter=self.origin_filter,
                track_times=self.conflicts is not None,
                pipeline=self.settings.name,
            )
            applied = asyncio.Event()  # the apply loop has ended
            runner = CommandRunner(applier, self.settings.name)
            try:
                async with asyncio.TaskGroup() as group:
                    apply_task = group.create_task(self._apply_loop(runner, stream, queue, applied))
                    group.create_task(
                        confirm_durable(progress, stream, applied, lambda: self.applied_lsn)
                    )
                    group.create_task(
                        watch_source(
                            self.source,
                            applied,
                            lambda at: self._source_at(at, stream),
                            watcher(
                                publication,
                                self._selection,
                                lambda missed: self.collector.set_info(
                                    "not_replicated", ", ".join(missed) or "none"
                                ),
                            ),
                        )
                    )
                    await self._read_loop(stream, reader, runner, out, queue, apply_task)
            except BaseExceptionGroup as group_error:
                raise first_error(group_error) from None
            await stream.settle()  # nothing unapplied: the slot's restart point catches up
            stream.send_status()
        finally:
            self.collector.set_health("source", "down" if not self.stop_event.is_set() else "ok")
            stream.close()
            await loop.run_in_executor(self._executor, applier.close)
            await asyncio.to_thread(progress.close)
            spill.close()

    async def _read_loop(
        self,
        stream: ReplicationStream,
        reader: Reader,
        runner: CommandRunner,
        out: list[Command],
        queue: asyncio.Queue[Any],
        apply_task: asyncio.Task[None],
    ) -> None:
        turned = time.monotonic()  # when the loop last let the other tasks run
        while not self.stop_event.is_set() and not apply_task.done():
            if self.gate.paused:
                reader.flush()  # commit what is batched, then hold still
                await self._drain(out, queue)
                stream.idle = False  # keepalives are not read while paused: no advance past commits
                await self.gate.hold(stream.tick)  # no reading (the slot buffers), status updates
                continue
            msg = await stream.next(timeout=0)
            if msg is None:  # nothing waiting on the socket: commit what is batched, then wait
                self._commit_if_free(reader, runner, out, queue, stream)
                await self._drain(out, queue)
                # else group commit: while the applier writes, what arrives joins the next batch;
                # the apply loop wakes this wait once it is free (no await since the check)
                msg = await stream.next(timeout=1.0)
            fed = 0
            if msg is not None:
                reader.feed(msg.data, msg.wal_end)
                fed = stream.pump(reader.feed, PUMP_MESSAGES, reader)  # what is here, no await each
                # what is complete goes now if the applier is free, even though more is coming
                # (waiting for a quiet socket or the batch's time limit under a steady load
                # kept the applier idle for up to `max_ms` and the follower never caught up)
                self._commit_if_free(reader, runner, out, queue, stream)
            await self._drain(out, queue)
            # an idle slot may advance past our last commit only once that commit is durable
            stream.idle = (
                reader.idle
                and queue.empty()
                and self._inflight == 0
                and stream.flushed >= self.applied_lsn
            )
            if stream.idle and reader.dropped_lsn > stream.flushed:
                stream.flushed = reader.dropped_lsn  # our own changes coming back: nothing to apply
            if NAP_MESSAGES <= fed < PUMP_MESSAGES:
                # A fast stream we keep up with: read it a millisecond at a time, not a few
                # transactions at a time. Reading every segment as it lands makes the source's
                # walsender pay for it (its kernel time 1.3 s -> 2.0-2.4 s over 200k single-row
                # transactions, where it is the bottleneck) and costs a destination commit per
                # turn. Only at high rates: a caught-up stream of a few transactions per turn
                # never waits (heartbeat p99 unchanged under pgbench -c2).
                await asyncio.sleep(NAP_S)
                turned = time.monotonic()
            if time.monotonic() - turned >= 0.005:  # a socket never empty: feedback, monitor, API
                await asyncio.sleep(0)
                turned = time.monotonic()
        if not apply_task.done():  # a finished apply loop reads nothing more: never block here
            await queue.put(_STOP)

    def _commit_if_free(
        self,
        reader: Reader,
        runner: CommandRunner,
        out: list[Command],
        queue: asyncio.Queue[Any],
        stream: ReplicationStream,
    ) -> None:
        """With the applier idle and nothing queued: commit what is batched; apply it here if small."""
        if self._inflight or not queue.empty():
            return
        reader.flush()
        if is_small(out):
            self._apply_here(runner, out, stream)

    def _apply_here(
        self, runner: CommandRunner, commands: list[Command], stream: ReplicationStream
    ) -> None:
        """Apply ``commands`` now, on the event loop's thread (the applier's thread is idle).

        A caught-up follower's path, one destination round trip: from the read loop, with
        nothing queued (no queue, no wake-up of the apply task), or from the apply loop for a
        small group (no hop to the applier's thread and back).
        """
        if not commands:
            return
        with self._applying(stream) as done:
            try:
                runner.run(commands, done)
            finally:
                commands.clear()

    @contextlib.contextmanager
    def _applying(self, stream: ReplicationStream) -> Iterator[list[Done]]:
        """A group in flight: what it reports done is recorded, even when it fails part way."""
        self._inflight = 1
        done: list[Done] = []
        try:
            yield done
        finally:
            for item in done:
                self._record(item, stream)
            self._inflight = 0

    @staticmethod
    async def _drain(out: list[Command], queue: asyncio.Queue[Any]) -> None:
        """Hand the reader's commands to the apply loop, then let it run.

        The queue is bounded: when the applier lags, we stop reading (the slot is the buffer).
        A ``put`` into a queue with room does not yield, and with a backlog the socket always has
        data, so without the explicit yield the apply loop would only see its first command once
        the queue is full (8 chunks, 40k rows into a backlog, the destination idle meanwhile).
        """
        if not out:
            return
        for cmd in out:
            await queue.put(cmd)
        out.clear()
        await asyncio.sleep(0)

    async def _apply_loop(
        self,
        runner: CommandRunner,
        stream: ReplicationStream,
        queue: asyncio.Queue[Any],
        ended: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        try:
            while not stop:
                cmd = await queue.get()
                if cmd is _STOP:
                    break
                group = [cmd]  # everything waiting is applied at once
                while not queue.empty() and not stop:
                    cmd = queue.get_nowait()
                    stop = cmd is _STOP
                    if not stop:
                        group.append(cmd)
                if is_small(group):  # caught up: the round trip blocks the loop, no hop
                    self._apply_here(runner, group, stream)
                else:  # a backlog: the read loop decodes the next chunks meanwhile
                    with self._applying(stream) as done:
                        await loop.run_in_executor(self._executor, runner.run, group, done)
                if queue.empty():
                    stream.wake()  # the read loop may commit what it gathered meanwhile
            await loop.run_in_executor(self._executor, runner.rollback)
        finally:
            ended.set()

    def _record(self, item: Done, stream: ReplicationStream) -> None:
        if isinstance(item, Committed):
            self._committed(item.batch, stream)
            self.collector.tables_applied(item.tables)
        elif item.kind == "switchover":  # its sentinel, written in the batch being applied
            self.collector.set_phase("switchover")
            self._sentinel_pending = True

    def _committed(self, cmd: CommitBatch, stream: ReplicationStream) -> None:
        self.applied_lsn = cmd.end_lsn
        self.stats.transactions += cmd.transactions
        self.stats.rows += cmd.rows
        self.stats.batches += 1
        if (
            self._sentinel_pending
        ):  # the batch that carried the sentinel is durable: everything before it is here
            self._sentinel_pending = False
            self.collector.set_phase("switchover-complete")
            log.info("switchover sentinel applied", lsn=str(cmd.end_lsn))
        self.collector.add_rows(cmd.rows)
        self.collector.set_lsns(
            applied=cmd.end_lsn,
            confirmed=stream.flushed,
            latest=max(self.latest_lsn, stream.received),
            commit_time=(PG_EPOCH_UNIX_US + cmd.commit_time) / 1e6,  # the lag in time
        )

    def _source_at(self, position: Lsn | None, stream: ReplicationStream) -> None:
        """The source's WAL position (every second): the lag, and a progress line every 5 s."""
        if position is not None:
            self.latest_lsn = position
        self._publish_lsns(stream)
        if time.monotonic() - self._last_report >= 5.0:
            self._last_report = time.monotonic()
            self._report(stream)

    def _publish_lsns(self, stream: ReplicationStream) -> int:
        """Push applied / confirmed / latest positions to the collector; returns the lag in bytes."""
        latest = max(self.latest_lsn, stream.received)
        self.collector.set_lsns(
            applied=max(self.applied_lsn, stream.flushed), confirmed=stream.flushed, latest=latest
        )
        return max(0, latest - max(self.applied_lsn, stream.flushed))

    def _report(self, stream: ReplicationStream) -> None:
        self._publish_lsns(stream)
        snap = self.collector.snapshot()
        busiest = sorted(snap["tables"], key=lambda t: t.get("rows_applied") or 0, reverse=True)
        log.info(
            "streaming",
            pipeline=self.settings.name,  # two of them with --bidirectional
            applied_lsn=str(self.applied_lsn),
            lag=snap["lag_formatted"],
            rows_per_s=round(snap["rows_per_s"]),
            transactions=self.stats.transactions,
            rows=self.stats.rows,
            tables=", ".join(  # the busiest three, rows applied since the start
                f"{t['schema']}.{t['name']}={t['rows_applied']}"
                for t in busiest[:3]
                if t.get("rows_applied")
            ),
        )
