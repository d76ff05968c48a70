"""Journey: `pgmigrator stream` of a live database to sinks: snapshot then changes, types, kill -9,
rotation, filters, bad input."""

from __future__ import annotations

import base64
import gzip
import http.server
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for


def read_events(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # not created yet, or being rotated right now
        return []
    lines = data.split(b"\n")
    return [orjson.loads(line) for line in lines[:-1]]  # a torn last line is not acknowledged


def start_stream(
    pair: Pair, procs: list[subprocess.Popen[str]], *args: str
) -> subprocess.Popen[str]:
    proc = start_pgmigrator("stream", "--source", pair.source, "--name", pair.dbname, *args)
    procs.append(proc)
    return proc


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def wait_events(
    path: Path, proc: subprocess.Popen[str], condition: Any, what: str, timeout: float = 90
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        if proc.poll() is not None:
            raise AssertionError(
                f"stream exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        events = read_events(path)
        return events if condition(events) else None

    return wait_for(check, timeout=timeout, interval=0.1, what=what)  # type: ignore[return-value]


def replay(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Rebuild the table from the events, in order (unchanged TOAST keeps the older value)."""
    rows: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["op"] in ("r", "c"):
            rows[e["key"]["id"]] = e["after"]
        elif e["op"] == "u":
            old = rows.pop((e["before"] or e["key"])["id"], {})
            rows[e["key"]["id"]] = {**{c: old.get(c) for c in e["unchanged_toast"]}, **e["after"]}
        elif e["op"] == "d":
            del rows[e["key"]["id"]]
    return rows


def test_snapshot_then_changes_under_load_no_gap_no_overlap(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, note text)")
        conn.execute("INSERT INTO acct SELECT g, 100, 'init' FROM generate_series(1, 20000) g")
    stop_load = threading.Event()
    counter = [0]

    def load() -> None:
        with pair.src() as conn:
            i = 0
            while not stop_load.is_set():
                i += 1
                with conn.transaction():
                    conn.execute(
                        "UPDATE acct SET balance = balance + 1 WHERE id = %s", (i % 20000 + 1,)
                    )
                    conn.execute("INSERT INTO acct VALUES (%s, 0, 'new')", (100000 + i,))
                    if i % 3 == 0:
                        conn.execute("DELETE FROM acct WHERE id = %s", (100000 + i - 1,))
                counter[0] = i

    worker = threading.Thread(target=load)
    worker.start()
    out = tmp_path / "events.jsonl"
    try:
        wait_for(lambda: counter[0] > 50, what="the workload to run")
        proc = start_stream(pair, procs, "--create", "--snapshot", "--sink", f"file:path={out}")
        wait_events(
            out,
            proc,
            lambda ev: sum(e["op"] != "r" for e in ev) > 200,
            "changes after the snapshot",
        )
    finally:
        stop_load.set()
        worker.join()
    with pair.src() as conn:
        conn.execute("INSERT INTO acct VALUES (-1, -1, 'last')")
        expected = {
            r[0]: {"id": r[0], "balance": r[1], "note": r[2]}
            for r in conn.execute("SELECT * FROM acct")
        }
    events = wait_events(
        out, proc, lambda ev: any(e["key"] == {"id": -1} for e in ev), "the last insert"
    )
    code, err = stop(proc)
    assert code == 0, err
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an uninterrupted run emits every event once"
    ops = [e["op"] for e in events]
    n_read = ops.count("r")
    assert n_read >= 20000 and set(ops[:n_read]) == {"r"}, "snapshot rows come first"
    assert replay(events) == expected, "snapshot + changes rebuild the table exactly"
    with pair.src() as conn:
        flushed = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (events[-1]["source"]["lsn"], f"pgmigrator_{pair.dbname}"),
        ).fetchone()
    assert flushed and flushed[0], "the slot is flushed past the last delivered transaction"
    assert "slot flushed to" in err


def test_type_mapping_and_unchanged_toast(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE typed (id int8 PRIMARY KEY, n numeric, b bytea, j jsonb, ts timestamptz, f float8,"
            " ok bool, arr int[], big text, missing text)"
        )
    out = tmp_path / "typed.jsonl"
    proc = start_stream(pair, procs, "--create", "--sink", f"file:path={out},fsync=always")
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        big = conn.execute(
            "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO typed VALUES (9007199254740993, 123456789012345678901234567890.123456789, '\\x00ff',"
            " '{\"k\": [1, 2.5, null]}', '2025-06-01 12:00:00+05:30', 'NaN', true, '{1,2}', %s, NULL)",
            (big,),
        )
        conn.execute("UPDATE typed SET ok = false")
    events = wait_events(out, proc, lambda ev: len(ev) >= 2, "two events")
    insert, update = events[0], events[1]
    after = insert["after"]
    assert after["id"] == 9007199254740993
    assert after["n"] == "123456789012345678901234567890.123456789"
    assert base64.b64decode(after["b"]) == b"\x00\xff"
    assert after["j"] == {"k": [1, 2.5, None]}
    assert after["ts"] == "2025-06-01T06:30:00Z"
    assert after["f"] == "NaN" and after["ok"] is True and after["arr"] == "{1,2}"
    assert after["big"] == big and after["missing"] is None
    assert update["op"] == "u" and update["unchanged_toast"] == ["big"]
    assert "big" not in update["after"] and update["after"]["ok"] is False
    assert insert["source"]["table"] == "typed" and insert["source"]["xid"] > 0
    assert insert["source"]["commit_time"].endswith("Z")
    assert stop(proc)[0] == 0


def _slot_active(pair: Pair) -> bool:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
            (f"pgmigrator_{pair.dbname}",),
        ).fetchone()
    return bool(row and row[0])


def test_kill_9_mid_stream_then_restart_delivers_everything(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE q (id int PRIMARY KEY, v text)")
    out = tmp_path / "q.jsonl"
    args = ("--create", "--sink", f"file:path={out},batch=50,queue=200,fsync=always")
    proc = start_stream(pair, procs, *args)
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    total = 30000
    stop_load = threading.Event()

    def load() -> None:
        with pair.src() as conn:
            for start in range(1, total + 1, 100):
                conn.execute(
                    "INSERT INTO q SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g",
                    (start, start + 99),
                )

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_events(out, proc, lambda ev: len(ev) > 3000, "some events before the kill")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        worker.join()
        stop_load.set()
    before_restart = len(read_events(out))
    assert before_restart < total, "the kill happened mid-stream"
    proc = start_stream(pair, procs, *args)
    events = wait_events(
        out,
        proc,
        lambda ev: {e["key"]["id"] for e in ev} >= set(range(1, total + 1)),
        "every insert",
        timeout=120,
    )
    by_id: dict[str, bytes] = {}
    for e in events:
        body = orjson.dumps(e)
        assert by_id.setdefault(e["id"], body) == body, (
            "a duplicate carries the same id and content"
        )
    assert {e["key"]["id"] for e in events} == set(range(1, total + 1))
    assert stop(proc)[0] == 0


def test_file_rotation_by_size_with_gzip_and_retention(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE r (id int PRIMARY KEY, v text)")
    out = tmp_path / "rot" / "r.jsonl"
    proc = start_stream(
        pair, procs, "--create", "--sink", f"file:path={out},max_bytes=20KB,gzip=true,keep=3"
    )
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        for start in range(1, 3001, 300):
            conn.execute(
                "INSERT INTO r SELECT g, repeat('x', 50) FROM generate_series(%s::int, %s::int) g",
                (start, start + 299),
            )

    def rotated() -> list[Path]:
        return sorted(p for p in out.parent.iterdir() if p.name.endswith(".gz"))

    wait_for(
        lambda: any(e["key"]["id"] == 3000 for e in read_events(out)),
        timeout=60,
        what="the last row",
    )
    assert stop(proc)[0] == 0
    files = rotated()
    assert len(files) == 3, [p.name for p in out.parent.iterdir()]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    ids: list[int] = []
    for path in [*files, out]:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert len(data) <= 20 * 1024
        ids.extend(orjson.loads(line)["key"]["id"] for line in data.splitlines())
    assert ids == list(range(ids[0], 3001)), "retained files hold the newest events, in order"
    assert ids[0] > 1, "older rotated files were removed"


def test_filters_tables_operations_columns(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text, ssn text, name text)")
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
    out = tmp_path / "f.jsonl"
    proc = start_stream(
        pair, procs, "--create", "--exclude", "public.audit", "--operations", "c,d",
        "--drop-columns", "public.users=ssn", "--mask-columns", "users=email",
        "--sink", f"file:path={out}",
    )  # fmt: skip
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        conn.execute("INSERT INTO audit VALUES (1)")
        conn.execute("INSERT INTO users VALUES (1, 'a@b.c', '123', 'Ann')")
        conn.execute("UPDATE users SET name = 'Anna'")
        conn.execute("DELETE FROM users")
    events = wait_events(out, proc, lambda ev: any(e["op"] == "d" for e in ev), "the delete")
    assert [e["op"] for e in events] == ["c", "d"]
    assert events[0]["after"] == {"id": 1, "email": "***", "name": "Ann"}
    assert all(e["source"]["table"] == "users" for e in events)
    assert stop(proc)[0] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--sink", "stdout"), 1, "replication slot 'nope_slot' does not exist"),
        (("--sink", "kafka:topic=x", "--create"), 2, "unknown sink type 'kafka'"),
        (("--sink", "file:max_bytes=10MB"), 2, "path: Field required"),
        (("--sink", "file:path=/tmp/x,max_bytes=lots"), 2, "is not a size"),
        (("--sink", "file:path=/tmp/x,policy=drop"), 2, "policy drop would lose events"),
        (("--sink", "file:path=/dev/null/x.jsonl", "--create"), 1, "sink 'file' cannot start"),
        ((), 2, "no sink configured"),
        (("--sink", "stdout", "--operations", "upsert"), 2, "unknown operation 'upsert'"),
    ],
)
def test_bad_input(pair: Pair, args: tuple[str, ...], code: int, message: str) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION nope_pub FOR TABLE t")
    result = pgmigrator(
        "stream",
        "--source",
        pair.source,
        "--slot",
        "nope_slot",
        "--publication",
        "nope_pub",
        *args,
        timeout=60,
    )
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "pgm-secret" not in result.stderr + result.stdout


def test_missing_publication_without_create(pair: Pair) -> None:
    result = pgmigrator(
        "stream", "--source", pair.source, "--publication", "absent", "--sink", "stdout"
    )
    assert result.returncode == 1
    assert "publication 'absent' does not exist" in result.stderr and "--create" in result.stderr


def test_walsender_terminated_reconnects_and_loses_nothing(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE w (id int PRIMARY KEY)")
    out = tmp_path / "w.jsonl"
    proc = start_stream(pair, procs, "--create", "--sink", f"file:path={out}")
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        conn.execute("INSERT INTO w SELECT generate_series(1, 100)")
        wait_events(out, proc, lambda ev: len(ev) >= 100, "the first rows")
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
            (f"pgmigrator_{pair.dbname}",),
        )
        conn.execute("INSERT INTO w SELECT generate_series(101, 200)")
    events = wait_events(out, proc, lambda ev: len({e["key"]["id"] for e in ev}) >= 200, "all rows")
    assert {e["key"]["id"] for e in events} == set(range(1, 201))
    code, err = stop(proc)
    assert code == 0, err
    assert "connection lost, reconnecting" in err


def test_sinks_and_filters_from_the_config_file(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text, note text)")
    out = tmp_path / "cfg.jsonl"
    config = tmp_path / "stream.yaml"
    config.write_text(
        f"sinks:\n  - {{name: archive, type: file, path: {out}, fsync: never, batch: 10}}\n"
        "stream:\n  mask_columns: {'public.users': [email]}\n  operations: [insert]\n"
    )
    check = pgmigrator("config", "check", str(config))
    assert check.returncode == 0, check.stderr
    proc = start_stream(pair, procs, "--create", "--config", str(config))
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        conn.execute("INSERT INTO users VALUES (1, 'a@b.c', 'n')")
        conn.execute("UPDATE users SET note = 'm'")
        conn.execute("INSERT INTO users VALUES (2, 'd@e.f', 'n')")
    events = wait_events(out, proc, lambda ev: len(ev) >= 2, "two inserts")
    assert [(e["op"], e["after"]["email"]) for e in events] == [("c", "***"), ("c", "***")]
    code, err = stop(proc)
    assert code == 0, err
    status = pgmigrator("status", "--name", pair.dbname, "--json")
    assert status.returncode == 0, status.stderr
    snap = orjson.loads(status.stdout)
    assert snap["sinks"]["archive"]["delivered"] >= 2
    assert snap["health"]["sink:archive"]["status"] == "ok"


def test_sigterm_stops_even_with_a_sink_that_never_delivers(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE s (id int PRIMARY KEY)")
    with socket.socket() as probe:  # a port nobody listens on: every POST is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ok.jsonl"
    proc = start_pgmigrator(
        "stream", "--source", pair.source, "--name", pair.dbname, "--create",
        "--sink", f"webhook:url=http://127.0.0.1:{port}/x,retry_attempts=1,queue=10",
        "--sink", f"file:path={out}",
        env={"PGMIGRATOR_STREAM__DRAIN_TIMEOUT_S": "1"},
    )  # fmt: skip
    procs.append(proc)
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        for i in range(50):
            conn.execute("INSERT INTO s VALUES (%s)", (i,))
    events = wait_events(out, proc, lambda ev: len(ev) >= 10, "the file sink to get events")
    code, err = stop(proc)
    assert code == 0, err
    assert "not delivered (replayed on restart)" in err
    with pair.src() as conn:
        held = conn.execute(
            "SELECT confirmed_flush_lsn <= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (events[0]["source"]["lsn"], f"pgmigrator_{pair.dbname}"),
        ).fetchone()
    assert held and held[0], "the failing durable sink holds the slot back"


class _SlowReceiver(http.server.BaseHTTPRequestHandler):
    """Answers every POST after 2.5 s: a sink slower than the walsender's timeout."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(2.5)  # the receiver's own slowness, not a wait in the test
        _SlowReceiver.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_sink_slower_than_wal_sender_timeout_does_not_break_the_stream(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE slow (id int PRIMARY KEY)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = f"{pair.source} options='-c wal_sender_timeout=2s'"
    try:
        proc = start_pgmigrator(
            "stream", "--source", source, "--name", pair.dbname, "--create",
            "--sink", f"webhook:url=http://127.0.0.1:{server.server_port}/,queue=1,batch=1",
        )  # fmt: skip
        procs.append(proc)
        wait_for(lambda: _slot_active(pair), what="the stream to start")
        with pair.src() as conn:
            for i in range(4):
                conn.execute("INSERT INTO slow VALUES (%s)", (i,))
        wait_for(lambda: len(_SlowReceiver.bodies) >= 4, timeout=60, what="4 slow deliveries")
        code, err = stop(proc)
    finally:
        server.shutdown()
    assert code == 0, err
    assert "reconnecting" not in err, err
    assert sorted(orjson.loads(b)["key"]["id"] for b in _SlowReceiver.bodies) == [0, 1, 2, 3]


def test_interrupted_snapshot_is_refused_on_restart(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY)")
        conn.execute("INSERT INTO big SELECT generate_series(1, 200000)")
    out = tmp_path / "snap.jsonl"
    args = ("--create", "--snapshot", "--sink", f"file:path={out},fsync=always,batch=10,queue=100")
    proc = start_stream(pair, procs, *args)
    wait_events(out, proc, lambda ev: len(ev) > 100, "the snapshot to be under way")
    code, err = stop(proc)
    assert code == 0, err
    assert len(read_events(out)) < 200000
    again = pgmigrator("stream", "--source", pair.source, "--name", pair.dbname, *args)
    assert again.returncode == 1
    assert "snapshot of slot" in again.stderr and "was interrupted" in again.stderr
    assert "pg_drop_replication_slot" in again.stderr
