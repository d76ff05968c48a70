"""Journey: `pgmigrator listen` forwards NOTIFYs to sinks and survives its connection being killed."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def listener_pid(pair: Pair, channel: str) -> int | None:
    """The backend of `listen` once it has issued LISTEN on ``channel`` (its last statement)."""
    with pair.src() as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgmigrator-listen'"
            " AND datname = current_database() AND query = %s AND state = 'idle'",
            (f'LISTEN "{channel}"',),
        ).fetchone()
    return row[0] if row else None


def notify(pair: Pair, channel: str, payload: str) -> None:
    with pair.src() as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def test_listen_json_and_text_payloads_and_reconnect(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    out = tmp_path / "n.jsonl"
    proc = start_pgmigrator(
        "listen", "--source", pair.source, "--name", pair.dbname,
        "--channel", "jobs", "--channel", "alerts", "--sink", f"file:path={out}",
    )  # fmt: skip
    procs.append(proc)
    first = wait_for(lambda: listener_pid(pair, "alerts"), what="LISTEN on both channels")
    notify(pair, "jobs", '{"job": 1, "tags": ["a"]}')
    notify(pair, "alerts", "disk almost full")
    notify(pair, "ignored", "not listened to")
    events = wait_for(lambda: len(read_events(out)) >= 2 and read_events(out), what="two events")
    assert isinstance(events, list)
    assert [e["channel"] for e in events] == ["jobs", "alerts"]
    assert events[0]["payload"] == {"job": 1, "tags": ["a"]}
    assert events[1]["payload"] == "disk almost full"
    assert all(e["op"] == "n" and e["pid"] > 0 for e in events)
    assert events[0]["source"]["db"] == pair.dbname
    assert len({e["id"] for e in events}) == 2

    with pair.src() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    second = wait_for(
        lambda: (pid := listener_pid(pair, "alerts")) not in (None, first) and pid,
        what="a new connection that re-issued LISTEN",
    )
    assert second != first
    notify(pair, "jobs", "[1, 2, 3]")
    notify(pair, "alerts", "after the reconnect")
    events = wait_for(
        lambda: len(read_events(out)) >= 4 and read_events(out), what="events after reconnect"
    )
    assert isinstance(events, list)
    assert [e["payload"] for e in events[2:]] == [[1, 2, 3], "after the reconnect"]
    assert len({e["id"] for e in events}) == 4

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "re-established" in err and "gap_s=" in err
    assert "4 notification(s), 1 reconnect(s)" in err


def test_listen_to_stdout(pair: Pair, procs: list[subprocess.Popen[str]]) -> None:
    proc = start_pgmigrator(
        "listen", "--source", pair.source, "--channel", "c1", "--sink", "stdout"
    )
    procs.append(proc)
    wait_for(lambda: listener_pid(pair, "c1"), what="LISTEN")
    notify(pair, "c1", "42")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    doc = orjson.loads(line)
    assert doc["payload"] == 42 and doc["channel"] == "c1"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_listen_bad_input(pair: Pair) -> None:
    result = pgmigrator("listen", "--source", pair.source, "--sink", "stdout")
    assert result.returncode == 2 and "--channel" in result.stderr
    bad = pair.source.replace("pgm-secret", "wrong-password")
    result = pgmigrator("listen", "--source", bad, "--channel", "x", "--sink", "stdout", timeout=60)
    assert result.returncode == 1
    assert "authentication failed" in result.stderr
    assert "wrong-password" not in result.stderr and "Traceback" not in result.stderr
    result = pgmigrator("listen", "--source", pair.source, "--channel", "x", "--sink", "nope")
    assert result.returncode == 2 and "unknown sink type 'nope'" in result.stderr
