"""The interpreter tuning every command applies at start (collector, GIL switch interval, policy)."""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Iterator

import pytest

from pgmigrator.runtime import GC_THRESHOLD, SWITCH_INTERVAL_S, tune_runtime

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


@pytest.fixture
def tuned() -> Iterator[None]:
    """`tune_runtime()` for the test, the interpreter and the thread's policy restored after."""
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    try:
        tune_runtime()
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
        if policy is not None:
            os.sched_setscheduler(0, policy, os.sched_param(0))


def test_tune_runtime_sets_collector_and_switch_interval(tuned: None) -> None:
    assert gc.get_threshold() == GC_THRESHOLD
    assert sys.getswitchinterval() == SWITCH_INTERVAL_S
    assert gc.get_freeze_count() > 0  # start-up objects are no longer scanned
    assert gc.isenabled()  # cycles are still collected


@linux_only
def test_batch_policy_without_priority_change_inherited_by_threads(tuned: None) -> None:
    assert os.sched_getscheduler(0) == os.SCHED_BATCH  # our wake-ups do not preempt the walsender
    assert os.sched_getparam(0).sched_priority == 0
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    t.start()
    t.join()
    assert seen == [os.SCHED_BATCH]  # the applier's and the helpers' threads start later
