"""The API's pipeline control: refused (409) before a follower exists, delegated once it does."""

from __future__ import annotations

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
