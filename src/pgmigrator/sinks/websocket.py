"""The ``websocket`` sink: a broadcast WebSocket endpoint on the API server (``/api/v1/events/ws``).

Each event is one text message holding its JSON document. The same query filters as ``sse``
(``?table=public.orders,app.*&op=c,u``) and ``?last_event_id=`` to replay from the ring. Every
client has a small bounded queue (``client_queue``); a client that falls further behind is never
waited for: it is dropped, counted (``dropped`` on the sink) and closed with code 1008 and the
reason ``client too slow: ...`` (when its connection can still take the close frame within
``close_timeout_s``; otherwise the connection is simply cut). Other clients keep receiving.

At-most-once (``durable = False``), like ``sse``. With ``protect_reads`` on the API the token is
needed (``Authorization: Bearer`` or ``?token=``); a refused or malformed request is closed before
the handshake completes (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pgmigrator.aio import wait_for
from pgmigrator.log import get_logger
from pgmigrator.sinks._live import Client, Gone, Hub, authorized, next_events, parse_filter
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.websocket")

CLOSE_TOO_SLOW = 1008  # policy violation
CLOSE_GOING_AWAY = 1001


class WebSocketOptions(BaseModel):
    """Options of a ``websocket`` sink."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(default="/api/v1/events/ws", pattern=r"^/[^?#\s]*$")
    ring: int = Field(default=1000, ge=0, le=1_000_000)
    client_queue: int = Field(default=256, ge=1)
    close_timeout_s: float = Field(default=5.0, gt=0)


class WebSocketSink:
    """Broadcast events to WebSocket clients; see the module docstring."""

    durable = False

    def __init__(self, name: str, opts: WebSocketOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.hub = Hub(name, opts.ring, opts.client_queue, ctx.collector)
        ctx.routes.append(WebSocketRoute(opts.path, self.endpoint))

    async def endpoint(self, ws: WebSocket) -> None:
        if not authorized(ws, allow_query=True):
            await ws.close(code=1008, reason="unauthorized")
            return
        try:
            flt = parse_filter(ws.query_params.getlist("table"), ws.query_params.getlist("op"))
        except ValueError as exc:
            await ws.close(code=1008, reason=str(exc)[:120])
            return
        await ws.accept()
        client, _gap = self.hub.subscribe(flt, ws.query_params.get("last_event_id") or None)
        log.info("websocket client connected", sink=self.name, clients=self.hub.clients)
        pump = asyncio.ensure_future(self._pump(ws, client))
        listen = asyncio.ensure_future(_until_disconnect(ws))
        gone = asyncio.ensure_future(client.gone.wait())
        try:
            await asyncio.wait({pump, listen, gone}, return_when=asyncio.FIRST_COMPLETED)
            disconnected = listen.done()
        finally:
            self.hub.unsubscribe(client)
            for task in (pump, listen, gone):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        reason = client.gone_reason
        if reason is not None and not disconnected:
            code = CLOSE_TOO_SLOW if reason.dropped else CLOSE_GOING_AWAY
            with contextlib.suppress(Exception):
                await wait_for(
                    ws.close(code=code, reason=reason.reason[:120]), self.opts.close_timeout_s
                )

    async def _pump(self, ws: WebSocket, client: Client) -> None:
        try:
            while True:
                batch = await next_events(client, None)  # uvicorn pings idle clients
                for e in batch or ():
                    await ws.send_text(e.body.decode())
        except (Gone, WebSocketDisconnect, OSError, RuntimeError):
            return

    async def start(self) -> None:
        log.info("websocket sink ready", sink=self.name, path=self.opts.path)

    async def send(self, events: Sequence[Event]) -> None:
        self.hub.publish(events)

    async def close(self) -> None:
        self.hub.close()


async def _until_disconnect(ws: WebSocket) -> None:
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


@register("websocket", WebSocketOptions)
def make_websocket(name: str, opts: WebSocketOptions, ctx: SinkContext) -> WebSocketSink:
    return WebSocketSink(name, opts, ctx)
