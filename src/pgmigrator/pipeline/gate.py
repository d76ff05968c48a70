"""The run gate of a streaming loop: its lifecycle plus the asyncio events the loop waits on.

`RunGate` turns control requests (pause, resume, stop) arriving from any thread (signal handlers,
the API server's thread, the TUI) into state changes of the loop's event loop: ``stop_event`` is
set to stop, ``resumed`` is cleared while paused. Every change goes through the `Lifecycle`, so an
illegal request is refused with the reason, and the collector shows the run state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pgmigrator.aio import wait_event
from pgmigrator.log import get_logger
from pgmigrator.pipeline.lifecycle import Lifecycle

log = get_logger("lifecycle")
_T = TypeVar("_T")


class RunGate:
    def __init__(self, collector: Any, component: str) -> None:
        self.component = component
        self.lifecycle = Lifecycle()
        self.lifecycle.subscribe(lambda change: collector.set_state(change.new))
        self.stop_event = asyncio.Event()
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.held = threading.Event()  # set while the loop holds still in `hold`
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        """Remember the running loop: requests from other threads are forwarded to it."""
        self._loop = asyncio.get_running_loop()

    @property
    def paused(self) -> bool:
        return not self.resumed.is_set()

    def running(self, reason: str = "streaming") -> None:
        if self.lifecycle.state == "starting":
            self.lifecycle.to("running", reason)

    def request_stop(self) -> None:
        """Stop after the work in flight; any thread, any number of times."""
        self.lifecycle.stop("stop requested")
        self._call(self.stop_event.set)
        self._call(self.resumed.set)

    def pause(self, wait_s: float = 10.0) -> str:
        """Stop consuming (the slot buffers; status updates continue); any thread.

        From another thread it returns once the loop holds still (at most ``wait_s``): what
        happens on the source after that stays in the slot until resume.
        """
        self.lifecycle.pause()
        self._call(self.resumed.clear)
        if not self._in_loop() and self._loop is not None and self.lifecycle.paused:
            self.held.wait(wait_s)
        log.info("paused: changes stay in the slot until resume", component=self.component)
        return "paused"

    def resume(self) -> str:
        self.lifecycle.resume()
        self._call(self.resumed.set)
        log.info("resumed", component=self.component)
        return "resumed"

    async def run(self, work: Awaitable[_T]) -> _T:
        """Await the loop's ``work`` bound to this gate; its end (or failure) ends the lifecycle."""
        self.bind()
        try:
            result = await work
        except BaseException as exc:
            self.finished(exc)
            raise
        self.finished()
        return result

    def finished(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.lifecycle.fail(getattr(error, "message", None) or type(error).__name__)
            return
        self.lifecycle.stop("ended")
        if self.lifecycle.state == "stopping":
            self.lifecycle.to("stopped")

    async def hold(self, tick: Callable[[], None]) -> None:
        """While paused: call ``tick`` (status updates) every second until resumed or stopped."""
        self.held.set()
        try:
            while self.paused and not self.stop_event.is_set():
                tick()
                await wait_event(self.resumed, 1.0)
        finally:
            self.held.clear()

    def _in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._in_loop():
            fn()
        else:
            loop.call_soon_threadsafe(fn)
