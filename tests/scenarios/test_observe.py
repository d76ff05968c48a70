"""Journey: watch a real clone through the API, /metrics, the WebSocket and the web dashboard."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from pgmigrator import config
from pgmigrator.api import ApiServer, create_app
from pgmigrator.metrics import Collector, CollectorLogHandler
from pgmigrator.pipeline.clone import Clone, CloneOptions, CloneResult
from pgmigrator.pipeline.progress import Progress
from tests.conftest import Pair, wait_for

ROWS = 300_000
TOKEN = "observe-token"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


class RecordingControl:
    """A Control that only records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def pause(self) -> str:
        self.calls.append("pause")
        return "paused"

    async def resume(self) -> str:
        self.calls.append("resume")
        return "resumed"

    async def switchover(self) -> str:
        self.calls.append("switchover")
        return "switchover started"

    async def verify(self) -> str:
        self.calls.append("verify")
        return "live verification started"


@dataclass
class LiveClone:
    """A clone running in a thread, its collector, and the API server watching it."""

    collector: Collector
    server: ApiServer
    control: RecordingControl
    settings: config.Settings
    future: Future[CloneResult] | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def start(self) -> None:
        progress = Progress(self.collector, stream=io.StringIO(), live=False)
        clone = Clone(self.settings, CloneOptions(), progress)
        self.future = self.pool.submit(clone.run)

    def running(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the clone; True while it still runs."""
        assert self.future is not None
        done, _ = wait([self.future], timeout=timeout)
        return not done

    def get(self, path: str) -> httpx.Response:
        res = httpx.get(self.server.url + path, timeout=10)
        assert res.status_code == 200, (path, res.text)
        return res


def load_source(pair: Pair, rows: int) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, payload text, n int)")
        conn.execute(
            "INSERT INTO big SELECT g, md5(g::text), g %% 1000 FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("CREATE SCHEMA sales")
        conn.execute("CREATE TABLE sales.customers (id int PRIMARY KEY, name text)")
        conn.execute(
            "INSERT INTO sales.customers SELECT g, 'customer ' || g FROM generate_series(1, 20000) g"
        )
        conn.execute("ANALYZE")


@contextmanager
def live_clone(pair: Pair, tmp_path: Path, rows: int = ROWS) -> Iterator[LiveClone]:
    load_source(pair, rows)
    settings = config.load(
        None, source=pair.source, dest=pair.dest, name="observe", workers=2, state_dir=tmp_path
    )
    collector = Collector("observe", publish_interval=0.1)
    collector.update_info({k: settings.redacted()[k] for k in ("source", "dest")})
    control = RecordingControl()
    server = ApiServer(create_app(collector, settings, control, TOKEN), "127.0.0.1", 0)
    logger = logging.getLogger("pgmigrator")
    handler, old_level = CollectorLogHandler(collector, logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    live = LiveClone(collector, server, control, settings)
    try:
        with server:
            yield live
            if live.future is not None:
                live.future.result(timeout=60)
    finally:
        live.pool.shutdown(wait=True)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class WsRecorder(threading.Thread):
    """Collects every WebSocket snapshot until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url.replace("http://", "ws://") + "/api/v1/ws"
        self.snapshots: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.connected = threading.Event()

    def run(self) -> None:
        with ws_connect(self.url) as ws:
            self.connected.set()
            while not self.stop.is_set():
                try:
                    self.snapshots.append(orjson.loads(ws.recv(timeout=1)))
                except TimeoutError:
                    continue


def test_api_metrics_and_websocket_follow_a_real_clone(pair: Pair, tmp_path: Path) -> None:
    with live_clone(pair, tmp_path) as live:
        recorder = WsRecorder(live.server.url)
        recorder.start()
        assert recorder.connected.wait(10)
        live.start()
        samples: list[dict[str, Any]] = []
        while live.running(timeout=0.1):
            samples.append(live.get("/api/v1/status").json())
            live.get("/metrics")  # scrapes during the copy must work too
        status = live.get("/api/v1/status").json()
        tables = live.get("/api/v1/tables").json()
        scraped = metrics(live.get("/metrics").text)
        wait_for(lambda: recorder.snapshots and recorder.snapshots[-1]["phase"] == "done", 10)
        recorder.stop.set()
        recorder.join(5)

    big = next(t for t in status["tables"] if t["name"] == "big")
    assert status["phase"] == "done" and big["state"] == "copied"
    assert big["rows_copied"] == ROWS and big["percent"] == 100.0
    assert tables["tables"] == status["tables"] and tables["tables_copied"] == 2
    copied = sum(t["rows_copied"] for t in status["tables"])
    assert copied == ROWS + 20_000 == status["total_rows"]
    labels = (("schema", "public"), ("table", "big"))
    assert scraped[("pgmigrator_table_rows_copied", labels)] == ROWS
    assert scraped[("pgmigrator_table_progress_ratio", labels)] == 1.0
    assert scraped[("pgmigrator_rows_copied_total", ())] == copied
    assert scraped[("pgmigrator_rows_total", ())] == status["total_rows"]
    assert scraped[("pgmigrator_phase", (("phase", "done"),))] == 1.0
    assert scraped[("pgmigrator_phase", (("phase", "copy"),))] == 0.0

    # The numbers moved while we watched, and never went backwards.
    for series in (samples, recorder.snapshots):
        totals = [s["total_rows"] for s in series]
        assert totals == sorted(totals)
    ws_phases = [s["phase"] for s in recorder.snapshots]
    assert len(recorder.snapshots) >= 2 and len(set(ws_phases)) >= 2, ws_phases
    assert ws_phases[-1] == "done" and recorder.snapshots[0]["total_rows"] < copied
    assert recorder.snapshots[-1]["total_rows"] == copied
    uptimes = [s["uptime_s"] for s in recorder.snapshots]
    assert uptimes == sorted(uptimes) and uptimes[0] < uptimes[-1]
    # The password of the test clusters never shows.
    assert "pgm-secret" not in orjson.dumps(status).decode()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_dashboard_in_headless_chromium(pair: Pair, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with live_clone(pair, tmp_path, rows=100_000) as live, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(live.server.url + "/")
            expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
            live.start()  # the page watches the whole clone, so the chart has a history
            expect(page.locator("#phase")).to_have_text("done", timeout=60_000)
            big = page.locator('tr[data-table="public.big"]')
            expect(big.locator(".pct")).to_have_text("100.0%")
            expect(big.locator(".col-rows")).to_contain_text("100,000 /")
            expect(page.locator("#tables-copied")).to_have_text("2")
            expect(page.locator("#logs li").first).to_be_visible()

            page.click("#btn-pause")  # no token yet: refused, the pipeline is not called
            expect(page.locator("#control-result")).to_contain_text("wrong or missing token")
            assert live.control.calls == []
            page.fill("#token", TOKEN)
            page.click("#btn-pause")
            expect(page.locator("#control-result")).to_have_text("pause: paused")
            assert live.control.calls == ["pause"]
            assert page.evaluate("localStorage.getItem('pgmigrator.token')") == TOKEN

            # docs/dashboard.png is refreshed only on request (PGMIGRATOR_UPDATE_SCREENSHOT=1)
            shot = (
                SCREENSHOT if os.environ.get("PGMIGRATOR_UPDATE_SCREENSHOT") else tmp_path / "d.png"
            )
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
