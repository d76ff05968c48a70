"""Journey: operate a running `stream`: rejected events go to the dead-letter queue and the stream
moves on; the config file is reloaded live (sinks swapped at a clean cut, bad files refused);
pause and resume through the API."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pgmigrator.devcluster import free_port
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for
from tests.scenarios.test_stream import read_events
from tests.scenarios.webhook_receiver import Receiver

TOKEN = "operate-token"


@pytest.fixture
def orders(pair: Pair) -> Pair:
    with pair.src() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
    return pair


def insert(pair: Pair, first: int, last: int) -> None:
    with pair.src() as conn:
        for i in range(first, last + 1):  # one transaction each
            conn.execute("INSERT INTO orders VALUES (%s, %s)", (i, f"item {i}"))


def running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"stream exited: {proc.stderr.read() if proc.stderr else ''}")


def slot_active(pair: Pair, proc: subprocess.Popen[str]) -> bool:
    running(proc)
    with pair.src() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE active AND database = current_database()"
        ).fetchone()
    return bool(row and row[0])


def created_keys(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["key"]["id"]) for e in events if e["op"] == "c"]


def accepted_keys(receiver: Receiver) -> list[int]:
    with receiver._lock:
        accepted = [r for r in receiver.requests if 200 <= r.status < 300]
    return [int(d["key"]["id"]) for r in accepted for d in r.documents()]


def test_rejected_events_are_dead_lettered_and_replayed(
    orders: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    pair = orders
    receiver = Receiver().start()
    receiver.plan = deque([400, 400])  # the first two requests are rejected for good
    common = ["--dest", pair.dest, "--name", pair.dbname]  # a fresh state file per test
    try:
        proc = start_pgmigrator(
            "stream", "--source", pair.source, *common, "--create",
            "--sink", f"webhook:name=hook,url={receiver.url}",
        )  # fmt: skip
        procs.append(proc)
        wait_for(lambda: slot_active(pair, proc), 60, what="the stream to start")
        insert(pair, 1, 6)
        # the stream moves on past the rejected events: the later ones arrive
        wait_for(lambda: running(proc) or len(accepted_keys(receiver)) == 4, 60, what="4 delivered")
        entries = json.loads(pgmigrator("dlq", "list", *common, "--json").stdout)
        assert len(entries) == 2 and {e["sink"] for e in entries} == {"hook"}
        assert all("400" in e["error"] and e["table_name"] == "orders" for e in entries)
        target = tmp_path / "dlq.jsonl"
        res = pgmigrator("dlq", "replay", *common, "--sink", "hook", "--to", f"file:path={target}")
        assert res.returncode == 0 and "replayed 2 event(s)" in res.stdout, res.stderr
        recovered = created_keys(read_events(target))
        assert sorted(recovered + accepted_keys(receiver)) == [1, 2, 3, 4, 5, 6]
        assert recovered == sorted(recovered)  # replayed in source order

        def dead_lettered() -> int | None:  # the state file is written every 2 s
            res = pgmigrator("status", "--name", pair.dbname, "--json")
            sinks = json.loads(res.stdout).get("sinks", {}) if res.returncode == 0 else {}
            return sinks.get("hook", {}).get("dead_lettered")

        assert wait_for(lambda: dead_lettered() == 2, 30, interval=0.2, what="dead_lettered 2")
    finally:
        receiver.stop()


def write_config(path: Path, pair: Pair, sinks: list[dict[str, Any]], **extra: Any) -> None:
    doc = {"source": pair.source, "name": pair.dbname, "sinks": sinks, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)  # atomic, like an editor's save


def test_config_reload_swaps_sinks_at_a_clean_cut(
    orders: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    pair = orders
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = tmp_path / "pgmigrator.yaml"
    write_config(config, pair, [{"type": "file", "name": "first", "path": str(first)}])
    proc = start_pgmigrator("stream", "--config", str(config), "--create")
    procs.append(proc)
    wait_for(lambda: slot_active(pair, proc), 60, what="the stream to start")
    insert(pair, 1, 20)
    wait_for(lambda: running(proc) or len(read_events(first)) == 20, 60, what="20 events")

    # an invalid file and a change to a fixed setting are refused: the stream goes on as before
    config.write_text("sinks: [ {type: file, queue: -5} ]\n")
    wait_reload(pair, proc, "refused", 1)
    write_config(config, pair, [{"type": "file", "name": "first", "path": str(first)}],
                 slot="elsewhere")  # fmt: skip
    assert "slot" in wait_reload(pair, proc, "refused", 2)["last"]
    insert(pair, 21, 25)
    wait_for(lambda: running(proc) or len(read_events(first)) == 25, 60, what="25 events")

    write_config(
        config, pair,
        [{"type": "file", "name": "second", "path": str(second)}],
        stream={"operations": ["c", "d"]},
    )  # fmt: skip
    wait_reload(pair, proc, "reloads", 1)
    insert(pair, 26, 40)
    with pair.src() as conn:
        conn.execute("UPDATE orders SET item = 'changed' WHERE id = 40")  # filtered out now
        conn.execute("DELETE FROM orders WHERE id = 39")
    wait_for(lambda: running(proc) or any(e["op"] == "d" for e in read_events(second)), 60,
             what="the delete in the second sink")  # fmt: skip
    assert created_keys(read_events(first)) == list(range(1, 26))  # first: everything to the cut
    after = read_events(second)
    assert created_keys(after) == list(range(26, 41))  # second: everything after it
    assert not any(e["op"] == "u" for e in after)  # the reloaded filter applies
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "fixed settings cannot change" in err and "new file is invalid" in err


def wait_reload(
    pair: Pair, proc: subprocess.Popen[str], counter: str, value: int
) -> dict[str, Any]:
    """The stream's reload record (from the state file) once ``counter`` reached ``value``."""

    def seen() -> dict[str, Any] | None:
        running(proc)
        res = pgmigrator("status", "--name", pair.dbname, "--json")
        if res.returncode != 0:
            return None
        record = json.loads(res.stdout).get("info", {}).get("config_reload") or {}
        return record if record.get(counter, 0) >= value else None

    return wait_for(seen, 60, interval=0.2, what=f"config reload {counter}={value}")  # type: ignore[return-value]


