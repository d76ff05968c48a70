"""Unit tests: how the WAL budget watcher grades a slot's retained WAL."""

from __future__ import annotations

from pgmigrator.config import WalBudgetSettings
from pgmigrator.pipeline.walbudget import MB, classify, describe


def test_classify_levels_at_and_around_the_limits() -> None:
    assert classify(None, 10, 20) == "ok"  # not known yet
    assert classify(0, 10, 20) == "ok"
    assert classify(10, 10, 20) == "ok"  # at the budget is still within it
    assert classify(11, 10, 20) == "degraded"
    assert classify(20, 10, 20) == "degraded"
    assert classify(21, 10, 20) == "down"


def test_describe_names_the_amount_and_the_limit_crossed() -> None:
    budget = WalBudgetSettings(warn_mb=1, max_mb=2)
    assert "of WAL" in describe("ok", 512 * 1024, budget)
    assert "1 MB budget" in describe("degraded", int(1.5 * MB), budget)
    down = describe("down", 3 * MB, budget)
    assert "2 MB maximum" in down and "3.0 MiB" in down
    assert "unknown" in describe("ok", None, budget)
