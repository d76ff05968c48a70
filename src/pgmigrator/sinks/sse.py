"""The ``sse`` sink: a Server-Sent Events endpoint on the API server (default ``/api/v1/events/sse``).

Each event is one SSE message: ``id: <event id>`` and ``data: <event JSON>`` (event type
``message``, so ``EventSource.onmessage`` sees it). Query filters: ``?table=public.orders,app.*``
and ``?op=c,u`` (repeatable, comma separated). A reconnecting client sends ``Last-Event-ID`` (or
``?last_event_id=``): the events after it still held in the in-memory ring (``ring`` events) are
replayed first; when that id is no longer in the ring, an ``event: gap`` message says events may
be missing and the whole ring is replayed. A comment line (``: keepalive``) goes out every
``heartbeat_s`` so proxies keep the connection open; a client that falls more than
``client_queue`` events behind is dropped (``event: dropped``, then the stream ends).

At-most-once (``durable = False``): events go to the clients connected when they pass; nothing
is held back for a client that is away, beyond the ring. With ``protect_reads`` on the API, the
endpoint needs the bearer token (``Authorization: Bearer`` or ``?token=``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pgmigrator.log import get_logger
from pgmigrator.sinks._live import (
    Client,
    Gone,
    Hub,
    authorized,
    error_response,
    next_events,
    parse_filter,
)
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.sse")

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SseOptions(BaseModel):
    """Options of an ``sse`` sink."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(default="/api/v1/events/sse", pattern=r"^/[^?#\s]*$")
    ring: int = Field(default=1000, ge=0, le=1_000_000)
    client_queue: int = Field(default=10_000, ge=1)
    heartbeat_s: float = Field(default=15.0, gt=0)
    retry_ms: int = Field(default=2000, ge=0)  # the reconnection delay suggested to browsers


def frame(e: Event) -> bytes:
    """One SSE message for an event (ids never hold line breaks, JSON bodies neither)."""
    eid = e.id.replace("\n", " ").replace("\r", " ").encode()
    return b"id: " + eid + b"\ndata: " + e.body + b"\n\n"


def _notice(kind: str, **data: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _EventStream(Response):
    """A streaming response that also watches for the client disconnecting (any ASGI version)."""

    def __init__(self, sink: SseSink, client: Client, gap: bool) -> None:
        super().__init__(status_code=200)
        self.sink, self.client, self.gap = sink, client, gap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        listen = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.sink.hub.unsubscribe(self.client)
            for task in (pump, listen):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        opts = self.sink.opts
        head = b"retry: %d\n: connected\n\n" % opts.retry_ms
        if self.gap:
            head += _notice("gap", reason="last event id is not in the ring any more")
        await send({"type": "http.response.body", "body": head, "more_body": True})
        try:
            while True:
                batch = await next_events(self.client, opts.heartbeat_s)
                body = b": keepalive\n\n" if batch is None else b"".join(map(frame, batch))
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except Gone as gone:
            tail = _notice("dropped", reason=gone.reason) if gone.dropped else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class SseSink:
    """Publish events to SSE clients; see the module docstring."""

    durable = False

    def __init__(self, name: str, opts: SseOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.hub = Hub(name, opts.ring, opts.client_queue, ctx.collector)
        ctx.routes.append(Route(opts.path, self.endpoint, methods=["GET"]))

    async def endpoint(self, request: Request) -> Response:
        if not authorized(request, allow_query=True):
            return error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            )
        try:
            flt = parse_filter(
                request.query_params.getlist("table"), request.query_params.getlist("op")
            )
        except ValueError as exc:
            return error_response(400, "bad_request", str(exc))
        last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        client, gap = self.hub.subscribe(flt, last_id or None)
        log.info(
            "sse client connected", sink=self.name, clients=self.hub.clients, resume=bool(last_id)
        )
        return _EventStream(self, client, gap)

    async def start(self) -> None:
        log.info("sse sink ready", sink=self.name, path=self.opts.path)

    async def send(self, events: Sequence[Event]) -> None:
        self.hub.publish(events)

    async def close(self) -> None:
        self.hub.close()


@register("sse", SseOptions)
def make_sse(name: str, opts: SseOptions, ctx: SinkContext) -> SseSink:
    return SseSink(name, opts, ctx)
