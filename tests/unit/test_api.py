"""Unit tests of the HTTP API: every endpoint against a collector fed by hand (no database)."""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from collections.abc import Iterator

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from pgmigrator import config
from pgmigrator.api import (
    ApiServer,
    NoControl,
    create_app,
    parse_api_addr,
    readiness,
    resolve_token,
)
from pgmigrator.errors import ConfigError, PgMigratorError
from pgmigrator.metrics import Collector, TableEstimate

with warnings.catch_warnings():  # starlette 1.10 prefers httpx2 for its test client
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

TOKEN = "s3cr3t-token"
SECRET = "hunter2"
READS = ["/api/v1/status", "/api/v1/tables", "/api/v1/logs", "/api/v1/config", "/metrics"]
PROBES = ["/healthz", "/livez", "/readyz", "/startupz"]


class FakeControl:
    """Records every control call; ``refuse`` makes them raise like a pipeline would."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[str] = []
        self.refuse = refuse

    async def _do(self, action: str) -> str:
        self.calls.append(action)
        if self.refuse:
            raise PgMigratorError(self.refuse)
        return f"{action} requested"

    async def pause(self) -> str:
        return await self._do("pause")

    async def resume(self) -> str:
        return await self._do("resume")

    async def switchover(self) -> str:
        return await self._do("switchover")

    async def verify(self) -> str:
        return await self._do("verify")


def settings() -> config.Settings:
    return config.load(
        None,
        name="apitest",
        source=f"host=src.example dbname=app user=app password={SECRET}",
        dest=f"postgresql://app:{SECRET}@dst.example/app",
    )


def fed_collector() -> Collector:
    """A collector in the middle of a copy, with a sink, health, logs and a slot size."""
    c = Collector("apitest", publish_interval=0.05)
    c.set_tables(
        [
            TableEstimate("public", "orders", rows_total=1000, bytes_total=100_000),
            TableEstimate("sales", "items", rows_total=50, bytes_total=5_000),
        ]
    )
    c.set_phase("copy")
    c.set_state("running")
    c.table_started("public", "orders")
    c.table_progress("public", "orders", 400, 40_000)
    c.table_done("sales", "items", 50, 5_000)
    c.set_lsns(applied="0/1000", confirmed="0/1000", latest="0/3000", lag_s=2.5)
    c.sink_counter("webhook", delivered=7, failed=1, retried=2, dropped=0, queue_depth=3)
    c.set_health("source", "ok")
    c.set_health("destination", "ok")
    c.set_info("slot_retained_bytes", 123456)
    c.update_info({"source": settings().redacted()["source"]})
    c.log("info", "copy", "table copied", table="sales.items", rows=50)
    c.log("warning", "copy", "slow destination")
    c.record_error("boom", component="copy")
    return c


@pytest.fixture
def collector() -> Collector:
    return fed_collector()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def client(collector: Collector, control: FakeControl) -> Iterator[TestClient]:
    with TestClient(create_app(collector, settings(), control, TOKEN)) as c:
        yield c


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- reads ---------------------------------------------------------------------------------------


def test_status_is_the_snapshot(client: TestClient) -> None:
    res = client.get("/api/v1/status")
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/json"
    body = res.json()
    assert body["phase"] == "copy" and body["pipeline"] == "apitest"
    assert body["tables_total"] == 2 and body["tables_copied"] == 1
    assert body["lag_bytes"] == 0x2000 and body["error_count"] == 1


def test_tables(client: TestClient) -> None:
    body = client.get("/api/v1/tables").json()
    assert body["tables_total"] == 2 and body["tables_by_state"] == {"copying": 1, "copied": 1}
    orders = next(t for t in body["tables"] if t["name"] == "orders")
    assert orders["rows_copied"] == 400 and orders["percent"] == 40.0


def test_logs_limit_and_level(client: TestClient) -> None:
    logs = client.get("/api/v1/logs").json()["logs"]
    assert [e["message"] for e in logs] == ["table copied", "slow destination"]
    assert client.get("/api/v1/logs?limit=1").json()["logs"][0]["message"] == "slow destination"
    warned = client.get("/api/v1/logs?level=warning").json()["logs"]
    assert [e["level"] for e in warned] == ["warning"]
    for bad in ("limit=x", "level=loud"):
        res = client.get(f"/api/v1/logs?{bad}")
        assert res.status_code == 400 and res.json()["error"] == "bad_request"


def test_config_is_redacted_and_no_response_leaks_the_password(client: TestClient) -> None:
    body = client.get("/api/v1/config").json()
    assert body["name"] == "apitest" and "***" in body["source"] and "***" in body["dest"]
    for path in ["/", "/api/v1/openapi.json", *READS, *PROBES]:
        res = client.get(path, headers=auth())
        assert SECRET not in res.text, path
        assert TOKEN not in res.text, path
    with client.websocket_connect("/api/v1/ws") as ws:
        assert SECRET not in ws.receive_text()


def test_dashboard_and_static_files(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200 and "text/html" in res.headers["content-type"]
    assert (
        "/static/app.js" in res.text
        and "default-src 'self'" in res.headers["content-security-policy"]
    )
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        res = client.get(f"/static/{name}")
        assert res.status_code == 200 and kind in res.headers["content-type"]
    missing = client.get("/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


# -- errors and authentication -------------------------------------------------------------------


def test_unknown_path_and_wrong_method_are_json(client: TestClient) -> None:
    res = client.get("/api/v1/nope")
    assert res.status_code == 404
    assert res.json() == {"error": "not_found", "message": "no such endpoint: GET /api/v1/nope"}
    res = client.get("/api/v1/pause")
    assert res.status_code == 405 and res.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("action", ["pause", "resume", "switchover", "verify"])
def test_control_needs_the_token(client: TestClient, control: FakeControl, action: str) -> None:
    for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        res = client.post(f"/api/v1/{action}", headers=headers)
        assert res.status_code == 401, headers
        assert res.json()["error"] == "unauthorized"
        assert res.headers["www-authenticate"].startswith("Bearer")
    assert control.calls == []
    res = client.post(f"/api/v1/{action}", headers=auth())
    assert res.status_code == 200
    assert res.json() == {"ok": True, "action": action, "message": f"{action} requested"}
    assert control.calls == [action]


def test_refused_control_is_409(collector: Collector) -> None:
    refusing = FakeControl(refuse="already paused")
    with TestClient(create_app(collector, settings(), refusing, TOKEN)) as c:
        res = c.post("/api/v1/pause", headers=auth())
    assert res.status_code == 409 and res.json() == {
        "error": "conflict",
        "message": "already paused",
    }
    with TestClient(create_app(collector, settings(), NoControl(), TOKEN)) as c:
        res = c.post("/api/v1/switchover", headers=auth())
    assert res.status_code == 409 and res.json()["message"] == "not supported by this command"


def test_protected_reads(collector: Collector, control: FakeControl) -> None:
    app = create_app(collector, settings(), control, TOKEN, protect_reads=True)
    with TestClient(app) as c:
        for path in READS:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=auth("nope")).status_code == 401, path
            assert c.get(path, headers=auth()).status_code == 200, path
        for path in [*PROBES, "/", "/api/v1/openapi.json"]:
            assert c.get(path).status_code in (200, 503), path
        for bad in ("/api/v1/ws", "/api/v1/ws?token=wrong"):
            with pytest.raises(WebSocketDisconnect) as denied, c.websocket_connect(bad):
                pass
            assert denied.value.code == 1008
        with c.websocket_connect(f"/api/v1/ws?token={TOKEN}") as ws:
            assert ws.receive_json()["phase"] == "copy"
        with c.websocket_connect("/api/v1/ws", headers=auth()) as ws:
            assert ws.receive_json()["phase"] == "copy"


# -- WebSocket and OpenAPI -----------------------------------------------------------------------


def test_websocket_pushes_changing_snapshots(client: TestClient, collector: Collector) -> None:
    with client.websocket_connect("/api/v1/ws") as ws:
        first = orjson.loads(ws.receive_text())
        collector.table_progress("public", "orders", 900, 90_000)
        collector.set_phase("post-data")
        seen = [first]
        while seen[-1]["phase"] != "post-data" and len(seen) < 50:
            seen.append(ws.receive_json())
    assert len(seen) >= 2
    assert first["phase"] == "copy" and seen[-1]["phase"] == "post-data"
    assert seen[-1]["total_rows"] > first["total_rows"]


def test_openapi_describes_every_route(client: TestClient) -> None:
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    app = client.app
    assert isinstance(app, Starlette)
    paths = {r.path for r in app.routes if isinstance(r, (Route, WebSocketRoute))}
    assert paths and paths <= set(doc["paths"]), paths - set(doc["paths"])
    for action in ("pause", "resume", "switchover", "verify"):
        assert doc["paths"][f"/api/v1/{action}"]["post"]["security"] == [{"bearerAuth": []}]


# -- Prometheus ----------------------------------------------------------------------------------


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, [])
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def test_metrics_families(client: TestClient) -> None:
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    m = metric_samples(res.text)
    expected = [
        "pgmigrator_phase", "pgmigrator_pipeline_info", "pgmigrator_lag_bytes",
        "pgmigrator_lag_seconds", "pgmigrator_rows_total", "pgmigrator_bytes_total",
        "pgmigrator_rows_copied_total", "pgmigrator_bytes_copied_total",
        "pgmigrator_rows_applied_total", "pgmigrator_bytes_applied_total",
        "pgmigrator_table_progress_ratio", "pgmigrator_table_rows_copied",
        "pgmigrator_sink_delivered_total", "pgmigrator_sink_failed_total",
        "pgmigrator_sink_retried_total", "pgmigrator_sink_dropped_total",
        "pgmigrator_sink_queue_depth", "pgmigrator_errors_total",
        "pgmigrator_slot_retained_wal_bytes", "pgmigrator_component_healthy",
        "pgmigrator_rows_per_second", "pgmigrator_tables",
    ]  # fmt: skip
    missing = [name for name in expected if name not in m]
    assert not missing, missing
    assert ({"phase": "copy"}, 1.0) in m["pgmigrator_phase"]
    assert ({"phase": "done"}, 0.0) in m["pgmigrator_phase"]
    assert m["pgmigrator_lag_bytes"] == [({}, 8192.0)]
    assert m["pgmigrator_lag_seconds"] == [({}, 2.5)]
    assert m["pgmigrator_rows_copied_total"] == [({}, 450.0)]
    assert ({"schema": "public", "table": "orders"}, 0.4) in m["pgmigrator_table_progress_ratio"]
    assert m["pgmigrator_sink_delivered_total"] == [({"sink": "webhook"}, 7.0)]
    assert m["pgmigrator_sink_queue_depth"] == [({"sink": "webhook"}, 3.0)]
    assert m["pgmigrator_errors_total"] == [({}, 1.0)]
    assert m["pgmigrator_slot_retained_wal_bytes"] == [({}, 123456.0)]


def test_metrics_follow_the_collector_and_negotiate_openmetrics(
    client: TestClient, collector: Collector
) -> None:
    collector.add_rows(25, 2500)
    m = metric_samples(client.get("/metrics").text)
    assert m["pgmigrator_rows_total"] == [({}, 475.0)]
    assert m["pgmigrator_rows_applied_total"] == [({}, 25.0)]
    res = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert res.headers["content-type"].startswith("application/openmetrics-text")
    assert res.text.rstrip().endswith("# EOF")


# -- probes --------------------------------------------------------------------------------------


def test_healthz(client: TestClient, collector: Collector) -> None:
    res = client.get("/healthz")
    assert res.status_code == 200 and res.json()["status"] == "ok"
    collector.set_health("destination", "down", "connection refused")
    res = client.get("/healthz")
    assert res.status_code == 503
    assert res.json()["reason"] == "destination is down"
    assert res.json()["components"]["destination"]["detail"] == "connection refused"


def test_livez_and_startupz(client: TestClient, collector: Collector) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/startupz").status_code == 200
    for phase in ("idle", "connecting"):
        collector.set_phase(phase)
        res = client.get("/startupz")
        assert res.status_code == 503 and phase in res.json()["reason"]


def test_readyz(client: TestClient, collector: Collector) -> None:
    res = client.get("/readyz")
    assert res.status_code == 503 and "phase is copy" in res.json()["reason"]
    collector.set_phase("streaming")
    collector.set_lsns(applied="0/2F00", latest="0/3000", lag_s=30.0)
    res = client.get("/readyz")
    assert res.status_code == 503 and "over" in res.json()["reason"]
    collector.set_lsns(lag_s=1.0)
    assert client.get("/readyz").status_code == 200
    collector.set_phase("done")
    assert client.get("/readyz").json() == {"status": "ready", "reason": "done"}
    base = {"phase": "streaming", "lag_s": None, "lag_bytes": None}
    assert readiness(base, 10, 1000) == (False, "lag not known yet")
    assert readiness({**base, "lag_bytes": 5000}, 10, 1000)[0] is False
    assert readiness({**base, "lag_bytes": 500}, 10, 1000)[0] is True


# -- server, addresses, tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:9000", ("localhost", 9000)),
    ],
)
def test_parse_api_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_api_addr(text) == expected


@pytest.mark.parametrize(
    "text",
    ["8080", "127.0.0.1", "host:http", "h:70000", "::1:8080", "[::1]8080", "[nope]:1", "a b:1", ""],
)
def test_parse_api_addr_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--api-addr"):
        parse_api_addr(text)


def test_resolve_token() -> None:
    assert resolve_token("given") == ("given", False)
    token, generated = resolve_token(None)
    assert generated and len(token) >= 32 and token != resolve_token("")[0]


def test_server_in_a_thread_on_port_0(collector: Collector, control: FakeControl) -> None:
    server = ApiServer(create_app(collector, settings(), control, TOKEN), "127.0.0.1", 0)
    with server:
        assert server.port > 0 and server.running
        res = httpx.post(f"{server.url}/api/v1/pause", headers=auth(), timeout=5)
        assert res.status_code == 200 and control.calls == ["pause"]
        busy = ApiServer(create_app(collector, None, control, TOKEN), "127.0.0.1", server.port)
        with pytest.raises(ConfigError, match="cannot listen"):
            busy.start_in_thread()
    assert not server.running
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", server.port))


async def test_server_in_the_event_loop(collector: Collector, control: FakeControl) -> None:
    server = ApiServer(create_app(collector, settings(), control, TOKEN), "::1", 0)
    try:
        await server.start()
    except ConfigError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.url.startswith("http://[::1]:")
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            assert (await http.get("/livez")).status_code == 200
            res = await http.post("/api/v1/resume", headers=auth())
            assert res.json()["message"] == "resume requested"
    finally:
        await asyncio.wait_for(server.stop(), 10)
    assert not server.running


@pytest.mark.parametrize(
    ("host", "token", "protect", "words"),
    [
        ("0.0.0.0", None, False, "without a token: anyone"),
        ("0.0.0.0", TOKEN, False, "on read endpoints"),
        ("0.0.0.0", TOKEN, True, None),
        ("127.0.0.1", None, False, None),
    ],
)
def test_warns_when_exposed_without_protection(
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
    host: str,
    token: str | None,
    protect: bool,
    words: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="pgmigrator")
    logger = logging.getLogger("pgmigrator.api")
    logger.addHandler(caplog.handler)  # works even if the tree stopped propagating to the root
    try:
        with ApiServer(create_app(collector, None, NoControl(), token, protect), host, 0):
            pass
    finally:
        logger.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(words in w for w in warned) if words else not warned, warned
