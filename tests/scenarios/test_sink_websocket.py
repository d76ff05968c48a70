"""WebSocket sink on the real API server with real `websockets` clients: filters, slow clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pgmigrator.api import ApiServer, NoControl, create_app
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.websocket import WebSocketSink

TOKEN = "ws-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ev(i: int, op: str = "c", table: str = "orders", pad: int = 0) -> Event:
    eid = f"0/{i:X}:0"
    doc = {"id": eid, "op": op, "n": i, "pad": "x" * pad}
    return Event(eid, Lsn(i), op, "public", table, orjson.dumps(doc))


class Live:
    def __init__(self, sink: WebSocketSink, server: ApiServer, collector: Collector) -> None:
        self.sink, self.server, self.collector = sink, server, collector

    def url(self, query: str = "") -> str:
        return self.server.url.replace("http://", "ws://") + "/api/v1/events/ws" + query

    async def until_clients(self, n: int) -> None:
        async def wait() -> None:
            while self.sink.hub.clients != n:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(wait(), 10)


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    collector = Collector()
    ctx = SinkContext(collector=collector)
    sink = build_sink("websocket", "ws", {"client_queue": 8, "close_timeout_s": 5}, ctx)
    assert isinstance(sink, WebSocketSink)
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


async def test_filters_and_authentication(live: Live) -> None:
    with pytest.raises(InvalidStatus):
        async with connect(live.url()):
            pass
    with pytest.raises(InvalidStatus):
        async with connect(live.url("?op=zz"), additional_headers=AUTH):
            pass
    async with (
        connect(live.url("?table=public.orders&op=u,d"), additional_headers=AUTH) as only,
        connect(live.url(f"?token={TOKEN}")) as every,
    ):
        await live.until_clients(2)
        batch = [ev(1), ev(2, "u"), ev(3, "d", "other"), ev(4, "d")]
        await live.sink.send(batch)
        got = [orjson.loads(await asyncio.wait_for(only.recv(), 10)) for _ in range(2)]
        everything = [orjson.loads(await asyncio.wait_for(every.recv(), 10)) for _ in range(4)]
    assert [d["n"] for d in got] == [2, 4]
    assert [d["id"] for d in everything] == [e.id for e in batch]
    await live.until_clients(0)


async def test_a_slow_client_is_dropped_while_a_fast_one_keeps_receiving(live: Live) -> None:
    received: list[str] = []
    async with (
        # (compression off: padded events would compress to nothing and never fill a buffer)
        connect(live.url(), additional_headers=AUTH, max_size=None, compression=None) as fast,
        connect(
            live.url(), additional_headers=AUTH, max_size=None, max_queue=1, compression=None
        ) as slow,
    ):
        await live.until_clients(2)

        async def read_fast() -> None:
            async for message in fast:
                received.append(orjson.loads(message)["id"])

        reader = asyncio.ensure_future(read_fast())
        total = 0
        dropped = lambda: live.collector.snapshot()["sinks"].get("ws", {}).get("dropped", 0)  # noqa: E731
        # Big events, 4 at a time, each batch waited for by the fast client: the slow one
        # (reading nothing) fills its socket buffers, then its queue, and is dropped.
        while not dropped():
            batch = [ev(total + i + 1, pad=100_000) for i in range(4)]
            total += 4
            await live.sink.send(batch)
            await asyncio.wait_for(_until(lambda t=total: len(received) >= t), 10)
            assert total < 4000, "the slow client was never dropped"
        assert live.sink.hub.clients == 1
        after = [ev(total + i + 1) for i in range(5)]
        await live.sink.send(after)
        total += 5
        await asyncio.wait_for(_until(lambda: len(received) >= total), 10)
        assert received == [f"0/{i:X}:0" for i in range(1, total + 1)]  # all, in order

        with pytest.raises(ConnectionClosed) as info:
            while True:  # the slow client reads what was buffered, then finds it closed
                await asyncio.wait_for(slow.recv(), 10)
        rcvd = info.value.rcvd  # the close frame went out once the slow client read again
        assert rcvd is not None and rcvd.code == 1008 and "too slow" in rcvd.reason
        reader.cancel()
    assert dropped() == 1


async def test_closing_the_sink_closes_clients(live: Live) -> None:
    async with connect(live.url(), additional_headers=AUTH) as ws:
        await live.until_clients(1)
        await live.sink.close()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def _until(condition: object) -> None:
    assert callable(condition)
    while not condition():
        await asyncio.sleep(0.005)
