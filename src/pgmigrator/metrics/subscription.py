"""Snapshot subscriptions: latest-value delivery from the collector to async consumers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgmigrator.metrics.publishing import Publishing


class Subscription:
    """Snapshots pushed by a collector, consumed with ``async for snap in sub``.

    Latest-value semantics: the subscription holds at most one pending snapshot, and a newer one
    replaces it (counted in ``skipped``), so a slow consumer never blocks the publisher, the
    pipeline or other subscribers; it just sees fewer snapshots. Iteration ends once the
    subscription is closed and its pending snapshot taken. ``offer`` and ``close`` may be called
    from any thread or event loop: the wake-up is forwarded to the loop the consumer waits in.
    One snapshot dict is shared by all subscribers of a tick: treat it as read-only.
    """

    def __init__(self, collector: Publishing, initial: dict[str, Any] | None = None) -> None:
        self._collector = collector
        self._pending = initial
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.delivered = 0
        self.skipped = 0
        if initial is not None:
            self._event.set()

    def offer(self, snapshot: dict[str, Any]) -> None:
        """Make ``snapshot`` the next one delivered, replacing any not yet taken."""
        if self.closed:
            return
        if self._pending is not None:
            self.skipped += 1
        self._pending = snapshot
        self._wake()

    def close(self) -> None:
        """End the iteration (after the pending snapshot, if any)."""
        self.closed = True
        self._wake()

    async def aclose(self) -> None:
        """Unsubscribe from the collector."""
        self._collector.unsubscribe(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        self._loop = asyncio.get_running_loop()
        while self._pending is None:
            if self.closed:
                raise StopAsyncIteration
            await self._event.wait()
            self._event.clear()
        snap, self._pending = self._pending, None
        self.delivered += 1
        return snap

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._event.set)
                return
        self._event.set()
