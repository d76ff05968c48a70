"""Hot-reload planning: fixed settings refused, sinks added / removed / replaced, filters and limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from pgmigrator import config
from pgmigrator.stream.reload import ReloadPlan, ReloadWatcher, plan_reload

BASE: dict[str, Any] = {
    "source": "host=s dbname=app",
    "slot": "cdc",
    "sinks": [
        {"type": "stdout"},
        {"type": "file", "name": "archive", "path": "/tmp/a.jsonl"},
    ],
}


def settings(**changes: Any) -> config.Settings:
    return config.Settings.model_validate({**BASE, **changes})


def test_sinks_added_removed_and_replaced() -> None:
    new = settings(
        sinks=[
            {"type": "file", "name": "archive", "path": "/tmp/b.jsonl"},
            {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/x"},
        ]
    )
    plan = plan_reload(settings(), new)
    assert not plan.refused
    assert (plan.add, plan.remove, plan.replace) == (["hook"], ["stdout"], ["archive"])
    assert plan.changes and "add hook" in plan.summary()


def test_fixed_settings_are_refused_by_name() -> None:
    plan = plan_reload(settings(), settings(slot="other", source="host=t dbname=app"))
    assert plan.refused == ["source", "slot"]


def test_filters_limits_and_log_level() -> None:
    plan = plan_reload(
        settings(),
        settings(stream={"operations": ["c"]}, retry={"max_attempts": 3}, log_level="debug"),
    )
    assert plan.filters and plan.limits and plan.log_level and not plan.add
    assert not plan_reload(settings(), settings()).changes


async def test_watcher_applies_valid_files_and_keeps_the_old_config_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pgmigrator.yaml"
    path.write_text(yaml.safe_dump(BASE))
    running = [config.load(path)]
    applied: list[ReloadPlan] = []

    async def apply(plan: ReloadPlan) -> None:
        applied.append(plan)
        running[0] = plan.settings

    watcher = ReloadWatcher(path, {}, lambda: running[0], apply)
    path.write_text(yaml.safe_dump({**BASE, "sinks": [{"type": "stdout"}]}))
    plan = await watcher.reload()
    assert plan is not None and plan.remove == ["archive"] and len(applied) == 1

    path.write_text(
        "sinks: [ {type: stdout, queue: -1} ]\nsource: 'host=s dbname=app'\nslot: cdc\n"
    )
    assert await watcher.reload() is None  # invalid: refused, old config kept
    path.write_text(yaml.safe_dump({**BASE, "slot": "elsewhere"}))
    plan = await watcher.reload()
    assert plan is not None and plan.refused == ["slot"]
    assert len(applied) == 1 and watcher.refusals == 2
    assert [s.type for s in running[0].sinks] == ["stdout"]


async def test_file_change_triggers_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "pgmigrator.yaml"
    path.write_text(yaml.safe_dump(BASE))
    running = [config.load(path)]
    done = asyncio.Event()

    async def apply(plan: ReloadPlan) -> None:
        running[0] = plan.settings
        done.set()

    stop = asyncio.Event()
    watcher = ReloadWatcher(path, {}, lambda: running[0], apply)
    task = asyncio.create_task(watcher.run(stop))
    try:
        for _ in range(100):  # the watcher may start after the first write: write until seen
            path.write_text(yaml.safe_dump({**BASE, "log_level": "warning"}))
            try:
                await asyncio.wait_for(done.wait(), 0.5)
                break
            except TimeoutError:
                continue
        assert done.is_set() and running[0].log_level == "warning"
    finally:
        stop.set()
        await task
