"""Pushing the collector's snapshots to subscribers: a publisher task and its subscriptions.

`Collector` inherits this: ``subscribe`` hands out a `Subscription` (latest-value delivery), and
the publisher task offers every subscriber one fresh snapshot per tick. The snapshot itself is
built by the collector, under its lock; this part only keeps the subscriber list and the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Self

from pgmigrator.metrics.subscription import Subscription

_log = logging.getLogger("pgmigrator.metrics.collector")  # the collector's own logger


class Publishing:
    """Subscriber list and publisher task of a collector (see the module docstring)."""

    pipeline: str
    publish_interval: float
    _lock: threading.Lock
    _subscriptions: list[Subscription]
    _publisher: asyncio.Task[None] | None

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def subscribe(self, *, initial: bool = True) -> Subscription:
        """A new async iterator of snapshots; with ``initial`` the current one comes first."""
        sub = Subscription(self, self.snapshot() if initial else None)
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop pushing to ``sub``; its iteration ends after any snapshot still pending."""
        with self._lock, contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)
        sub.close()

    def publish_now(self) -> None:
        """Push one snapshot to every subscriber now (what the publisher task does each tick)."""
        with self._lock:
            subs = list(self._subscriptions)
        if subs:
            snap = self.snapshot()
            for sub in subs:
                sub.offer(snap)

    def start_publisher(self, interval: float | None = None) -> asyncio.Task[None]:
        """Start the task pushing a snapshot every ``interval`` s (default publish_interval)."""
        if self._publisher is None or self._publisher.done():
            every = self.publish_interval if interval is None else interval
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_loop(every), name=f"metrics-publisher-{self.pipeline}"
            )
        return self._publisher

    async def stop_publisher(self, *, close_subscriptions: bool = True) -> None:
        """Stop the task, push a last snapshot and (by default) end every subscription."""
        task, self._publisher = self._publisher, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self.publish_now()
        if close_subscriptions:
            with self._lock:
                subs, self._subscriptions = self._subscriptions, []
            for sub in subs:
                sub.close()

    @contextlib.asynccontextmanager
    async def publishing(self, interval: float | None = None) -> AsyncIterator[Self]:
        """``async with collector.publishing():`` runs the publisher for the block."""
        self.start_publisher(interval)
        try:
            yield self
        finally:
            await self.stop_publisher()

    async def _publish_loop(self, interval: float) -> None:
        while True:
            try:
                self.publish_now()
            except Exception:  # a bug in a snapshot must not end the push for good
                _log.exception("metrics: publishing a snapshot failed")
            await asyncio.sleep(interval)
