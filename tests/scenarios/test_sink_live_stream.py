"""Journey: `pgmigrator stream --sink sse --sink websocket --api-addr`: live changes in a browser-like client."""

from __future__ import annotations

import signal
import subprocess

import httpx
import orjson
from websockets.sync.client import connect

from pgmigrator.devcluster import free_port
from tests.conftest import Pair, start_pgmigrator, wait_for


def slot_active(pair: Pair) -> bool:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
            (f"pgmigrator_{pair.dbname}",),
        ).fetchone()
    return bool(row and row[0])


def api_up(url: str, proc: subprocess.Popen[str]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"stream exited: {proc.stderr.read() if proc.stderr else ''}")
    try:
        return httpx.get(url + "/livez", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_sse_and_websocket_clients_see_live_changes(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    proc = start_pgmigrator(
        "stream", "--source", pair.source, "--name", pair.dbname, "--create",
        "--sink", "sse:policy=drop,heartbeat_s=1", "--sink", "websocket:policy=drop",
        "--api-addr", f"127.0.0.1:{port}",
    )  # fmt: skip
    procs.append(proc)
    wait_for(lambda: api_up(api, proc), timeout=60, what="the API")
    wait_for(lambda: slot_active(pair), timeout=60, what="the stream to start")
    ws_url = api.replace("http://", "ws://") + "/api/v1/events/ws?op=u"
    with (
        httpx.Client(timeout=30) as http,
        http.stream("GET", api + "/api/v1/events/sse", params={"table": "public.orders"}) as sse,
        connect(ws_url) as ws,
    ):
        assert sse.status_code == 200
        with pair.src() as conn:
            conn.execute("INSERT INTO audit VALUES (1)")  # filtered out for the SSE client
            conn.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
            conn.execute("UPDATE orders SET item = 'c' WHERE id = 2")
        got = []
        for line in sse.iter_lines():
            if line.startswith("data: "):
                got.append(orjson.loads(line[6:]))
                if len(got) == 3:
                    break
        update = orjson.loads(ws.recv(timeout=30))
    assert [(e["op"], e["key"]["id"]) for e in got] == [("c", 1), ("c", 2), ("u", 2)]
    assert {e["source"]["table"] for e in got} == {"orders"}
    assert update["op"] == "u" and update["after"]["item"] == "c"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
