"""Fault family: ``kill -9`` of pgmigrator at every phase, then the documented way back.

* during the schema: nothing half-applied (pre-data and the state row commit together); the slot
  it created is dropped by ``cleanup`` and the clone starts over;
* during the copy: ``clone --resume`` copies only the unfinished tables, under a new snapshot;
* while streaming: ``follow`` resumes from the replication origin, nothing lost or doubled;
* during a fenced switchover: the follower keeps streaming, re-running the switchover completes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pgmigrator import sample
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming
from tests.scenarios.faults.helpers import (
    clone_and_follow,
    converge,
    kill9,
    load,
    marker,
    wait_marker,
    write_some,
)


def _phase(pair: Pair) -> str | None:
    with pair.dst() as conn:
        if conn.execute("SELECT to_regclass('pgmigrator.pipelines')").fetchone()[0] is None:
            return None
        row = conn.execute("SELECT phase FROM pgmigrator.pipelines").fetchone()
    return row[0] if row else None


def _slot_exists(pair: Pair) -> bool:
    with pair.src() as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
            ).fetchone()[0]
        )


def _slot_active(pair: Pair) -> bool:
    with pair.src() as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                " AND active"
            ).fetchone()[0]
        )


def test_kill9_during_schema_then_cleanup_and_clone_again(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        sample.load(conn, rows=500)
        conn.execute("ALTER TABLE no_key REPLICA IDENTITY FULL")  # else refused (bad-input tests)
        # many objects make the schema phase last long enough to be hit
        for i in range(150):
            conn.execute(f"CREATE TABLE pad_{i} (id int PRIMARY KEY, v text, w int UNIQUE)")
    proc = start_pgmigrator("clone", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)

    def in_schema_phase() -> bool:
        if proc.poll() is not None:
            raise AssertionError("the clone ended before the kill")
        return _slot_exists(pair) and _phase(pair) is None

    wait_for(in_schema_phase, timeout=60, interval=0.01, what="the clone's schema phase")
    kill9(proc)
    assert _phase(pair) is None  # the state row commits with the pre-data: none of it is here
    with pair.dst() as conn:  # and no table of the half-applied schema is visible
        assert (
            conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
            == 0
        )
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 1 and "already exists" in res.stderr and "cleanup" in res.stderr
    res = pgmigrator("cleanup", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stderr
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--drop-if-exists")
    assert res.returncode == 0, res.stderr
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0 and "all equal" in res.stdout, res.stdout


def _load_for_kill(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, pad text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 1500000) g"
        )
        for i in range(6):
            conn.execute(f"CREATE TABLE small_{i} (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO small_{i} SELECT g, 'v' FROM generate_series(1, 1000) g")


def test_kill9_during_copy_then_resume(pair: Pair, procs: list[subprocess.Popen[str]]) -> None:
    _load_for_kill(pair)
    proc = start_pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--workers", "2")
    procs.append(proc)

    def copying_big_with_smalls_done() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"clone ended before the kill: {proc.stderr.read() if proc.stderr else ''}"
            )
        with pair.dst() as dst:
            if dst.execute("SELECT to_regclass('pgmigrator.tables')").fetchone()[0] is None:
                return False
            states = dict(dst.execute("SELECT table_name, state FROM pgmigrator.tables").fetchall())
        return states.get("big") == "copying" and sum(v == "copied" for v in states.values()) >= 3

    wait_for(
        copying_big_with_smalls_done, timeout=120, what="small tables copied while big is copying"
    )
    kill9(proc)

    with pair.dst() as dst:
        before = dict(
            dst.execute(
                "SELECT table_name, copies FROM pgmigrator.tables WHERE state = 'copied'"
            ).fetchall()
        )
    assert "big" not in before

    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--resume")
    assert res.returncode == 0, res.stderr
    assert "already done" in res.stdout

    with pair.dst() as dst:
        after = dict(dst.execute("SELECT table_name, copies FROM pgmigrator.tables").fetchall())
        sync = dict(
            dst.execute("SELECT table_name, sync_lsn IS NOT NULL FROM pgmigrator.tables").fetchall()
        )
    for table, copies in before.items():
        assert after[table] == copies == 1, f"{table} was copied again"
        assert not sync[table]  # copied under the slot's own snapshot
    assert after["big"] == 2 and sync["big"]  # recopied under a later snapshot, with its sync LSN

    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout


def test_kill9_while_streaming_then_follow_resumes_exactly(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    proc = clone_and_follow(pair, procs, streaming=False)
    write_some(pair, 200, "k9")

    def some_applied() -> bool:
        with pair.dst() as conn:
            return conn.execute("SELECT count(*) FROM no_key WHERE b = 'k9'").fetchone()[0] > 20

    wait_for(some_applied, timeout=60, what="streaming to start applying")
    kill9(proc)
    write_some(pair, 100, "after")
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    converge(pair, "resumed")  # keyless table included: nothing applied twice


def test_kill9_during_switchover_then_run_it_again(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    load(pair, rows=200)
    proc = start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    marker(pair, "before")
    wait_marker(pair, "before")
    holder = pair.dst()  # keeps the sentinel from being applied: the switchover has to wait
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE acct IN ACCESS EXCLUSIVE MODE")
    write_some(pair, 5, "pending")
    switch = start_pgmigrator(
        "switchover", "--source", pair.source, "--dest", pair.dest, "--fence", "--yes",
        "--timeout", "120s",
    )  # fmt: skip
    procs.append(switch)

    def fenced_and_waiting() -> bool:
        if switch.poll() is not None:
            raise AssertionError(f"switchover ended early: {switch.communicate()}")
        with pair.source_cluster.connect() as conn:
            fenced = conn.execute(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
                " WHERE d.datname = %s AND 'default_transaction_read_only=on' = ANY(s.setconfig)",
                (pair.dbname,),
            ).fetchone()[0]
        return bool(fenced) and _phase(pair) == "switchover"

    wait_for(fenced_and_waiting, timeout=60, interval=0.02, what="a fenced switchover waiting")
    kill9(switch)
    holder.rollback()
    holder.close()
    # the fence ended the follower's source sessions too: it reconnects by itself
    wait_for(lambda: _slot_active(pair), timeout=60, interval=0.05, what="the follower back")
    report_file = tmp_path / "again.json"
    res = pgmigrator(
        "switchover", "--source", pair.source, "--dest", pair.dest, "--fence", "--yes",
        "--report", str(report_file), "--timeout", "60s",
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(report_file.read_text())
    assert report["status"] == "complete"
    assert report["verification"] and all(v["status"] == "ok" for v in report["verification"])
    assert proc.poll() is None  # the follower kept streaming through both
    assert pgmigrator("unfence", "--source", pair.source).returncode == 0
    converge(pair, "after-switchover")
