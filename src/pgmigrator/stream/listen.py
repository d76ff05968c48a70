"""``pgmigrator listen``: LISTEN/NOTIFY notifications as ``op: "n"`` events, fanned out to sinks.

A notification has no durable position: delivery is at-most-once across restarts and connection
losses (what is sent while nobody listens is gone). Event ids are ``n<start>:<counter>``, where
``start`` is the process's start time in microseconds since the Unix epoch and ``counter`` counts
notifications of this process from 1: unique, but never replayed. The payload is embedded as JSON
when it parses as JSON, else kept as a string.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from pgmigrator.dsn import Target
from pgmigrator.lsn import ZERO
from pgmigrator.metrics import Collector
from pgmigrator.sinks.base import Event, Sink
from pgmigrator.source.listen import Listener
from pgmigrator.stream.bus import Bus, SinkPolicy
from pgmigrator.stream.dlq import DeadLetterQueue

NOTIFY_SOURCE_KEYS = ("db", "schema", "table", "lsn", "xid", "commit_time")


def parse_payload(payload: str) -> Any:
    """JSON when the payload is JSON (object, array, number, ...), else the string itself."""
    if not payload:
        return payload
    try:
        return orjson.Fragment(orjson.dumps(orjson.loads(payload)))
    except orjson.JSONDecodeError:
        return payload


class NotifyEncoder:
    def __init__(self, db: str, start_us: int | None = None) -> None:
        self.db = db
        self.start_us = start_us if start_us is not None else int(time.time() * 1_000_000)
        self.counter = 0
        self._source = orjson.Fragment(
            orjson.dumps({k: (db if k == "db" else None) for k in NOTIFY_SOURCE_KEYS})
        )

    def encode(self, channel: str, payload: str, pid: int) -> Event:
        self.counter += 1
        event_id = f"n{self.start_us}:{self.counter}"
        body = orjson.dumps(
            {
                "id": event_id,
                "op": "n",
                "source": self._source,
                "key": None,
                "before": None,
                "after": None,
                "unchanged_toast": [],
                "channel": channel,
                "payload": parse_payload(payload),
                "pid": pid,
                "received_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            }
        )
        return Event(event_id, ZERO, "n", None, None, body)


@dataclass
class ListenStats:
    notifications: int = 0
    reconnects: int = 0
    drained: bool = True


class ListenStream:
    def __init__(
        self,
        source: Target,
        channels: Sequence[str],
        sinks: Sequence[tuple[Sink, SinkPolicy]],
        collector: Collector,
        *,
        drain_timeout_s: float = 30.0,
        chunk_events: int = 1000,
        dlq: DeadLetterQueue | None = None,
    ) -> None:
        self.source = source
        self.collector = collector
        self.bus = Bus(sinks, collector, dlq=dlq)
        self.listener = Listener(source, channels, on_state=self._health)
        self.encoder = NotifyEncoder(source.database)
        self.stop_event = asyncio.Event()
        self.stats = ListenStats()
        self.drain_timeout_s = drain_timeout_s
        self.chunk_events = chunk_events

    def _health(self, status: str, detail: str) -> None:
        self.collector.set_health("source", "ok" if status == "ok" else "down", detail)

    def request_stop(self) -> None:
        self.stop_event.set()
        self.bus.interrupt()

    async def run(self) -> ListenStats:
        self.collector.set_phase("connecting")
        await self.bus.start()
        try:
            await self.listener.connect()
            self.collector.set_phase("streaming")
            reader = asyncio.create_task(self._read())
            stopper = asyncio.create_task(self.stop_event.wait())
            failed = asyncio.create_task(self.bus.failed.wait())
            await asyncio.wait([reader, stopper, failed], return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, stopper, failed):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        finally:
            await self.listener.close()
            self.stats.drained = await self.bus.close(self.drain_timeout_s)
            self.stats.reconnects = self.listener.reconnects
        self.bus.raise_if_failed()
        return self.stats

    async def _read(self) -> None:
        async for notify in self.listener.notifications():
            await self._deliver(notify)

    async def _deliver(self, notify: psycopg.Notify) -> None:
        event = self.encoder.encode(notify.channel, notify.payload, notify.pid)
        await self.bus.publish([event])
        self.stats.notifications += 1
        self.collector.add_rows(1)
