"""Unit tests of the metrics collector, sliding window, log ring and snapshot push."""

from __future__ import annotations

import asyncio
import logging
import threading

import orjson
import pytest

from pgmigrator.lsn import Lsn
from pgmigrator.metrics import (
    Collector,
    CollectorLogHandler,
    LogEntry,
    LogRing,
    SlidingWindow,
    TableEstimate,
)

WALL0 = 1_772_200_000.0  # 2026-02-27


class FakeClock:
    """Monotonic and wall clocks moved by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def collector(clock: FakeClock) -> Collector:
    return Collector("test", clock=clock.monotonic, wall_clock=clock.time)


# -- sliding window ------------------------------------------------------------------------------


def test_window_steady_rate_over_the_last_minute() -> None:
    w = SlidingWindow(60)
    for i in range(120):
        w.add(100, now=i + 0.5)
    assert w.rate(now=120.0) == pytest.approx(100.0)
    assert w.total == 12_000
    assert w.window_sum(now=120.0) == 59 * 100  # buckets 61..119 remain


def test_window_young_rate_is_not_diluted_by_the_unfilled_window() -> None:
    w = SlidingWindow(60)
    for i in range(10):
        w.add(50, now=200 + i)
    assert w.rate(now=210.0) == pytest.approx(50.0)


def test_window_old_buckets_expire() -> None:
    w = SlidingWindow(60)
    w.add(600, now=0.0)
    assert w.rate(now=30.0) == pytest.approx(20.0)
    assert w.rate(now=59.9) > 0
    assert w.rate(now=60.0) == 0.0
    assert w.window_sum(now=60.0) == 0
    assert w.total == 600  # the lifetime total stays


def test_window_gap_counts_as_idle_time() -> None:
    w = SlidingWindow(60)
    for i in range(60):
        w.add(10, now=float(i))
    w.add(60, now=100.0)  # 40 s of nothing, then a burst
    # Buckets 41..100 remain: 19 old ones and the burst, averaged over the window's 59.5 s.
    assert w.rate(now=100.5) == pytest.approx((19 * 10 + 60) / 59.5)
    assert w.rate(now=160.0) == 0.0


def test_window_first_burst_is_averaged_over_at_least_a_second() -> None:
    w = SlidingWindow(60)
    w.add(50, now=10.2)
    assert w.rate(now=10.3) == pytest.approx(50.0)
    assert SlidingWindow(60).rate(now=5.0) == 0.0


def test_window_armed_before_the_first_report() -> None:
    w = SlidingWindow(60)
    w.arm(now=100.0)
    w.arm(now=105.0)  # only the first arming counts
    w.add(1000, now=110.0)
    assert w.rate(now=110.0) == pytest.approx(100.0)
    w.arm(now=0.0)  # already measuring: ignored
    assert w.rate(now=110.0) == pytest.approx(100.0)


def test_window_uses_its_clock_and_tolerates_a_clock_stepping_back(clock: FakeClock) -> None:
    w = SlidingWindow(60, clock=clock.monotonic)
    w.add(5)
    clock.advance(2)
    w.add(5)
    w.add(5, now=clock.mono - 1.5)  # older than the newest bucket: added to it
    assert w.window_sum() == 15
    assert w.rate() == pytest.approx(7.5)


def test_window_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0.5, bucket_s=1)


# -- log ring ------------------------------------------------------------------------------------


def _entry(i: int) -> LogEntry:
    return LogEntry(time=WALL0 + i, level="info", component="t", message=f"m{i}")


def test_ring_keeps_up_to_capacity() -> None:
    ring = LogRing(500)
    for i in range(500):
        ring.append(_entry(i))
    assert len(ring) == 500
    assert ring.dropped == 0


def test_ring_evicts_the_oldest_quarter_at_once() -> None:
    ring = LogRing(500)
    for i in range(501):
        ring.append(_entry(i))
    entries = ring.entries()
    assert len(entries) == 376
    assert entries[0].message == "m125"
    assert entries[-1].message == "m500"
    assert ring.dropped == 125
    for i in range(501, 625):  # fills up again without evicting
        ring.append(_entry(i))
    assert len(ring) == 500
    assert [e.message for e in ring.entries(2)] == ["m623", "m624"]
    assert ring.entries(0) == []


def test_log_entry_fields_are_json_ready() -> None:
    entry = LogEntry(WALL0, "info", "c", "m", {"lsn": Lsn(0x1_0000_0010), "n": 3, "o": object})
    d = entry.to_dict()
    assert d["fields"]["lsn"] == "1/10"
    assert d["fields"]["n"] == 3
    assert isinstance(d["fields"]["o"], str)
    assert d["time"] == "2026-02-27T13:46:40.000Z"
    orjson.dumps(d)


# -- collector -----------------------------------------------------------------------------------


def test_table_lifecycle(collector: Collector, clock: FakeClock) -> None:
    collector.set_tables([TableEstimate("public", "a", 1000, 8000), TableEstimate("public", "b")])
    collector.table_started("public", "a")
    clock.advance(10)
    collector.table_progress("public", "a", 250, 2000)
    snap = collector.snapshot()
    a = snap["tables"][0]
    assert (a["state"], a["percent"], a["rows_copied"], a["elapsed_s"]) == (
        "copying",
        25.0,
        250,
        10,
    )
    assert a["rows_per_s"] == 25.0
    assert a["eta_s"] == 30.0
    assert a["started_at"] == "2026-02-27T13:46:40.000Z"
    assert snap["tables_by_state"] == {"copying": 1, "pending": 1}
    assert snap["rows_per_s"] == 25.0  # measured from the start of the COPY, not its report
    clock.advance(10)
    collector.table_done("public", "a", rows_copied=1010)  # estimates are only estimates
    collector.table_streaming("public", "b")
    snap = collector.snapshot()
    a, b = snap["tables"]
    assert (a["state"], a["percent"], a["rows_copied"], a["elapsed_s"]) == ("copied", 100, 1010, 20)
    assert a["finished_at"] == "2026-02-27T13:47:00.000Z"
    assert b["state"] == "streaming"
    assert (snap["tables_total"], snap["tables_copied"]) == (2, 2)
    assert (snap["total_rows"], snap["total_bytes"]) == (1010, 2000)


def test_table_progress_feeds_totals_by_increase_only(collector: Collector) -> None:
    collector.table_progress("s", "t", 100, 1000)  # unknown table: registered, copying
    collector.table_progress("s", "t", 300, 3000)
    collector.table_started("s", "t")  # a retry starts over
    collector.table_progress("s", "t", 50, 500)
    collector.table_advance("s", "t", 5, 50)
    snap = collector.snapshot()
    assert (snap["total_rows"], snap["total_bytes"]) == (355, 3550)
    assert snap["tables"][0]["rows_copied"] == 55


def test_table_errored_counts_an_error(collector: Collector) -> None:
    collector.table_started("s", "t")
    collector.table_errored("s", "t", RuntimeError("disk on fire"))
    snap = collector.snapshot()
    assert snap["tables"][0]["state"] == "errored"
    assert snap["tables"][0]["error"] == "disk on fire"
    assert snap["error_count"] == 1
    assert snap["last_error"]["component"] == "table s.t"
    assert snap["last_error"]["type"] == "RuntimeError"


def test_rates_come_from_the_sliding_window(collector: Collector, clock: FakeClock) -> None:
    for _ in range(30):
        collector.add_rows(100, 1000)
        clock.advance(1)
    snap = collector.snapshot()
    assert snap["rows_per_s"] == pytest.approx(100.0)
    assert snap["bytes_per_s"] == pytest.approx(1000.0)
    clock.advance(61)
    snap = collector.snapshot()
    assert (snap["rows_per_s"], snap["total_rows"]) == (0.0, 3000)


def test_streaming_rows_are_counted_per_table(collector: Collector) -> None:
    collector.add_rows(7, 70, schema="s", table="t")
    collector.record_applied("0/10", 3, 30)
    snap = collector.snapshot()
    assert snap["tables"][0]["rows_applied"] == 7
    assert (snap["total_rows"], snap["total_bytes"]) == (10, 100)
    assert snap["applied_lsn"] == "0/10"
    collector.set_table_state("s", "t", "copied")
    collector.set_table_state("s", "gone", "errored")
    collector.tables_applied({("s", "t"): 5, ("s", "gone"): 1, ("s", "new"): 2})  # a follow batch
    tables = {t["name"]: t for t in collector.snapshot()["tables"]}
    assert {n: (t["rows_applied"], t["state"]) for n, t in tables.items()} == {
        "t": (12, "streaming"),
        "gone": (1, "errored"),  # an error stays visible
        "new": (2, "streaming"),
    }
    assert collector.snapshot()["total_rows"] == 10  # totals are add_rows'


def test_lsns_and_lag(collector: Collector, clock: FakeClock) -> None:
    snap = collector.snapshot()
    assert (snap["applied_lsn"], snap["lag_bytes"], snap["lag_formatted"]) == (
        None,
        None,
        "unknown",
    )
    collector.set_lsns(applied=Lsn(0x100), confirmed=0x80, latest="0/1100", commit_time=WALL0 - 3)
    clock.advance(1)
    snap = collector.snapshot()
    assert (snap["applied_lsn"], snap["confirmed_lsn"], snap["latest_lsn"]) == (
        "0/100",
        "0/80",
        "0/1100",
    )
    assert snap["lag_bytes"] == 4096
    assert snap["lag_s"] == 4.0
    assert snap["lag_formatted"] == "4.0 KiB, 4s behind"
    collector.set_lsns(lag_s=1.5)
    assert collector.snapshot()["lag_s"] == 1.5
    collector.set_lsns(applied="0/2000")  # ahead of a stale latest: never negative
    snap = collector.snapshot()
    assert (snap["lag_bytes"], snap["lag_s"], snap["lag_formatted"]) == (0, 0.0, "caught up")


def test_phase_state_uptime_and_timestamp(collector: Collector, clock: FakeClock) -> None:
    clock.advance(5)
    collector.set_phase("copy")
    collector.set_state("running")
    clock.advance(2.5)
    snap = collector.snapshot()
    assert (snap["pipeline"], snap["phase"], snap["state"]) == ("test", "copy", "running")
    assert snap["uptime_s"] == 7.5
    assert snap["timestamp"] == "2026-02-27T13:46:47.500Z"
    assert snap["started_at"] == "2026-02-27T13:46:40.000Z"
    assert snap["phase_since"] == "2026-02-27T13:46:45.000Z"
    assert collector.phase == "copy"


def test_errors_sinks_health_info(collector: Collector, clock: FakeClock) -> None:
    collector.record_error("first")
    collector.record_error(ValueError("second"), component="applier")
    collector.sink_counter("kafka", delivered=10, queue_depth=4)
    collector.sink_counter("kafka", delivered=5, failed=1, retried=2, dropped=3, queue_depth=1)
    collector.set_health("source", "ok")
    clock.advance(3)
    collector.set_health("source", "ok", "still fine")  # same status keeps its since
    collector.set_health("dest", "down", "connection refused")
    collector.update_info({"slot": "pgm_slot", "source": "postgresql://u@h/db"})
    collector.set_info("start_lsn", Lsn(16))
    snap = collector.snapshot()
    assert snap["error_count"] == 2
    assert snap["last_error"]["message"] == "second"
    assert snap["sinks"] == {
        "kafka": {
            "delivered": 15,
            "failed": 1,
            "retried": 2,
            "dropped": 3,
            "dead_lettered": 0,
            "queue_depth": 1,
        }
    }
    assert snap["health"]["source"] == {
        "status": "ok",
        "detail": "still fine",
        "since": "2026-02-27T13:46:40.000Z",
    }
    assert snap["health"]["dest"]["status"] == "down"
    assert snap["info"] == {
        "slot": "pgm_slot",
        "source": "postgresql://u@h/db",
        "start_lsn": "0/10",
    }
    with pytest.raises(ValueError):
        collector.set_health("x", "sad")  # type: ignore[arg-type]


def test_snapshot_is_json_ready_and_detached(collector: Collector) -> None:
    collector.table_started("s", "t")
    collector.log("info", "c", "hello", lsn=Lsn(1))
    snap = collector.snapshot()
    assert orjson.loads(orjson.dumps(snap)) == snap
    snap["tables"][0]["state"] = "mangled"
    snap["info"]["x"] = 1
    again = collector.snapshot()
    assert again["tables"][0]["state"] == "copying"
    assert again["info"] == {}


def test_log_ring_through_the_collector(clock: FakeClock) -> None:
    c = Collector(clock=clock.monotonic, wall_clock=clock.time, log_capacity=8, snapshot_logs=3)
    for i in range(9):
        c.log("WARN", "copy", f"line {i}", table="t")
    assert len(c.logs()) == 7  # 8, then a quarter (2) evicted before the 9th
    snap = c.snapshot()
    assert [e["message"] for e in snap["logs"]] == ["line 6", "line 7", "line 8"]
    assert snap["logs"][0]["level"] == "warning"
    assert snap["logs"][0]["fields"] == {"table": "t"}
    assert [e["message"] for e in c.logs(1)] == ["line 8"]


def test_log_handler_feeds_the_ring(collector: Collector) -> None:
    logger = logging.getLogger("pgmigrator.test_metrics")
    handler = CollectorLogHandler(collector, level=logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("not kept")
        logger.info("copied %s rows", 10, extra={"fields": {"table": "public.a", "rows": 10}})
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    logs = collector.logs()
    assert [e["message"] for e in logs] == ["copied 10 rows", "it failed"]
    assert logs[0]["component"] == "test_metrics"
    assert logs[0]["fields"] == {"table": "public.a", "rows": 10}
    assert (logs[1]["level"], logs[1]["fields"]["exc"]) == ("error", "ZeroDivisionError: boom")


def test_log_handler_with_the_project_logger(collector: Collector) -> None:
    from pgmigrator.log import get_logger

    handler = CollectorLogHandler(collector)
    logging.getLogger("pgmigrator").addHandler(handler)
    logging.getLogger("pgmigrator.copy").setLevel(logging.INFO)
    try:
        get_logger("copy").info("table copied", table="public.orders", rows=1200)
    finally:
        logging.getLogger("pgmigrator").removeHandler(handler)
        logging.getLogger("pgmigrator.copy").setLevel(logging.NOTSET)
    [entry] = collector.logs()
    assert (entry["component"], entry["message"]) == ("copy", "table copied")
    assert entry["fields"] == {"table": "public.orders", "rows": 1200}


def test_concurrent_writers_add_up(collector: Collector) -> None:
    threads, loops = 8, 1000
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(loops):
            collector.add_rows(1, 10)
            collector.table_advance("s", f"t{n % 2}", 1, 1)
            collector.sink_counter("sink", delivered=1)
            collector.record_error("e")
            collector.log("info", "w", "x")
            if n == 0 and i % 100 == 0:
                collector.snapshot()  # readers run concurrently with writers

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    snap = collector.snapshot()
    total = threads * loops
    assert snap["total_rows"] == 2 * total
    assert snap["total_bytes"] == 11 * total
    assert sum(t["rows_copied"] for t in snap["tables"]) == total
    assert snap["sinks"]["sink"]["delivered"] == total
    assert snap["error_count"] == total


# -- subscriptions -------------------------------------------------------------------------------


async def test_subscription_gets_the_current_snapshot_first(collector: Collector) -> None:
    collector.set_phase("copy")
    sub = collector.subscribe()
    first = await asyncio.wait_for(anext(sub), 1)
    assert first["phase"] == "copy"
    collector.set_phase("streaming")
    collector.publish_now()
    second = await asyncio.wait_for(anext(sub), 1)
    assert second["phase"] == "streaming"
    await sub.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(sub), 1)


async def test_slow_subscriber_skips_and_does_not_block(collector: Collector) -> None:
    slow = collector.subscribe(initial=False)
    fast = collector.subscribe(initial=False)
    for i in range(50):
        collector.set_phase(f"p{i}")
        collector.publish_now()  # never waits for anyone
        assert (await asyncio.wait_for(anext(fast), 1))["phase"] == f"p{i}"
    assert (await asyncio.wait_for(anext(slow), 1))["phase"] == "p49"  # latest value only
    assert (slow.delivered, slow.skipped) == (1, 49)
    assert (fast.delivered, fast.skipped) == (50, 0)
    collector.unsubscribe(slow)
    collector.unsubscribe(fast)


async def test_publisher_pushes_periodically_and_ends_subscriptions(collector: Collector) -> None:
    async with collector.subscribe(initial=False) as sub, collector.publishing(interval=0.005):
        seen = [await asyncio.wait_for(anext(sub), 2) for _ in range(3)]
        assert all(s["pipeline"] == "test" for s in seen)
        collector.set_phase("done")
    # The final snapshot still arrives, then the iteration ends.
    rest = [s async for s in sub]
    assert rest[-1]["phase"] == "done"
    assert sub.closed


async def test_start_publisher_is_idempotent(collector: Collector) -> None:
    task = collector.start_publisher(interval=0.005)
    assert collector.start_publisher() is task
    await collector.stop_publisher()
    assert task.done()
    await collector.stop_publisher()  # a second stop is harmless


async def test_offer_from_another_thread_wakes_the_consumer(collector: Collector) -> None:
    sub = collector.subscribe(initial=False)
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)  # let it start waiting in this loop
    collector.set_phase("from-thread")
    thread = threading.Thread(target=collector.publish_now)
    thread.start()
    snap = await asyncio.wait_for(waiting, 2)
    thread.join()
    assert snap["phase"] == "from-thread"
    collector.unsubscribe(sub)
