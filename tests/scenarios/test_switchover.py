"""Journey: switch over to the destination with proof (sentinel), fencing, sequences and a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_streaming


@pytest.fixture
def following(pair: Pair) -> Iterator[subprocess.Popen[str]]:
    with pair.src() as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items (v) SELECT 'x' FROM generate_series(1, 1000)")
    pair.source_cluster.pgbench(pair.dbname, "-i", "-q", "-s", "1")
    proc = start_pgmigrator(
        "clone", "--follow", "--source", pair.source, "--dest", pair.dest,
        "--keyless-tables", "full",  # pgbench_history has no key
    )  # fmt: skip
    wait_streaming(pair, proc)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with pair.src() as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(f'ALTER DATABASE "{pair.dbname}" RESET default_transaction_read_only')


def test_switchover_with_fence_while_pgbench_runs(
    pair: Pair, following: subprocess.Popen[str], tmp_path: Path
) -> None:
    stop = threading.Event()

    def writes() -> None:
        while not stop.is_set():
            try:
                with pair.src() as conn:
                    while not stop.is_set():
                        conn.execute("INSERT INTO items (v) VALUES ('live')")
                        conn.execute(
                            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + (random() * 99999)::int"
                        )
            except psycopg.Error:
                pass  # fenced: sessions terminated, then read-only; keep trying like an application would

    writer = threading.Thread(target=writes)
    writer.start()
    try:
        report_file = tmp_path / "cutover.json"
        res = pgmigrator(
            "switchover",
            "--source",
            pair.source,
            "--dest",
            pair.dest,
            "--fence",
            "--yes",
            "--verify",
            "live",  # verified before the fence, while the writes go on
            "--report",
            str(report_file),
            "--timeout",
            "90s",
        )
    finally:
        stop.set()
        writer.join()
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(report_file.read_text())
    assert (
        report["status"] == "complete"
        and report["fenced"] is True
        and report["write_downtime_s"] > 0
    )
    assert (
        all(v["status"] == "ok" for v in report["verification"])
        and len(report["verification"]) >= 5
    )
    timings = report["timings_s"]
    assert report["verified_at_lsn"] and timings["verified"] < timings["fenced"]
    # the write downtime starts at the fence: the verification before it is not part of it
    assert report["write_downtime_s"] <= timings["large_objects"] - timings["verified"] + 0.01
    assert "verification (live, before the fence, at " in res.stdout
    assert "still fenced" in res.stdout
    with pair.src() as src, pair.dst() as dst:
        # every committed source write is on the destination, and sequences are ahead
        assert (
            src.execute("SELECT count(*), max(id) FROM items").fetchone()
            == dst.execute("SELECT count(*), max(id) FROM items").fetchone()
        )
        src_seq = src.execute("SELECT last_value FROM items_id_seq").fetchone()[0]
        assert dst.execute("SELECT last_value FROM items_id_seq").fetchone()[0] >= src_seq + 1000
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), pair.src() as fresh:
            fresh.execute("INSERT INTO items (v) VALUES ('blocked')")
        assert (
            dst.execute("SELECT phase FROM pgmigrator.pipelines").fetchone()[0]
            == "switchover-complete"
        )
    assert pgmigrator("unfence", "--source", pair.source).returncode == 0
    with pair.src() as fresh:
        fresh.execute("INSERT INTO items (v) VALUES ('writable again')")


def test_switchover_on_an_idle_source(
    pair: Pair, following: subprocess.Popen[str], tmp_path: Path
) -> None:
    args = ("switchover", "--source", pair.source, "--dest", pair.dest, "--schema", "--yes")
    with pair.dst() as dst:  # an index the source does not have: the schemas differ
        dst.execute("CREATE INDEX items_v ON items (v)")
    res = pgmigrator(*args, "--fence", "--report", str(tmp_path / "r1.json"))
    assert (
        res.returncode == 1 and "the schemas differ (1 object(s)); nothing was fenced" in res.stderr
    )
    report = json.loads((tmp_path / "r1.json").read_text())
    assert report["fenced"] is False and report["fence_actions"] == []
    [found] = report["schema"]["differences"]
    assert (found["kind"], found["name"], found["status"]) == ("INDEX", "items_v", "extra")
    with pair.src() as src:
        src.execute("INSERT INTO items (v) VALUES ('not fenced')")  # writable all along

    with pair.dst() as dst:
        dst.execute("DROP INDEX items_v")
    # sequences the margin must move their own way, and not past their bounds
    sequences = (
        "CREATE SEQUENCE down_seq INCREMENT -1 MAXVALUE -1 START -1;"
        " CREATE SEQUENCE small_seq AS smallint START 32000"
    )
    with pair.dst() as dst:
        dst.execute(sequences)
    with pair.src() as src:
        src.execute(sequences)
        src.execute("SELECT nextval('down_seq') FROM generate_series(1, 500)")
        src.execute("SELECT nextval('small_seq')")
    res = pgmigrator(*args, "--verify", "sample", "--report", str(tmp_path / "r2.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "COMPLETE" in res.stdout and "not fenced" in res.stdout
    assert "schema: " in res.stdout and "compared, 0 differ" in res.stdout
    with pair.dst() as dst:
        assert dst.execute(
            "SELECT (SELECT last_value FROM down_seq), (SELECT last_value FROM small_seq)"
        ).fetchone() == (-1500, 32767)  # (not -500 + 1000, nor 32000 + 1000: out of bounds)


def test_switchover_failing_on_a_sequence_unfences_the_source(
    pair: Pair, following: subprocess.Popen[str], tmp_path: Path
) -> None:
    with pair.src() as src:  # the destination's copy of it is narrower: setval fails there
        src.execute("CREATE SEQUENCE wide_seq START 40000; SELECT nextval('wide_seq')")
    with pair.dst() as dst:
        dst.execute("CREATE SEQUENCE wide_seq AS smallint")
    res = pgmigrator(
        "switchover", "--source", pair.source, "--dest", pair.dest, "--fence", "--yes",
        "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "could not set sequence public.wide_seq to 41000 on the destination" in res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "failed" and report["fenced"] is False
    with pair.src() as fresh:
        fresh.execute("INSERT INTO items (v) VALUES ('unfenced after the failure')")


def test_switchover_refused_when_follower_is_down(
    pair: Pair, following: subprocess.Popen[str], tmp_path: Path
) -> None:
    following.send_signal(signal.SIGTERM)
    following.wait(timeout=60)
    res = pgmigrator(
        "switchover",
        "--source",
        pair.source,
        "--dest",
        pair.dest,
        "--report",
        str(tmp_path / "r.json"),
    )
    assert res.returncode == 1 and "not streaming" in res.stderr and "Traceback" not in res.stderr


def test_switchover_timeout_unfences_the_source(
    pair: Pair, following: subprocess.Popen[str], tmp_path: Path
) -> None:
    with pair.dst() as blocker:
        blocker.execute(
            "BEGIN; LOCK TABLE pgmigrator.sentinels IN ACCESS EXCLUSIVE MODE"
        )  # the follower stalls on it
        res = pgmigrator(
            "switchover",
            "--source",
            pair.source,
            "--dest",
            pair.dest,
            "--fence",
            "--yes",
            "--timeout",
            "3s",
            "--report",
            str(tmp_path / "r.json"),
        )
        blocker.execute("ROLLBACK")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "did not apply the sentinel within 3 s" in res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "failed" and report["fenced"] is False
    assert any("RESET default_transaction_read_only" in a for a in report["fence_actions"])
    with pair.src() as fresh:
        fresh.execute("INSERT INTO items (v) VALUES ('unfenced after the failure')")
