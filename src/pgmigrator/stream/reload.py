"""Hot reload of a running stream/listen: what changed in the config, and whether it may apply live.

`plan_reload` compares the running settings with a newly loaded file (pure, unit-tested): a change
to a *fixed* setting (source, destination, name, slot, publication, table selection) is refused
with a message naming each field, and the running configuration is kept whole; otherwise the plan
lists the sinks to add, remove and replace, and whether filters, retry/dead-letter limits or the
log level change. `ReloadWatcher` triggers a reload on SIGHUP and on every change of the config
file (watchfiles), loads the file with the same flags and environment as at start, and hands the
plan to the pipeline's ``apply`` callback; an invalid file keeps the old config and logs every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pgmigrator import config as configmod
from pgmigrator.aio import wait_event
from pgmigrator.errors import ConfigError
from pgmigrator.log import get_logger

_T = TypeVar("_T")

log = get_logger("reload")

FIXED = ("name", "source", "dest", "slot", "publication", "tables", "exclude")


@dataclass
class ReloadPlan:
    settings: configmod.Settings
    refused: list[str] = field(default_factory=list)  # fixed fields that changed
    add: list[str] = field(default_factory=list)  # sink names
    remove: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    filters: bool = False
    limits: bool = False  # retry / dead-letter settings
    log_level: bool = False

    @property
    def changes(self) -> bool:
        return bool(
            self.add or self.remove or self.replace or self.filters or self.limits or self.log_level
        )

    def summary(self) -> str:
        parts = [f"{k} {', '.join(v)}" for k, v in (("add", self.add), ("remove", self.remove),
                 ("replace", self.replace)) if v]  # fmt: skip
        parts += [k for k in ("filters", "limits", "log_level") if getattr(self, k)]
        return "; ".join(parts) or "nothing changed"


def _sinks(settings: configmod.Settings) -> dict[str, dict[str, Any]]:
    return {(s.name or s.type): s.model_dump() for s in settings.sinks}


def plan_reload(old: configmod.Settings, new: configmod.Settings) -> ReloadPlan:
    """What it takes to go from ``old`` to ``new``; ``refused`` non-empty means: keep ``old``."""
    plan = ReloadPlan(new)
    before, after = old.model_dump(), new.model_dump()
    plan.refused = [f for f in FIXED if before.get(f) != after.get(f)]
    old_sinks, new_sinks = _sinks(old), _sinks(new)
    plan.add = sorted(set(new_sinks) - set(old_sinks))
    plan.remove = sorted(set(old_sinks) - set(new_sinks))
    plan.replace = sorted(
        n for n in set(old_sinks) & set(new_sinks) if old_sinks[n] != new_sinks[n]
    )
    plan.filters = before.get("stream") != after.get("stream")
    plan.limits = any(before.get(k) != after.get(k) for k in ("retry", "dlq", "wal_budget"))
    plan.log_level = before.get("log_level") != after.get("log_level")
    return plan


Apply = Callable[[ReloadPlan], Awaitable[None]]


class ReloadWatcher:
    """Reload on SIGHUP and on changes of ``config_file``; ``apply`` runs one plan at a time."""

    def __init__(
        self,
        config_file: Path | None,
        flags: Mapping[str, Any],
        current: Callable[[], configmod.Settings],
        apply: Apply,
        collector: Any = None,
    ) -> None:
        self.collector = collector  # shows reloads and refusals (info ``config_reload``)
        self.config_file = config_file
        self.flags = dict(flags)
        self.current = current
        self.apply = apply
        self.reloads = 0
        self.refusals = 0
        self.last = ""
        self._trigger = asyncio.Event()
        self._lock = asyncio.Lock()

    def request(self) -> None:
        self._trigger.set()

    async def alongside(self, work: Awaitable[_T], stop: asyncio.Event) -> _T:
        """Await ``work`` with this watcher running beside it until ``work`` ends."""
        watch = asyncio.create_task(self.run(stop))
        try:
            return await work
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request)
        watch = asyncio.create_task(self._watch_file(stop)) if self.config_file else None
        try:
            while not stop.is_set():
                await wait_event(self._trigger, 1.0)
                if self._trigger.is_set():
                    self._trigger.clear()
                    await self.reload()
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)

    async def _watch_file(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        assert self.config_file is not None
        folder = self.config_file.resolve().parent
        target = self.config_file.resolve()
        async for changes in awatch(folder, stop_event=stop, debounce=200, step=50):
            if any(Path(path).resolve() == target for _, path in changes):
                self.request()

    async def reload(self) -> ReloadPlan | None:
        """Load the file again and apply what may change live; None when the file is invalid."""
        async with self._lock:
            plan = await self._reload()
        if self.collector is not None:
            self.collector.set_info(
                "config_reload", {"reloads": self.reloads, "refused": self.refusals,
                                  "last": self.last})  # fmt: skip
        return plan

    async def _reload(self) -> ReloadPlan | None:
        try:
            new = await asyncio.to_thread(configmod.load, self.config_file, **self.flags)
        except ConfigError as exc:
            self.refusals += 1
            self.last = f"refused: invalid file: {exc.message}"
            log.error("config reload refused: the new file is invalid; keeping the running config",
                      errors=str(exc))  # fmt: skip
            return None
        plan = plan_reload(self.current(), new)
        if plan.refused:
            self.refusals += 1
            self.last = f"refused: fixed settings changed: {', '.join(plan.refused)}"
            log.error(
                "config reload refused: fixed settings cannot change while running; keeping the running config",
                fields=",".join(plan.refused),
                hint="restart the command to change them",
            )
            return plan
        if not plan.changes:
            log.info("config reloaded: nothing changed")
            return plan
        await self.apply(plan)
        self.reloads += 1
        self.last = f"applied: {plan.summary()}"
        log.info("config reloaded", changes=plan.summary())
        return plan
