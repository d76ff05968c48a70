"""Pure parts of the live sinks (sse, websocket): filters, the hub's ring, fan-out and dropping."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks._live import Gone, Hub, next_events, parse_filter
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.sse import frame


def ev(i: int, op: str = "c", table: str = "t", schema: str = "public") -> Event:
    body = orjson.dumps({"id": f"0/1:{i}", "op": op})
    return Event(f"0/1:{i}", Lsn(1), op, schema, table, body)


def test_filters() -> None:
    everything = parse_filter([], [])
    assert everything.matches(ev(1)) and everything.matches(ev(2, "d", "x", "y"))
    by_table = parse_filter(["public.t,app.*"], ["c", "u"])
    assert by_table.matches(ev(1, "c"))
    assert by_table.matches(ev(1, "u", "anything", "app"))
    assert not by_table.matches(ev(1, "d"))
    assert not by_table.matches(ev(1, "c", "other"))
    only_schema = parse_filter(["app.*"], [])
    assert not only_schema.matches(ev(1)) and only_schema.matches(ev(1, schema="app"))
    for bad in (["t"], ["a.b.c"], [".t"]):
        with pytest.raises(ValueError, match="SCHEMA"):
            parse_filter(bad, [])
    with pytest.raises(ValueError, match="unknown op x"):
        parse_filter([], ["c,x"])


def test_sse_frame() -> None:
    e = ev(7)
    assert frame(e) == b"id: 0/1:7\ndata: " + e.body + b"\n\n"


async def test_hub_fans_out_resumes_and_drops() -> None:
    collector = Collector()
    hub = Hub("live", ring=5, client_queue=3, collector=collector)
    fast, _ = hub.subscribe(parse_filter([], []), None)
    inserts, _ = hub.subscribe(parse_filter([], ["c"]), None)
    hub.publish([ev(1), ev(2, "u")])
    assert [e.id for e in await next_events(fast, 1) or []] == ["0/1:1", "0/1:2"]
    assert [e.id for e in await next_events(inserts, 1) or []] == ["0/1:1"]
    assert await next_events(fast, 0.01) is None  # idle: heartbeat time

    hub.publish([ev(3), ev(4), ev(5)])  # both at the bound (3)
    assert len(await next_events(fast, 1) or []) == 3  # fast drains, inserts does not
    hub.publish([ev(6)])  # inserts now holds 4 > 3: dropped, never waited for
    with pytest.raises(Gone) as info:
        await next_events(inserts, 1)
    assert info.value.dropped and "too slow" in info.value.reason
    assert collector.snapshot()["sinks"]["live"]["dropped"] == 1
    assert hub.clients == 1
    assert [e.id for e in await next_events(fast, 1) or []] == ["0/1:6"]


async def test_resume_from_the_ring() -> None:
    hub = Hub("live", ring=4, client_queue=100)
    hub.publish([ev(i) for i in range(1, 7)])  # the ring holds 3..6
    resumed, gap = hub.subscribe(parse_filter([], []), "0/1:4")
    assert not gap
    assert [e.id for e in await next_events(resumed, 1) or []] == ["0/1:5", "0/1:6"]
    old, gap = hub.subscribe(parse_filter([], []), "0/1:1")
    assert gap
    assert [e.id for e in await next_events(old, 1) or []] == ["0/1:3", "0/1:4", "0/1:5", "0/1:6"]
    hub.close()
    with pytest.raises(Gone) as info:
        await next_events(resumed, 1)
    assert not info.value.dropped


async def test_publish_from_another_thread_wakes_the_client() -> None:
    hub = Hub("live", ring=0, client_queue=10)
    client, _ = hub.subscribe(parse_filter([], []), None)
    waiter = asyncio.ensure_future(next_events(client, 10))
    await asyncio.sleep(0)  # let it block on the wake-up event
    await asyncio.to_thread(hub.publish, [ev(1)])
    got = await asyncio.wait_for(waiter, 5)
    assert [e.id for e in got or []] == ["0/1:1"]
