"""The interpreter tuning every command applies at start (collector thresholds, GIL switch interval)."""

from __future__ import annotations

import gc
import sys

from pgmigrator.runtime import GC_THRESHOLD, SWITCH_INTERVAL_S, tune_runtime


def test_tune_runtime_sets_collector_and_switch_interval() -> None:
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_runtime()
        assert gc.get_threshold() == GC_THRESHOLD
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        assert gc.get_freeze_count() > 0  # start-up objects are no longer scanned
        assert gc.isenabled()  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
