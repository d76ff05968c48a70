"""SSE sink on the real API server (uvicorn) with real httpx streaming clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from pgmigrator.api import ApiServer, NoControl, create_app
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.sse import SseSink

TOKEN = "sse-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATH = "/api/v1/events/sse"


def ev(i: int, op: str = "c", table: str = "orders") -> Event:
    eid = f"0/{i:X}:0"
    return Event(eid, Lsn(i), op, "public", table, orjson.dumps({"id": eid, "op": op, "n": i}))


class Live:
    def __init__(self, sink: SseSink, server: ApiServer, collector: Collector) -> None:
        self.sink, self.server, self.collector = sink, server, collector


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    collector = Collector()
    ctx = SinkContext(collector=collector)
    sink = build_sink("sse", "sse", {"ring": 50, "heartbeat_s": 0.2, "client_queue": 100}, ctx)
    assert isinstance(sink, SseSink)
    app = create_app(
        collector, None, NoControl(), TOKEN, protect_reads=True, extra_routes=ctx.routes
    )
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    await sink.start()
    try:
        yield Live(sink, server, collector)
    finally:
        await sink.close()
        await server.stop()


async def messages(
    res: httpx.Response, count: int, comments: list[str] | None = None
) -> list[dict[str, str]]:
    """Read ``count`` SSE messages (id/event/data fields) from a streaming response."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in res.aiter_lines():
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        if line == "":
            if "data" in current:  # a block without data dispatches nothing (e.g. retry:)
                out.append(current)
                if len(out) >= count:
                    return out
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key] = value.removeprefix(" ")
    return out


async def until_clients(live: Live, n: int) -> None:
    async def wait() -> None:
        while live.sink.hub.clients != n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), 10)


async def test_filters_by_table_and_op(live: Live) -> None:
    url = live.server.url + PATH
    filters = {"table": "public.orders", "op": "c,u"}
    async with (
        httpx.AsyncClient(timeout=10, headers=AUTH) as http,
        http.stream("GET", url, params=filters) as only,
        http.stream("GET", url) as every,
    ):
        assert only.headers["content-type"].startswith("text/event-stream")
        await until_clients(live, 2)
        batch = [ev(1), ev(2, "d"), ev(3, "u", "other"), ev(4, "u"), ev(5)]
        await live.sink.send(batch)
        got = await asyncio.wait_for(messages(only, 3), 10)
        everything = await asyncio.wait_for(messages(every, 5), 10)
    assert [m["id"] for m in got] == ["0/1:0", "0/4:0", "0/5:0"]
    assert [orjson.loads(m["data"])["n"] for m in got] == [1, 4, 5]
    assert [m["id"] for m in everything] == [e.id for e in batch]


async def test_last_event_id_resumes_from_the_ring(live: Live) -> None:
    url = live.server.url + PATH
    await live.sink.send([ev(i) for i in range(1, 11)])  # nobody listens: only the ring keeps them
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
        async with http.stream("GET", url, headers={"Last-Event-ID": "0/7:0"}) as res:
            await until_clients(live, 1)
            await live.sink.send([ev(11)])
            got = await asyncio.wait_for(messages(res, 4), 10)
        assert [m["id"] for m in got] == ["0/8:0", "0/9:0", "0/A:0", "0/B:0"]
        async with http.stream("GET", url, params={"last_event_id": "nope"}) as res:
            got = await asyncio.wait_for(messages(res, 2), 10)
        assert got[0]["event"] == "gap"  # unknown id: say so, then the whole ring
        assert got[1]["id"] == "0/1:0"


async def test_heartbeats_keep_an_idle_stream_alive(live: Live) -> None:
    comments: list[str] = []
    async with (
        httpx.AsyncClient(timeout=10, headers=AUTH) as http,
        http.stream("GET", live.server.url + PATH) as res,
    ):

        async def two_heartbeats() -> None:
            async for line in res.aiter_lines():
                if line.startswith(":"):
                    comments.append(line)
                if comments.count(": keepalive") >= 2:
                    return

        await asyncio.wait_for(two_heartbeats(), 10)
    assert comments[0] == ": connected"