def test_pause_and_resume_a_stream_through_the_api(
    orders: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    pair = orders
    out = tmp_path / "events.jsonl"
    api = f"127.0.0.1:{free_port()}"
    proc = start_pgmigrator(
        "stream", "--source", pair.source, "--name", pair.dbname, "--create",
        "--sink", f"file:path={out}", "--api-addr", api, "--api-token", TOKEN,
    )  # fmt: skip
    procs.append(proc)
    wait_for(lambda: slot_active(pair, proc), 60, what="the stream to start")

    def state() -> str | None:
        try:
            return str(httpx.get(f"http://{api}/api/v1/status", timeout=10).json()["state"])
        except httpx.HTTPError:
            return None

    wait_for(lambda: state() == "running", 60, what="the stream to run")  # pause needs it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = httpx.post(f"http://{api}/api/v1/pause", headers=auth, timeout=10)
    assert res.status_code == 200 and res.json()["message"] == "paused", res.text
    insert(pair, 1, 10)
    hold_until = time.monotonic() + 2.0  # held paused for a while: nothing may come out
    while time.monotonic() < hold_until:
        status = httpx.get(f"http://{api}/api/v1/status", timeout=10).json()
        assert status["state"] == "paused" and read_events(out) == []
        time.sleep(0.2)  # pacing of the checks, not a wait for an event
    assert httpx.post(f"http://{api}/api/v1/resume", headers=auth, timeout=10).status_code == 200
    wait_for(lambda: running(proc) or len(read_events(out)) == 10, 60, what="10 events")


def test_wal_budget_detaches_a_stuck_sink(
    orders: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """A webhook that stays down would pin WAL for ever: over the budget, it is detached."""
    pair = orders
    receiver = Receiver().start()
    receiver.stop()  # down from the start, and it stays down
    config = tmp_path / "budget.yaml"
    config.write_text(yaml.safe_dump({
        "source": pair.source, "dest": pair.dest, "name": pair.dbname,
        "sinks": [{"type": "webhook", "name": "hook", "url": receiver.url}],
        "wal_budget": {"warn_mb": 1, "max_mb": 1, "check_s": 0.5, "detach_sinks": True},
        "dlq": {"max_attempts": 0},  # retry for ever: only the budget can let go of it
    }))  # fmt: skip
    proc = start_pgmigrator("stream", "--config", str(config), "--create")
    procs.append(proc)
    wait_for(lambda: slot_active(pair, proc), 60, what="the stream to start")
    with pair.src() as conn:  # about 3 MB of WAL the slot must keep while the sink is stuck
        conn.execute(
            "INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 10000) g"
        )
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]

    def slot_released() -> bool:
        running(proc)
        with pair.src() as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                " WHERE database = current_database()",
                (target,),
            ).fetchone()
        return bool(row and row[0])

    wait_for(slot_released, 120, interval=0.2, what="the slot to move past the stuck sink")
    entries = json.loads(
        pgmigrator("dlq", "list", "--dest", pair.dest, "--name", pair.dbname, "--json",
                   "--limit", "20000").stdout
    )  # fmt: skip
    assert len(entries) == 10000 and all("WAL budget" in e["error"] for e in entries)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "sink detached" in err
