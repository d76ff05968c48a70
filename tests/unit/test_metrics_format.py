"""Unit tests of the human formatting helpers and the ``pgmigrator status`` report."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from pgmigrator.lsn import Lsn
from pgmigrator.metrics import (
    Collector,
    TableEstimate,
    format_bytes,
    format_count,
    format_duration,
    format_lag,
    format_rate,
    progress_bar,
    render_status,
)
from pgmigrator.metrics.format import iso_utc, parse_iso, to_jsonable

WALL0 = 1_772_200_000.0


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1258291, "1.2 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**7, "3072.0 EiB"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (5.9, "5s"),
        (65, "1m05s"),
        (3725, "1h02m05s"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d03h04m"),
        (-65, "-1m05s"),
        (None, "-"),
        (math.inf, "-"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_lag() -> None:
    assert format_lag(None) == "unknown"
    assert format_lag(0, 12.0) == "caught up"
    assert format_lag(1258291) == "1.2 MiB behind"
    assert format_lag(1258291, 3.4) == "1.2 MiB, 3s behind"
    assert format_lag(2048, 3725) == "2.0 KiB, 1h02m05s behind"


def test_counts_rates_and_bars() -> None:
    assert format_count(22670800) == "22,670,800"
    assert format_rate(4521.3) == "4,521 rows/s"
    assert format_rate(0.25) == "0.2 rows/s"
    assert format_rate(1048576.0, "bytes") == "1.0 MiB/s"
    assert format_rate(None) == "-"
    assert progress_bar(50, width=10) == "[#####-----]"
    assert progress_bar(150, width=4) == "[####]"
    assert progress_bar(None, width=4) == "[----]"


def test_iso_round_trip_and_jsonable() -> None:
    assert iso_utc(WALL0) == "2026-02-27T13:46:40.000Z"
    assert parse_iso("2026-02-27T13:46:40.000Z") == WALL0
    assert parse_iso("2026-02-27T13:46:40") == WALL0  # naive means UTC
    assert parse_iso("nope") is None
    assert parse_iso(12) is None
    assert to_jsonable({"a": (1, Lsn(1)), 2: math.nan, "b": {True, None}.__class__}) == {
        "a": [1, "0/1"],
        "2": None,
        "b": "<class 'set'>",
    }


def _busy_snapshot() -> dict[str, object]:
    t = [0.0]
    c = Collector("orders", clock=lambda: t[0], wall_clock=lambda: WALL0 + t[0])
    c.set_phase("copy")
    c.set_state("running")
    c.set_tables([TableEstimate("public", "orders", 1000), TableEstimate("public", "users", 10)])
    c.table_started("public", "orders")
    t[0] = 10.0
    c.table_progress("public", "orders", 400, 40_000)
    c.table_done("public", "users", 10)
    c.set_lsns(applied="0/100", confirmed="0/80", latest="0/1100")
    c.sink_counter("webhook", delivered=3, failed=1)
    c.set_health("source", "ok")
    c.set_info("slot", "pgm_orders")
    c.record_error(RuntimeError("timeout talking to dest"), component="applier")
    c.log("warning", "copy", "slow table", table="public.orders")
    return c.snapshot()


def test_render_status_fresh() -> None:
    text = render_status(_busy_snapshot(), now=WALL0 + 12)
    assert "pipeline  orders" in text
    assert "phase     copy for 10s  (state: running)" in text
    assert "may have stopped" not in text
    assert "tables    1/2 copied" in text
    assert "public.orders  copying   [########------------]  40.0%  400/1,000 rows" in text
    assert "40 rows/s  eta 15s" in text
    assert "applied 0/100  confirmed 0/80  latest 0/1100" in text
    assert "lag       4.0 KiB behind" in text
    assert "rate      41 rows/s, 3.9 KiB/s (last minute)" in text
    assert "webhook: delivered 3  failed 1" in text
    assert "health    source=ok" in text
    assert "slot      pgm_orders" in text
    assert "errors    1" in text
    assert "[applier] timeout talking to dest" in text
    assert "warning copy: slow table table=public.orders" in text
    assert "\x1b[" not in text
    # The table still copying is listed before the copied one.
    assert text.index("public.orders") < text.index("public.users")


def test_render_status_stale_and_coloured() -> None:
    now = datetime.fromtimestamp(WALL0 + 10 + 42, UTC)
    text = render_status(_busy_snapshot(), now=now, color=True)
    assert "state is 42s old: the pipeline may have stopped" in text
    assert "\x1b[33m" in text


def test_render_status_survives_a_sparse_snapshot() -> None:
    text = render_status({}, now=WALL0)
    assert "pipeline  ?" in text
    assert "no readable timestamp" in text
    assert "lag       unknown" in text


def test_render_status_caps_the_table_list() -> None:
    c = Collector()
    c.set_tables([TableEstimate("s", f"t{i}") for i in range(40)])
    text = render_status(c.snapshot(), now=WALL0, max_tables=5)
    assert "... and 35 more" in text