async def test_auth_bad_filters_and_disconnects(live: Live) -> None:
    url = live.server.url + PATH
    async with httpx.AsyncClient(timeout=10) as http:
        res = await http.get(url)
        assert res.status_code == 401 and res.json()["error"] == "unauthorized"
        res = await http.get(url, params={"op": "x"}, headers=AUTH)
        assert res.status_code == 400 and "unknown op" in res.json()["message"]
        res = await http.get(url, params={"table": "nodot"}, headers=AUTH)
        assert res.status_code == 400
        async with http.stream("GET", url, params={"token": TOKEN}) as res:
            assert res.status_code == 200
            await until_clients(live, 1)
        await until_clients(live, 0)  # a client that went away is forgotten


async def test_closing_the_sink_ends_the_streams(live: Live) -> None:
    async with (
        httpx.AsyncClient(timeout=10, headers=AUTH) as http,
        http.stream("GET", live.server.url + PATH) as res,
    ):
        await until_clients(live, 1)
        await live.sink.close()

        async def drain() -> None:
            async for _ in res.aiter_lines():
                pass

        await asyncio.wait_for(drain(), 10)  # the response ended


def test_api_served_from_a_thread_gets_events_published_from_another_loop() -> None:
    ctx = SinkContext()
    sink = build_sink("sse", "sse", {"heartbeat_s": 5}, ctx)
    assert isinstance(sink, SseSink)
    app = create_app(Collector(), None, NoControl(), None, extra_routes=ctx.routes)
    with (
        ApiServer(app, "127.0.0.1", 0) as server,
        httpx.Client(timeout=10) as http,
        http.stream("GET", server.url + PATH) as res,
    ):
        lines = res.iter_lines()
        assert next(lines).startswith("retry:")
        asyncio.run(sink.send([ev(1), ev(2)]))  # the bus's loop, not the server thread's
        data: list[int] = []
        for line in lines:
            if line.startswith("data:"):
                data.append(orjson.loads(line.removeprefix("data: "))["n"])
                if len(data) == 2:
                    break
        assert data == [1, 2]
        asyncio.run(sink.close())


async def test_a_slow_client_is_dropped_and_told_so() -> None:
    collector = Collector()
    ctx = SinkContext(collector=collector)
    sink = build_sink("sse", "sse", {"client_queue": 8, "heartbeat_s": 5}, ctx)
    assert isinstance(sink, SseSink)
    app = create_app(collector, None, NoControl(), None, extra_routes=ctx.routes)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    fast_ids: list[str] = []
    try:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", server.url + PATH) as fast,
            http.stream("GET", server.url + PATH) as slow,
        ):
            while sink.hub.clients != 2:
                await asyncio.sleep(0.01)

            async def read_fast() -> None:
                async for line in fast.aiter_lines():
                    if line.startswith("id: "):
                        fast_ids.append(line[4:])

            reader = asyncio.ensure_future(read_fast())
            pad = "y" * 100_000
            n = 0
            while not collector.snapshot()["sinks"].get("sse", {}).get("dropped"):
                batch = [
                    Event(f"0/{n + i + 1:X}:0", Lsn(n + i + 1), "c", "public", "t",
                          orjson.dumps({"n": n + i + 1, "pad": pad}))
                    for i in range(4)
                ]  # fmt: skip
                n += 4
                await sink.send(batch)
                await asyncio.wait_for(_until(lambda k=n: len(fast_ids) >= k), 10)  # keeps up
                assert n < 4000, "the slow client was never dropped"
            assert sink.hub.clients == 1
            tail = [line async for line in slow.aiter_lines() if line.startswith("event:")]
            assert tail == ["event: dropped"]  # what it had, then the reason, then the end
            reader.cancel()
        assert fast_ids == [f"0/{i:X}:0" for i in range(1, n + 1)]
    finally:
        await sink.close()
        await server.stop()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)
