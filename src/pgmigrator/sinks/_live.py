"""What the live sinks (``sse``, ``websocket``) share: query filters, a broadcast hub, authentication.

The `Hub` never blocks the bus: `Hub.publish` appends each event to a bounded ring (for resuming
with a last event id) and to the queue of every subscribed client whose filter matches; a client
whose queue is over its bound is dropped (counted as ``dropped`` on the sink, logged) and its
connection ends. Clients may live in another thread's event loop (an API server thread): wake-ups
cross loops with ``call_soon_threadsafe`` and the hub's state is guarded by a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response

from pgmigrator.aio import wait_for
from pgmigrator.log import get_logger
from pgmigrator.sinks.base import Event

log = get_logger("sink.live")

OPS = frozenset("cudtrmn")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a client wants: tables (``schema.table`` or ``schema.*``) and operations."""

    tables: frozenset[str] | None = None
    schemas: frozenset[str] | None = None  # from ``schema.*`` entries
    ops: frozenset[str] | None = None

    def matches(self, e: Event) -> bool:
        if self.ops is not None and e.op not in self.ops:
            return False
        if self.tables is None and self.schemas is None:
            return True
        if self.schemas is not None and e.schema in self.schemas:
            return True
        return self.tables is not None and f"{e.schema}.{e.table}" in self.tables


def _values(raw: Iterable[str]) -> list[str]:
    return [v.strip() for item in raw for v in item.split(",") if v.strip()]


def parse_filter(tables: Iterable[str], ops: Iterable[str]) -> EventFilter:
    """A filter from ``?table=s.t,s2.*&op=c,u`` values (each may repeat); ValueError if bad."""
    names, schemas = set(), set()
    for t in _values(tables):
        schema, dot, table = t.partition(".")
        if not dot or not schema or not table or "." in table:
            raise ValueError(f"table filter {t!r} must be SCHEMA.TABLE or SCHEMA.*")
        if table == "*":
            schemas.add(schema)
        else:
            names.add(t)
    op_values = set(_values(ops))
    bad = sorted(op_values - OPS)
    if bad:
        raise ValueError(f"unknown op {', '.join(bad)}: use c, u, d, t, r, m or n")
    return EventFilter(
        tables=frozenset(names) if names else None if not schemas else frozenset(),
        schemas=frozenset(schemas) if schemas else None,
        ops=frozenset(op_values) if op_values else None,
    )


def authorized(conn: HTTPConnection, *, allow_query: bool = False) -> bool:
    """Whether a request may read, following the API app's ``token`` and ``protect_reads``."""
    state = conn.app.state if "app" in conn.scope else None
    if state is None or not getattr(state, "protect_reads", False):
        return True
    token = getattr(state, "token", None)
    if token is None:
        return True
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else ""
    if not given and allow_query:
        given = conn.query_params.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), str(token).encode())


def error_response(status: int, code: str, message: str) -> Response:
    """The API's JSON error shape ``{"error": code, "message": text}``."""
    headers = {"WWW-Authenticate": 'Bearer realm="pgmigrator"'} if status == 401 else None
    body = orjson.dumps({"error": code, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class Gone(Exception):
    """The client was dropped (too slow) or the sink closed."""

    def __init__(self, reason: str, dropped: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dropped = dropped


class Client:
    """One subscriber: a bounded queue of matching events, woken from any thread."""

    def __init__(self, flt: EventFilter, limit: int, backlog: list[Event]) -> None:
        self.filter = flt
        self.limit = limit
        self.backlog = backlog  # replayed from the ring at subscription, outside the bound
        self.queue: deque[Event] = deque()
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.gone = asyncio.Event()
        self.gone_reason: Gone | None = None

    def _signal(self, event: asyncio.Event) -> None:
        try:
            running: Any = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                self.loop.call_soon_threadsafe(event.set)

    def end(self, reason: str, dropped: bool) -> None:
        self.gone_reason = Gone(reason, dropped)
        self._signal(self.wake)
        self._signal(self.gone)


class Hub:
    """Fan-out of events to live clients; see the module docstring."""

    def __init__(self, name: str, ring: int, client_queue: int, collector: Any = None) -> None:
        self.name = name
        self.client_queue = client_queue
        self.collector = collector
        self._ring: deque[Event] = deque(maxlen=max(0, ring))
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self.closed = False
        self.dropped_clients = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, events: Sequence[Event]) -> None:
        """Offer ``events`` to every client; never waits. Drops clients over their bound."""
        dropped: list[Client] = []
        with self._lock:
            self._ring.extend(events)
            for client in self._clients:
                flt, queue = client.filter, client.queue
                before = len(queue)
                queue.extend(e for e in events if flt.matches(e))
                if len(queue) > client.limit:
                    dropped.append(client)
                elif len(queue) != before:
                    client._signal(client.wake)
            for client in dropped:
                self._clients.discard(client)
                client.queue.clear()
        for client in dropped:
            self.dropped_clients += 1
            log.warning("live sink client too slow, dropped", sink=self.name, limit=client.limit)
            if self.collector is not None:
                self.collector.sink_counter(self.name, dropped=1)
            client.end(f"client too slow: more than {client.limit} events queued", True)

    def subscribe(self, flt: EventFilter, last_id: str | None) -> tuple[Client, bool]:
        """A new client (in the running loop); with ``last_id``, the ring's later events first.

        The boolean says that ``last_id`` is not in the ring any more (events may be missing):
        the whole ring is replayed then.
        """
        with self._lock:
            ring = list(self._ring)
            gap = False
            if last_id is not None:
                pos = next((i for i in range(len(ring) - 1, -1, -1) if ring[i].id == last_id), -1)
                gap = pos < 0
                backlog = [e for e in ring[pos + 1 :] if flt.matches(e)]
            else:
                backlog = []
            client = Client(flt, self.client_queue, backlog)
            if self.closed:
                client.end("the sink is closed", False)
            else:
                self._clients.add(client)
        return client, gap

    def unsubscribe(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            clients, self._clients = list(self._clients), set()
        for client in clients:
            client.end("the sink is closed", False)


async def next_events(client: Client, timeout: float | None) -> list[Event] | None:
    """The client's pending events (backlog first); None after ``timeout`` s idle; raises `Gone`.

    ``timeout`` None waits for as long as it takes.
    """
    while True:
        if client.gone_reason is not None:
            raise client.gone_reason
        if client.backlog:
            batch, client.backlog = client.backlog, []
            return batch
        if client.queue:
            batch = []
            queue = client.queue
            while queue:
                batch.append(queue.popleft())
            return batch
        client.wake.clear()
        if client.queue or client.gone_reason is not None:
            continue
        try:
            await wait_for(client.wake.wait(), timeout)
        except TimeoutError:
            return None
