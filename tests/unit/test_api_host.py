"""The API's pipeline control: refused (409) before a follower exists, delegated once it does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from pgmigrator import config
from pgmigrator.api import create_app
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.control import PipelineControl
from pgmigrator.pipeline.lifecycle import Lifecycle

TOKEN = "t0ken"


class FakeFollower:
    """Stands in for `Follow`: the same lifecycle object, no database."""

    def __init__(self) -> None:
        self.lifecycle = Lifecycle()
        self.lifecycle.to("running")

    def pause(self) -> str:
        self.lifecycle.pause()
        return "paused"

    def resume(self) -> str:
        self.lifecycle.resume()
        return "resumed"


async def test_control_before_and_after_the_follower_starts() -> None:
    settings = config.load(None, source="host=a dbname=x", dest="host=b dbname=y")
    control = PipelineControl(settings)
    app = create_app(Collector("t"), settings, control, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        res = await c.post("/api/v1/pause", headers=auth)
        assert res.status_code == 409 and "nothing is streaming yet" in res.json()["message"]
        assert (await c.post("/api/v1/switchover", headers=auth)).status_code == 409
        control.target = follower = FakeFollower()
        assert (await c.post("/api/v1/pause", headers=auth)).json()["message"] == "paused"
        assert follower.lifecycle.paused
        res = await c.post("/api/v1/pause", headers=auth)
        assert res.status_code == 409 and "from paused to paused" in res.json()["message"]
        assert (await c.post("/api/v1/resume", headers=auth)).json()["message"] == "resumed"
        assert (await c.post("/api/v1/resume")).status_code == 401


def test_api_token_is_redacted_from_served_config() -> None:
    settings = config.load(None, source="host=a password=pw dbname=x", api={"token": "s3cret"})
    shown = settings.redacted()
    assert shown["api"]["token"] == "***" and "pw" not in shown["source"]


async def test_background_switchover_and_verify_failures_show(tmp_path: Path) -> None:
    """A switchover or live verification started from the API that fails (here: nothing
    listens on the servers' port) is never silent: the error counts and shows, the
    verification's outcome says it failed, and /metrics gets -1 for it."""
    dead = "host=127.0.0.1 port=1 dbname=x connect_timeout=2"
    settings = config.load(None, source=dead, dest=dead, state_dir=tmp_path)
    collector = Collector("t")
    control = PipelineControl(settings, collector)
    control.target = FakeFollower()
    await control.switchover()
    await control.verify()
    for thread in (control._switchover, control._verify):
        assert thread is not None
        await asyncio.to_thread(thread.join, 30)
    snap = collector.snapshot()
    assert snap["error_count"] >= 1
    assert snap["last_error"]["message"].startswith("switchover failed: ")
    assert snap["info"]["verification"].startswith("failed at ")
    assert snap["info"]["verification_differing"] == -1
