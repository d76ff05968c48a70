"""The bus: fan-out of event chunks to every sink through a bounded queue per sink.

Each sink has a worker task that takes queued chunks, merges them into batches of up to
``batch`` events and calls ``sink.send``. Per sink, a backpressure policy decides what a full queue
means: ``block`` (the publisher waits: nothing is lost, the slot buffers the rest) or ``drop``
(only for non-durable sinks: the chunk is dropped, counted and logged at most every few seconds),
so one slow ``drop`` sink never stalls the others. Retryable send errors are retried with
exponential backoff and jitter (health ``degraded``); a non-retryable one stops the pipeline:
every failure goes through `Bus._fatal`, the one place a dead-letter queue can plug into.
Delivered marks are acknowledged to the `AckTracker`. A sink with a ``linger_s`` attribute
(webhook ``batch_ms``) gets up to that long for a batch to fill before each send.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pgmigrator.aio import wait_event
from pgmigrator.errors import PgMigratorError, RetryableSinkError, SinkError, is_retryable
from pgmigrator.log import get_logger
from pgmigrator.lsn import ZERO, Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks.base import Event, Sink
from pgmigrator.stream.ack import AckTracker
from pgmigrator.stream.dlq import DeadLetterQueue

log = get_logger("bus")
DETACHED = SinkError(
    "detached: the slot went over its WAL budget while this sink held it back",
    hint="replay the dead-lettered events once the sink is back (`pgmigrator dlq replay`)",
)
Policy = Literal["block", "drop"]


@dataclass
class SinkPolicy:
    policy: Policy = "block"
    queue: int = 20_000  # events queued at most (one chunk may overshoot it)
    queue_bytes: int = 64 << 20  # bytes of event documents queued at most (idem)
    batch: int = 5_000  # events per send at most
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    max_attempts: int = 0  # sends of a batch on retryable errors before giving up (0: never)


class SinkWorker:
    def __init__(self, bus: Bus, sink: Sink, policy: SinkPolicy) -> None:
        self.bus = bus
        self.sink = sink
        self.name = sink.name
        self.policy = policy
        self.depth = 0
        self.depth_bytes = 0
        self.dropped = 0
        self.delivered = 0
        self._items: deque[tuple[Sequence[Event], Lsn | None, int]] = deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closing = False
        self.detached = False  # over the WAL budget: everything goes to the dead-letter queue
        self._detach = asyncio.Event()
        self._health = ""
        self._drop_logged = 0.0
        self._drops_since_log = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return self.depth >= self.policy.queue or self.depth_bytes >= self.policy.queue_bytes

    async def put(self, events: Sequence[Event], mark: Lsn | None, nbytes: int) -> None:
        if self.full and self.policy.policy == "drop":
            self._drop(len(events))
            return
        while self.full:
            self.bus.raise_if_failed()
            if self.bus.interrupted:
                return  # stopping: not queued, so never acknowledged (replayed on restart)
            self._space.clear()
            await self._space.wait()
        self._items.append((events, mark, nbytes))
        self.depth += len(events)
        self.depth_bytes += nbytes
        self._empty.clear()
        self._wakeup.set()

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._drops_since_log += n
        self.bus.collector.sink_counter(self.name, dropped=n, queue_depth=self.depth)
        now = time.monotonic()
        if now - self._drop_logged >= 5.0:
            log.warning(
                "sink queue full, dropping events",
                sink=self.name,
                dropped=self._drops_since_log,
                dropped_total=self.dropped,
            )
            self._drop_logged, self._drops_since_log = now, 0

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        linger = float(getattr(self.sink, "linger_s", 0) or 0)
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if linger > 0:
                await self._linger(linger)
            batch, mark, nbytes = self._take()
            sent = await self._deliver(batch) if batch else 0
            if mark is not None and self.sink.durable:
                self.bus.tracker.ack(self.name, mark)
            self.depth -= len(batch)
            self.depth_bytes -= nbytes
            self._space.set()
            if not self._items:
                self._empty.set()
            self.bus.collector.sink_counter(self.name, delivered=sent, queue_depth=self.depth)

    async def _linger(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a full batch (a sink's ``linger_s``, e.g. webhook ``batch_ms``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.depth < self.policy.batch and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            await wait_event(self._wakeup, remaining)

    def _take(self) -> tuple[Sequence[Event], Lsn | None, int]:
        events, mark, nbytes = self._items.popleft()
        if not self._items or len(events) >= self.policy.batch:
            return events, mark, nbytes
        batch = list(events)
        while self._items and len(batch) + len(self._items[0][0]) <= self.policy.batch:
            more, more_mark, more_bytes = self._items.popleft()
            batch.extend(more)
            nbytes += more_bytes
            if more_mark is not None:
                mark = more_mark
        return batch, mark, nbytes

    async def _deliver(self, batch: Sequence[Event]) -> int:
        """Send ``batch``; returns how many events were delivered (the rest was dead-lettered).

        A sink that says how far it got (`SinkError.delivered` / ``failed``) has only the rest
        re-sent; what it gives up on goes to the dead-letter queue (or stops the pipeline).
        """
        delay = self.policy.retry_initial_s
        attempt, pending, sent = 0, batch, 0
        while pending:
            if self.detached:
                await self.bus.dead_letter(self, pending, DETACHED, attempt)
                break
            attempt += 1
            try:
                if not await self._send(pending):
                    continue  # detached meanwhile: dead-lettered at the top of the loop
            except Exception as exc:
                error = _as_sink_error(self.name, exc)
                done = min(max(error.delivered, 0), len(pending))
                failed = len(pending) - done if error.failed is None else error.failed
                sent += done
                bad, pending = pending[done : done + failed], pending[done:]
                self.bus.collector.sink_counter(self.name, failed=len(bad))
                limit = self.policy.max_attempts
                if error.retryable and not (limit and attempt >= limit):
                    delay = await self._backoff(error, delay, len(pending))
                    continue
                if self.bus.dlq is None:
                    raise self.bus._fatal(self, error) from exc
                await self.bus.dead_letter(self, bad, error, attempt)
                pending, attempt = pending[len(bad) :], 0
                continue
            sent += len(pending)
            pending = ()
        self.delivered += sent
        if sent == len(batch):
            self._set_health("ok")
        return sent

    async def _send(self, events: Sequence[Event]) -> bool:
        """``sink.send``, cut short (False) when the sink is detached while it runs."""
        send = asyncio.ensure_future(self.sink.send(events))
        detach = asyncio.ensure_future(self._detach.wait())
        await asyncio.wait({send, detach}, return_when=asyncio.FIRST_COMPLETED)
        detach.cancel()
        if send.done():
            send.result()
            return True
        send.cancel()
        await asyncio.gather(send, return_exceptions=True)
        return False

    def detach(self) -> None:
        self.detached = True
        self._detach.set()

    async def _backoff(self, error: SinkError, delay: float, events: int) -> float:
        self._set_health("degraded", error.message)
        log.warning(
            "sink failed, retrying", sink=self.name, error=error.message, retry_in_s=round(delay, 2)
        )
        await wait_event(self._detach, delay * random.uniform(0.5, 1.0))  # a detach cuts it short
        self.bus.collector.sink_counter(self.name, retried=events)
        return min(delay * 2, self.policy.retry_max_s)

    def _set_health(self, status: Literal["ok", "degraded", "down"], detail: str = "") -> None:
        if status != self._health:
            self._health = status
            self.bus.collector.set_health(f"sink:{self.name}", status, detail)


def _as_sink_error(name: str, exc: BaseException) -> SinkError:
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, PgMigratorError):
        cls = RetryableSinkError if exc.retryable else SinkError
        return cls(exc.message, hint=exc.hint)
    cls = RetryableSinkError if is_retryable(exc) else SinkError
    return cls(f"sink {name!r}: {type(exc).__name__}: {exc}")


class Bus:
    def __init__(
        self,
        sinks: Sequence[tuple[Sink, SinkPolicy]],
        collector: Collector,
        start: Lsn = ZERO,
        dlq: DeadLetterQueue | None = None,
    ) -> None:
        self.collector = collector
        self.dlq = dlq
        self.workers = [SinkWorker(self, sink, policy) for sink, policy in sinks]
        self.tracker = AckTracker([w.name for w in self.workers if w.sink.durable], start)
        self.failure: SinkError | None = None
        self.failed = asyncio.Event()
        self.aborting = False
        self.interrupted = False
        self.published_events = 0
        self._closed: bool | None = None

    def interrupt(self) -> None:
        """Stop accepting chunks (on SIGINT/SIGTERM): a publisher blocked on a full queue returns.

        What is already queued is still delivered by `close`.
        """
        self.interrupted = True
        for worker in self.workers:
            worker._space.set()

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _fatal(self, worker: SinkWorker, error: SinkError) -> SinkError:
        """A sink gave up: report it and stop the pipeline (the dead-letter queue plugs in here)."""
        worker._set_health("down", error.message)
        self.collector.record_error(error.message, component=f"sink:{worker.name}")
        log.error("sink failed", sink=worker.name, error=error.message)
        failure = SinkError(
            f"sink {worker.name!r} failed: {error.message}",
            hint=error.hint or "fix the sink, then restart: unacknowledged events are replayed",
        )
        if self.failure is None:
            self.failure = failure
        self.failed.set()
        for other in self.workers:
            other._space.set()  # wake publishers blocked on any queue
        return failure

    async def dead_letter(
        self, worker: SinkWorker, batch: Sequence[Event], error: SinkError, attempts: int
    ) -> None:
        """Park a batch the sink gave up on in the dead-letter queue; the stream moves on."""
        assert self.dlq is not None
        try:
            await self.dlq.put(worker.name, batch, error.message, attempts)
        except PgMigratorError as exc:
            raise self._fatal(
                worker,
                SinkError(
                    f"{error.message}; and the dead-letter queue failed too: {exc.message}",
                    hint=exc.hint,
                ),
            ) from exc
        self.collector.sink_counter(worker.name, dead_lettered=len(batch))
        self.collector.record_error(
            f"{len(batch)} event(s) dead-lettered: {error.message}", component=f"sink:{worker.name}"
        )
        if not worker.detached:
            worker._set_health("degraded", f"events dead-lettered: {error.message}")

    def detach_laggard(self) -> str | None:
        """Detach the durable sink that holds the slot back the most (needs a DLQ); its name."""
        if self.dlq is None:
            return None
        candidates = [w for w in self.workers if w.sink.durable and not w.detached and w.depth]
        if not candidates:
            return None
        worker = min(candidates, key=lambda w: self.tracker.acked(w.name) or ZERO)
        worker.detach()
        worker._set_health("down", DETACHED.message)
        log.error(
            "sink detached: the slot is over its WAL maximum",
            sink=worker.name,
            hint="its events go to the dead-letter queue (`pgmigrator dlq replay` once it is back); "
            "restart the stream to attach it again",
        )
        self.collector.record_error(DETACHED.message, component=f"sink:{worker.name}")
        return worker.name

    async def add_sink(self, sink: Sink, policy: SinkPolicy, *, started: bool = False) -> None:
        """Add a sink while streaming (starting it unless ``started``): it gets what comes next."""
        worker = SinkWorker(self, sink, policy)
        if started:
            worker._set_health("ok")
            self.collector.sink_counter(worker.name, queue_depth=0)
        else:
            await self._start_worker(worker)
        self.workers.append(worker)
        if sink.durable:
            self.tracker.add(worker.name)
        worker.task = asyncio.create_task(self._run(worker), name=f"sink:{worker.name}")

    async def remove_sink(self, name: str, timeout: float = 30.0) -> bool:
        """Deliver what the sink has queued, then stop and close it; whether all was delivered."""
        worker = next((w for w in self.workers if w.name == name), None)
        if worker is None:
            return True
        self.workers.remove(worker)  # publishes from now on skip it
        worker.close()
        drained = True
        if worker.task is not None:
            done, _ = await asyncio.wait([worker.task], timeout=timeout)
            if not done:
                drained = False
                worker.task.cancel()
                await asyncio.gather(worker.task, return_exceptions=True)
        self.tracker.remove(name)
        try:
            await worker.sink.close()
        except Exception as exc:
            log.warning("sink did not close cleanly", sink=name, error=str(exc))
        worker._set_health("ok", "removed")
        return drained

    async def _start_worker(self, worker: SinkWorker) -> None:
        try:
            await worker.sink.start()
        except Exception as exc:
            error = _as_sink_error(worker.name, exc)
            raise SinkError(
                f"sink {worker.name!r} cannot start: {error.message}", hint=error.hint
            ) from exc
        worker._set_health("ok")
        self.collector.sink_counter(worker.name, queue_depth=0)

    async def start(self) -> None:
        """Start every sink (saying which one cannot start and why), then their workers."""
        for worker in self.workers:
            await self._start_worker(worker)
        for worker in self.workers:
            worker.task = asyncio.create_task(self._run(worker), name=f"sink:{worker.name}")

    async def _run(self, worker: SinkWorker) -> None:
        with contextlib.suppress(SinkError):
            await worker.run()

    async def publish(self, events: Sequence[Event], mark: Lsn | None = None) -> None:
        """Queue a chunk for every sink (waits on full ``block`` queues); ``mark``: see `AckTracker`."""
        self.raise_if_failed()
        if self.interrupted:
            return
        if mark is not None:
            self.tracker.publish(mark)
        if not events and mark is None:
            return
        self.published_events += len(events)
        nbytes = sum([len(e.body) for e in events])
        for worker in list(self.workers):
            await worker.put(events, mark, nbytes)
        self.raise_if_failed()

    async def wait_delivered(self) -> None:
        """Wait until every sink delivered everything queued so far (or one failed)."""
        for worker in self.workers:
            while not worker._empty.is_set():
                self.raise_if_failed()
                waiter = asyncio.ensure_future(worker._empty.wait())
                failed = asyncio.ensure_future(self.failed.wait())
                await asyncio.wait([waiter, failed], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                failed.cancel()
        self.raise_if_failed()

    def queued(self) -> int:
        return sum(w.depth for w in self.workers)

    async def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued (up to ``timeout`` seconds), then close every sink.

        Returns whether everything queued was delivered; what was not stays unacknowledged and is
        replayed from the slot on the next start. Closing twice returns the first result.
        """
        if self._closed is not None:
            return self._closed
        self._closed = False
        for worker in self.workers:
            worker.close()
        tasks = [w.task for w in self.workers if w.task is not None]
        drained = True
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                drained = False
                self.aborting = True
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for worker in self.workers:
            try:
                await worker.sink.close()
            except Exception as exc:  # closing must not hide the stop; say what happened
                log.warning("sink did not close cleanly", sink=worker.name, error=str(exc))
        self._closed = drained and self.failure is None
        return self._closed
