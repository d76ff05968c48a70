"""Journey: operate a running `clone --follow` through its API: token, pause, resume, live
verification, switchover.

The pause is held for several times the source's ``wal_sender_timeout``: the walsender must not
drop us (status updates keep flowing while nothing is read), and nothing applied while paused.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pgmigrator.devcluster import free_port
from tests.conftest import Pair, start_pgmigrator, wait_for, wait_streaming

TOKEN = "control-token-0123"
# the config's `switchover:` section is what the API's switchover does
SWITCHOVER_CONFIG = {"PGMIGRATOR_SWITCHOVER__VERIFY": "live", "PGMIGRATOR_SWITCHOVER__SCHEMA": "1"}
SENDER_TIMEOUT_S = 2


@pytest.fixture
def short_sender_timeout(pair: Pair) -> Iterator[None]:
    with pair.source_cluster.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET wal_sender_timeout = '{SENDER_TIMEOUT_S}s'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with pair.source_cluster.connect() as conn:
            conn.execute("ALTER SYSTEM RESET wal_sender_timeout")
            conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def api_follower(pair: Pair, short_sender_timeout: None) -> Iterator[str]:
    with pair.src() as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items (v) SELECT 'x' FROM generate_series(1, 500)")
    url = f"http://127.0.0.1:{free_port()}"
    proc = start_pgmigrator(
        "clone", "--follow", "--source", pair.source, "--dest", pair.dest,
        "--api-addr", url.removeprefix("http://"), "--api-token", TOKEN,
        env=SWITCHOVER_CONFIG,
    )  # fmt: skip
    try:
        wait_streaming(pair, proc)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with pair.src() as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'ALTER DATABASE "{pair.dbname}" RESET default_transaction_read_only')


def post(url: str, action: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/api/v1/{action}", headers=headers, timeout=30)


def dest_count(pair: Pair) -> int:
    with pair.dst() as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def verification(url: str) -> str:
    info = httpx.get(f"{url}/api/v1/status", timeout=10).json()["info"]
    return str(info.get("verification", ""))


def walsender(pair: Pair) -> int | None:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE database = current_database() AND active"
        ).fetchone()
    return None if row is None else int(row[0])


def test_pause_outlasts_wal_sender_timeout_then_resume_and_switchover(
    pair: Pair, api_follower: str
) -> None:
    url = api_follower
    assert post(url, "pause", token=None).status_code == 401
    assert post(url, "pause", token="wrong").status_code == 401
    assert httpx.get(f"{url}/api/v1/status", timeout=10).json()["state"] == "running"

    res = post(url, "pause")
    assert res.status_code == 200 and res.json()["message"] == "paused"
    assert post(url, "pause").status_code == 409  # already paused: refused, says why
    pid = walsender(pair)
    with pair.src() as conn:
        conn.execute("INSERT INTO items (v) SELECT 'while paused' FROM generate_series(1, 100)")
    # hold the pause for 3x wal_sender_timeout, checking all along that the walsender stays
    # and nothing is applied
    hold_until = time.monotonic() + 3 * SENDER_TIMEOUT_S
    while time.monotonic() < hold_until:
        assert walsender(pair) == pid, "the walsender dropped the paused follower"
        assert dest_count(pair) == 500
        assert httpx.get(f"{url}/api/v1/status", timeout=10).json()["state"] == "paused"
        time.sleep(0.25)  # pacing of the checks above, not a wait for an event

    assert post(url, "resume").json()["message"] == "resumed"
    wait_for(lambda: dest_count(pair) == 600, 60, what="the changes made while paused")
    assert walsender(pair) == pid

    def items_table() -> dict[str, object]:  # per-table counts of the changes applied since
        tables = httpx.get(f"{url}/api/v1/tables", timeout=10).json()["tables"]
        return next(t for t in tables if (t["schema"], t["name"]) == ("public", "items"))

    wait_for(lambda: items_table()["rows_applied"] == 100, 10, what="items' applied count")
    assert items_table()["state"] == "streaming"

    assert post(url, "verify", token=None).status_code == 401
    assert post(url, "verify").status_code == 200
    wait_for(
        lambda: verification(url).startswith("all 1 tables equal as of "),
        60,
        what="the live verification's outcome",
    )
    metrics = httpx.get(f"{url}/metrics", timeout=10).text  # for alerts
    assert "\npgmigrator_verify_tables_differing 0.0\n" in metrics
    assert "\npgmigrator_verify_finished_timestamp_seconds 1." in metrics

    started = time.time()
    assert post(url, "switchover").status_code == 200
    wait_for(
        lambda: (
            httpx.get(f"{url}/api/v1/status", timeout=10).json()["phase"] == "switchover-complete"
        ),
        90,
        what="phase switchover-complete",
    )
    reports = Path(tempfile.gettempdir()).glob("switchover-default-*.json")
    [report] = [json.loads(r.read_text()) for r in reports if r.stat().st_mtime >= started]
    assert report["status"] == "complete" and report["verified_at_lsn"]  # verify: live
    assert report["schema"]["compared"] > 0 and report["schema"]["differences"] == []


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
def test_dashboard_pauses_and_resumes_a_real_follower(pair: Pair, api_follower: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(api_follower + "/")
            expect(page.locator("#phase")).to_have_text("streaming", timeout=15_000)
            expect(page.locator("#state")).to_have_text("running")
            page.fill("#token", TOKEN)
            page.click("#btn-pause")
            expect(page.locator("#control-result")).to_have_text("pause: paused")
            expect(page.locator("#state")).to_have_text("paused", timeout=10_000)
            with pair.src() as conn:
                conn.execute("INSERT INTO items (v) VALUES ('during pause')")
            assert dest_count(pair) == 500
            page.click("#btn-resume")
            expect(page.locator("#state")).to_have_text("running", timeout=10_000)
            wait_for(lambda: dest_count(pair) == 501, 60, what="the row inserted while paused")
            page.click("#btn-verify")
            expect(page.locator("#verification")).to_contain_text(
                "verification: all 1 tables equal as of", timeout=30_000
            )
        finally:
            browser.close()


async def test_probes_metrics_status_and_tui_agree_on_a_real_follower(
    pair: Pair, api_follower: str
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from pgmigrator.tui import PgMigratorTui

    async with httpx.AsyncClient(base_url=api_follower, timeout=10) as client:
        for probe in ("/livez", "/startupz", "/healthz"):
            assert (await client.get(probe)).status_code == 200, probe
        deadline = time.monotonic() + 20
        while (ready := await client.get("/readyz")).status_code != 200:  # lag known within ~1 s
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.05)
        assert ready.json()["status"] == "ready" and "streaming" in ready.json()["reason"]

        app = PgMigratorTui(api_follower, TOKEN, interval=0.1)
        async with app.run_test(size=(150, 45)) as pilot:
            deadline = time.monotonic() + 20
            while "state running" not in str(app.query_one("#summary").render()):
                assert time.monotonic() < deadline, "the TUI never showed the running state"
                await pilot.pause(0.05)
            await pilot.press("p")
            while "state paused" not in str(app.query_one("#summary").render()):
                assert time.monotonic() < deadline, "the TUI never showed the paused state"
                await pilot.pause(0.05)
            await pilot.press("q")

        status = (await client.get("/api/v1/status")).json()
        assert status["state"] == "paused" and status["phase"] == "streaming"
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families((await client.get("/metrics")).text)
            for s in f.samples
        }
        assert samples[("pgmigrator_phase", (("phase", "streaming"),))] == 1.0
        info = [k for k in samples if k[0] == "pgmigrator_pipeline_info"]
        assert info and ("state", "paused") in info[0][1]
        assert (await client.post(
            "/api/v1/resume", headers={"Authorization": f"Bearer {TOKEN}"}
        )).status_code == 200  # fmt: skip
        assert (await client.get("/api/v1/status")).json()["state"] == "running"


def test_follow_reloads_its_config_file(pair: Pair, tmp_path: Path) -> None:
    """Log level and limits apply live; a change to a fixed setting is refused, follow goes on."""
    import json

    import yaml

    from tests.conftest import pgmigrator

    with pair.src() as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
    config = tmp_path / "follow.yaml"
    base = {"source": pair.source, "dest": pair.dest, "name": pair.dbname}
    config.write_text(yaml.safe_dump(base))
    assert pgmigrator("clone", "--config", str(config)).returncode == 0
    proc = start_pgmigrator("follow", "--config", str(config))
    try:
        wait_streaming(pair, proc)

        def reload_record(counter: str, value: int) -> dict[str, object] | None:
            res = pgmigrator("status", "--name", pair.dbname, "--json")
            record = json.loads(res.stdout).get("info", {}).get("config_reload") or {}
            return record if res.returncode == 0 and record.get(counter, 0) >= value else None

        config.write_text(yaml.safe_dump({**base, "log_level": "warning", "retry": {"max_s": 5}}))
        wait_for(lambda: reload_record("reloads", 1), 60, interval=0.2, what="the reload")
        config.write_text(yaml.safe_dump({**base, "slot": "elsewhere"}))
        record = wait_for(lambda: reload_record("refused", 1), 60, interval=0.2, what="refusal")
        assert "slot" in str(record["last"])  # type: ignore[index]
        with pair.src() as conn:
            conn.execute("INSERT INTO items (v) VALUES ('after the reloads')")
        wait_for(lambda: items_on_dest(pair) == 1, 60, what="the row applied after the reloads")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def items_on_dest(pair: Pair) -> int:
    with pair.dst() as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
