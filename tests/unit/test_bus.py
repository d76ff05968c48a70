"""The bus and the ack tracker: block/drop policies, a slow sink not stalling others, retries, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from pgmigrator.errors import RetryableSinkError, SinkError
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks.base import Event
from pgmigrator.stream.ack import AckTracker
from pgmigrator.stream.bus import Bus, SinkPolicy


def ev(i: int) -> Event:
    return Event(f"0/{i:X}:1", Lsn(i), "c", "s", "t", b'{"i":%d}' % i)


class RecordingSink:
    """Delivers into a list; ``gate`` (when set) holds every send until opened."""

    def __init__(self, name: str, durable: bool = True, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.durable = durable
        self.gate = gate
        self.got: list[str] = []
        self.batches: list[int] = []
        self.fail_times = 0
        self.fatal = False
        self.closed = False
        self.start_error: Exception | None = None

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def send(self, events: Sequence[Event]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fatal:
            raise SinkError("receiver said 400 bad request")
        if self.fail_times:
            self.fail_times -= 1
            raise RetryableSinkError("receiver said 503")
        self.got.extend(e.id for e in events)
        self.batches.append(len(events))

    async def close(self) -> None:
        self.closed = True


FAST = {"retry_initial_s": 0.001, "retry_max_s": 0.002}


async def test_block_policy_waits_and_loses_nothing() -> None:
    gate = asyncio.Event()
    slow = RecordingSink("slow", gate=gate)
    bus = Bus([(slow, SinkPolicy("block", queue=3, batch=2, **FAST))], Collector())
    await bus.start()
    publisher = asyncio.create_task(_publish_all(bus, [[ev(i)] for i in range(1, 11)], marks=True))
    await asyncio.wait_for(until(lambda: bus.workers[0].full), 5)
    assert not publisher.done()  # blocked on the full queue
    assert bus.workers[0].depth <= 4
    gate.set()
    await publisher
    assert await bus.close(5)
    assert slow.got == [ev(i).id for i in range(1, 11)]
    assert max(slow.batches) <= 2
    assert bus.tracker.flush_lsn() == Lsn(10)
    assert slow.closed


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


async def _publish_all(bus: Bus, chunks: list[list[Event]], marks: bool = False) -> None:
    for chunk in chunks:
        await bus.publish(chunk, chunk[-1].lsn if marks else None)


async def test_slow_drop_sink_never_stalls_a_durable_one() -> None:
    collector = Collector()
    gate = asyncio.Event()
    live = RecordingSink("live", durable=False, gate=gate)
    fast = RecordingSink("fast")
    bus = Bus(
        [(live, SinkPolicy("drop", queue=2, **FAST)), (fast, SinkPolicy("block", queue=5, **FAST))],
        collector,
    )
    await bus.start()
    await asyncio.wait_for(_publish_all(bus, [[ev(i)] for i in range(1, 101)], marks=True), 5)
    await asyncio.wait_for(bus.workers[1]._empty.wait(), 5)
    assert fast.got == [ev(i).id for i in range(1, 101)]
    assert bus.tracker.flush_lsn() == Lsn(100)  # the live sink does not hold the slot
    assert collector.snapshot()["sinks"]["live"]["dropped"] > 0
    gate.set()
    assert await bus.close(5)
    dropped = collector.snapshot()["sinks"]["live"]["dropped"]
    assert len(live.got) + dropped == 100  # every event either delivered or counted as dropped
    assert dropped == bus.workers[0].dropped


async def test_retryable_errors_are_retried_then_delivered() -> None:
    collector = Collector()
    sink = RecordingSink("hook")
    sink.fail_times = 3
    bus = Bus([(sink, SinkPolicy(**FAST))], collector)
    await bus.start()
    await bus.publish([ev(1), ev(2)], Lsn(2))
    await bus.wait_delivered()
    assert sink.got == [ev(1).id, ev(2).id]
    sinks = collector.snapshot()["sinks"]
    assert collector.snapshot()["health"]["sink:hook"]["status"] == "ok"
    assert sinks["hook"]["retried"] == 6 and sinks["hook"]["failed"] == 6
    assert sinks["hook"]["delivered"] == 2
    assert bus.tracker.flush_lsn() == Lsn(2)
    assert await bus.close(5)


async def test_non_retryable_error_stops_the_pipeline() -> None:
    collector = Collector()
    bad = RecordingSink("bad")
    bad.fatal = True
    good = RecordingSink("good")
    bus = Bus([(bad, SinkPolicy(queue=1, **FAST)), (good, SinkPolicy(**FAST))], collector)
    await bus.start()
    with pytest.raises(SinkError, match="sink 'bad' failed: receiver said 400"):
        for i in range(1, 50):
            await bus.publish([ev(i)], Lsn(i))
    assert bus.tracker.flush_lsn() == Lsn(0)  # nothing acknowledged by the failed durable sink
    assert not await bus.close(5)


async def test_sink_that_cannot_start_is_named() -> None:
    sink = RecordingSink("files")
    sink.start_error = SinkError("cannot open /nope/x: Permission denied", hint="check it")
    bus = Bus([(sink, SinkPolicy())], Collector())
    with pytest.raises(SinkError, match="sink 'files' cannot start: cannot open /nope/x"):
        await bus.start()


def test_ack_tracker_is_the_minimum_over_durable_sinks() -> None:
    t = AckTracker(["a", "b"], Lsn(10))
    t.publish(Lsn(50))
    assert t.flush_lsn() == Lsn(10)
    t.ack("a", Lsn(50))
    assert t.flush_lsn() == Lsn(10)
    t.ack("b", Lsn(30))
    assert t.flush_lsn() == Lsn(30)
    t.ack("b", Lsn(20))  # never backwards
    assert t.flush_lsn() == Lsn(30)
    t.ack("live", Lsn(99))  # not a durable sink: ignored
    assert t.acked("live") is None
    assert not t.caught_up()
    t.ack("b", Lsn(50))
    assert t.caught_up() and t.flush_lsn() == Lsn(50)


def test_ack_tracker_without_durable_sinks_follows_publishing() -> None:
    t = AckTracker([], Lsn(5))
    assert t.flush_lsn() == Lsn(5)
    t.publish(Lsn(40))
    assert t.flush_lsn() == Lsn(40)


async def test_queue_is_bounded_in_bytes_too() -> None:
    gate = asyncio.Event()
    live = RecordingSink("live", durable=False, gate=gate)
    bus = Bus([(live, SinkPolicy("drop", queue=1000, queue_bytes=20, **FAST))], Collector())
    await bus.start()
    for i in range(1, 11):
        await bus.publish([ev(i)])  # 8 bytes each: the third chunk finds 16+ bytes queued
    worker = bus.workers[0]
    assert worker.depth_bytes <= 24
    assert worker.dropped > 0
    gate.set()
    assert await bus.close(5)
    assert len(live.got) + worker.dropped == 10
    assert worker.depth == 0 and worker.depth_bytes == 0


async def test_interrupt_releases_a_publisher_blocked_on_a_stuck_sink() -> None:
    gate = asyncio.Event()
    stuck = RecordingSink("stuck", gate=gate)
    bus = Bus([(stuck, SinkPolicy("block", queue=1, **FAST))], Collector())
    await bus.start()
    publisher = asyncio.create_task(_publish_all(bus, [[ev(i)] for i in range(1, 20)], marks=True))
    await asyncio.wait_for(until(lambda: bus.workers[0].full), 5)
    bus.interrupt()
    await asyncio.wait_for(publisher, 5)  # returns instead of waiting for the stuck sink
    assert not await bus.close(0.05)  # what was queued could not be delivered in time
    assert bus.tracker.flush_lsn() == Lsn(0)  # nothing acknowledged: all replayed on restart


async def test_linger_fills_a_batch_before_sending() -> None:
    sink = RecordingSink("hook")
    sink.linger_s = 5.0  # type: ignore[attr-defined]
    bus = Bus([(sink, SinkPolicy(batch=3, **FAST))], Collector())
    await bus.start()
    for i in range(1, 4):
        await bus.publish([ev(i)], Lsn(i))  # the third chunk fills the batch: no 5 s wait
    await asyncio.wait_for(bus.wait_delivered(), 2)
    assert sink.batches == [3]
    await bus.publish([ev(4)], Lsn(4))
    assert await bus.close(2)  # closing does not wait for the linger either
    assert sink.batches == [3, 1]
