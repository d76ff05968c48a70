"""Applying a config reload to a running stream, at a clean cut between two published chunks.

`ReloadWatcher` (stream/reload.py) hands each accepted plan to `PlanQueue.submit`; the stream's
read loop applies queued plans itself, right after publishing what it had encoded and before it
reads anything more. Nothing is published meanwhile, so a removed or replaced sink receives every
event up to the cut (its queue is drained first) and a new or replacement sink every event after
it: nothing is lost, and a replaced sink duplicates nothing. New sinks are built and started
before anything is removed: a sink that cannot be built or started refuses the whole plan and the
running configuration stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger, set_level
from pgmigrator.sinks.base import Sink, SinkContext
from pgmigrator.stream.bus import SinkPolicy
from pgmigrator.stream.filters import Filters
from pgmigrator.stream.reload import ReloadPlan
from pgmigrator.stream.sinkset import make_sink, sink_names

if TYPE_CHECKING:
    from pgmigrator.stream.wal import WalStream

log = get_logger("reload")


class PlanQueue:
    def __init__(self, runner: WalStream, ctx: SinkContext) -> None:
        self.runner = runner
        self.ctx = ctx
        self._plans: list[tuple[ReloadPlan, asyncio.Future[None]]] = []

    @property
    def pending(self) -> bool:
        return bool(self._plans)

    async def submit(self, plan: ReloadPlan) -> None:
        """Queue ``plan`` for the read loop and wait until it is applied (or refused)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._plans.append((plan, future))
        await future

    def cancel(self) -> None:
        for _, future in self._plans:
            if not future.done():
                future.cancel()
        self._plans.clear()

    async def apply_all(self) -> None:
        while self._plans:
            plan, future = self._plans.pop(0)
            try:
                await self._apply(plan)
            except PgMigratorError as exc:
                log.error("config reload refused; keeping the running config", error=exc.message)
            finally:
                if not future.done():
                    future.set_result(None)

    async def _apply(self, plan: ReloadPlan) -> None:
        runner, settings = self.runner, plan.settings
        fresh = await self._start_new(plan)
        bus = runner.bus
        for name in (*plan.remove, *plan.replace):
            drained = await bus.remove_sink(name, settings.stream.drain_timeout_s)
            log.info("sink removed", sink=name, drained=drained)
        for sink, policy in fresh:
            await bus.add_sink(sink, policy, started=True)
            log.info("sink added", sink=sink.name)
        if plan.filters:
            filters = _filters(settings)
            runner.filters = filters
            runner.encoder.set_filters(filters)
        if plan.limits:
            attempts = settings.dlq.max_attempts if bus.dlq is not None else 0
            for worker in bus.workers:
                worker.policy.max_attempts = attempts if worker.sink.durable else 0
        if plan.log_level:
            set_level(settings.log_level)
        runner.settings = settings

    async def _start_new(self, plan: ReloadPlan) -> list[tuple[Sink, SinkPolicy]]:
        """Build and start every added or replaced sink; on any failure close them all and raise."""
        configs = list(plan.settings.sinks)
        by_name = dict(zip(sink_names(configs), configs, strict=True))
        attempts = plan.settings.dlq.max_attempts if self.runner.bus.dlq is not None else 0
        routes = len(self.ctx.routes)
        built: list[tuple[Sink, SinkPolicy]] = []
        try:
            for name in (*plan.replace, *plan.add):
                built.append(make_sink(by_name[name], name, self.ctx, attempts))
                if len(self.ctx.routes) > routes:
                    raise PgMigratorError(
                        f"sink {name!r} serves HTTP routes (sse, websocket): it cannot be added live",
                        hint="restart the command to add or change an sse or websocket sink",
                    )
            for sink, _ in built:
                await sink.start()
        except Exception as exc:
            for sink, _ in built:
                with contextlib.suppress(Exception):
                    await sink.close()
            if isinstance(exc, PgMigratorError):
                raise
            raise PgMigratorError(f"a new sink cannot start: {exc}") from exc
        return built


def _filters(settings: Any) -> Filters:
    """Filters from the reloaded file's ``stream:`` section (tables are fixed settings)."""
    stream = settings.stream
    return Filters(
        settings.tables, settings.exclude, stream.operations or None, stream.drop_columns,
        stream.mask_columns,
    )  # fmt: skip
