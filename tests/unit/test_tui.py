"""The Textual TUI driven by a pilot against a real API server (in-process, on a free port)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog, Static

from pgmigrator.api import ApiServer, create_app
from pgmigrator.metrics import Collector
from pgmigrator.tui import ConfirmScreen, PgMigratorTui
from pgmigrator.tui.app import new_log_entries, normalize_url, overall_percent
from tests.unit.test_api import TOKEN, FakeControl, fed_collector

SIZE = (150, 45)


async def until(
    pilot: Pilot[None], condition: Callable[[], object], what: str, timeout: float = 10
) -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def text_of(app: PgMigratorTui, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def collector() -> Collector:
    return fed_collector()


@pytest.fixture
async def server(collector: Collector, control: FakeControl) -> AsyncIterator[ApiServer]:
    api = ApiServer(create_app(collector, None, control, TOKEN), "127.0.0.1", 0)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_shows_phase_tables_and_logs(server: ApiServer, collector: Collector) -> None:
    app = PgMigratorTui(server.url, TOKEN, interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
        assert "phase copy" in text_of(app, "#summary")
        table = app.query_one("#tables", DataTable)
        assert str(table.get_cell("public.orders", "state")) == "copying"
        assert "40.0%" in str(table.get_cell("public.orders", "progress"))
        assert str(table.get_cell("sales.items", "rows")) == "50/50"
        assert "8.0 KiB" in text_of(app, "#lag") and "errors 1" in text_of(app, "#errors")
        log = app.query_one("#log", RichLog)
        assert any("slow destination" in line.text for line in log.lines)

        assert "verification" not in text_of(app, "#summary")
        collector.set_info("verification", "all 2 tables equal as of 0/16B3748")
        await until(
            pilot,
            lambda: "verification: all 2 tables equal as of 0/16B3748" in text_of(app, "#summary"),
            "the verification's outcome",
        )
        collector.table_done("public", "orders", 1000, 100_000)
        collector.set_phase("streaming")
        collector.log("info", "follow", "streaming started")
        await until(pilot, lambda: "phase streaming" in text_of(app, "#summary"), "phase change")
        await until(
            pilot, lambda: str(table.get_cell("public.orders", "state")) == "copied", "table done"
        )
        await until(
            pilot,
            lambda: sum("streaming started" in line.text for line in log.lines) == 1,
            "the new log line, once",
        )
        assert len(app.rates) >= 2


async def test_keys_call_the_control(server: ApiServer, control: FakeControl) -> None:
    app = PgMigratorTui(server.url, TOKEN, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: control.calls == ["pause"], "the pause call")
        assert app.last_message == "pause requested"
        await pilot.press("v")
        await until(pilot, lambda: control.calls == ["pause", "verify"], "the verify call")
        await pilot.press("r")
        await until(pilot, lambda: control.calls[-1] == "resume", "the resume call")

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the dialog to close")
        assert control.calls == ["pause", "verify", "resume"]
        assert text_of(app, "#message") == "switchover cancelled"

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.click("#yes")
        await until(pilot, lambda: control.calls[-1:] == ["switchover"], "the switchover call")

        await pilot.press("q")
    assert app.return_code == 0


async def test_wrong_token_and_unreachable_api(server: ApiServer, control: FakeControl) -> None:
    app = PgMigratorTui(server.url, "wrong", interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await until(pilot, lambda: "wrong or missing token" in app.last_message, "the refusal")
    assert control.calls == []

    gone = PgMigratorTui("127.0.0.1:9", TOKEN, interval=0.2)  # the discard port: refused
    async with gone.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "disconnected" in text_of(gone, "#summary"), "the error")


def test_helpers() -> None:
    assert normalize_url("127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalize_url("https://x:1") == "https://x:1"
    snap = {
        "tables": [
            {"bytes_total": 300, "percent": 100.0},
            {"bytes_total": 100, "percent": 0.0},
        ]
    }
    assert overall_percent(snap) == 75.0
    assert overall_percent({"tables": [], "phase": "done"}) == 100.0
    a, b, c = {"m": 1}, {"m": 2}, {"m": 3}
    assert new_log_entries([], [a, b]) == [a, b]
    assert new_log_entries([a, b], [a, b, c]) == [c]
    assert new_log_entries([a, b], [b, c]) == [c]
    assert new_log_entries([a, b], [c]) == [c]
