"""Journey: clone --follow under a live workload and converge exactly (kills and disconnects: faults/)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator

import pytest

from pgmigrator import sample
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for

WORKLOAD = [
    "UPDATE every_type SET big = repeat('y', 30000) WHERE id %% 97 = 0",  # new TOAST values
    "UPDATE every_type SET txt = 'touched' WHERE id %% 13 = 1",  # unchanged TOAST columns stay
    "DELETE FROM every_type WHERE id %% 101 = 0",
    "INSERT INTO every_type (n, txt) SELECT g, 'new' FROM generate_series(1, 500) g",  # identity + generated
    "UPDATE full_identity SET b = 'changed' WHERE ctid = (SELECT ctid FROM full_identity WHERE a = 3 LIMIT 1)",
    "DELETE FROM full_identity WHERE ctid = (SELECT ctid FROM full_identity WHERE a = 4 LIMIT 1)",
    "INSERT INTO events SELECT 100000 + g, DATE '2025-03-01', 'live' FROM generate_series(1, 300) g",
    "UPDATE events SET payload = 'moved' WHERE id %% 50 = 0",
    "INSERT INTO no_key SELECT g, 'live' FROM generate_series(1, 50) g",
    "TRUNCATE sales.audit",
    "INSERT INTO sales.orders (customer_id, amount) SELECT 1 + g %% 200, g FROM generate_series(1, 1000) g",
    "UPDATE sales.customers SET email = 'swap-' || id || '@x' WHERE id <= 5",
]


def _marker(pair: Pair, value: str) -> None:
    with pair.src() as conn:
        conn.execute("INSERT INTO marker VALUES (%s)", (value,))


def _wait_marker(pair: Pair, value: str, timeout: float = 120) -> None:
    def seen() -> bool:
        with pair.dst() as conn:
            if conn.execute("SELECT to_regclass('public.marker')").fetchone()[0] is None:
                return False
            return bool(conn.execute("SELECT 1 FROM marker WHERE v = %s", (value,)).fetchone())

    wait_for(seen, timeout=timeout, interval=0.1, what=f"marker {value} on the destination")


def _load(pair: Pair) -> None:
    with pair.src() as conn:
        sample.load(conn, rows=2000)
        conn.execute("CREATE TABLE marker (v text PRIMARY KEY)")
    pair.source_cluster.pgbench(pair.dbname, "-i", "-q", "-s", "1")
    with pair.src() as conn:  # keyless tables are refused otherwise (test_clone_bad_input.py)
        conn.execute("ALTER TABLE no_key REPLICA IDENTITY FULL")
        conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")


@pytest.fixture
def follower(pair: Pair) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _verify(pair: Pair) -> None:
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout + res.stderr


def test_clone_follow_under_workload_converges(
    pair: Pair, follower: list[subprocess.Popen[str]]
) -> None:
    _load(pair)
    with pair.src() as conn:
        conn.execute(
            "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'"
        )  # force streamed transactions
        conn.execute("SELECT pg_reload_conf()")
    stop = threading.Event()

    def pgbench() -> None:
        while not stop.is_set():
            pair.source_cluster.pgbench(pair.dbname, "-c", "2", "-T", "2", "-n")

    bench = threading.Thread(target=pgbench)
    bench.start()
    try:
        proc = start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
        follower.append(proc)
        _marker(pair, "copied")
        _wait_marker(pair, "copied")
        with pair.src() as conn:
            for stmt in WORKLOAD:
                conn.execute(stmt.replace("%%", "%"))
            conn.execute("BEGIN")
            conn.execute(
                "INSERT INTO sales.orders (customer_id, amount) SELECT 1 + g % 200, 1 FROM generate_series(1, 250000) g"
            )
            conn.execute(
                "SAVEPOINT s1; INSERT INTO no_key SELECT g, 'aborted' FROM generate_series(1, 1000) g; ROLLBACK TO s1"
            )
            conn.execute("COMMIT")
    finally:
        stop.set()
        bench.join()
        with pair.src() as conn:
            conn.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
            conn.execute("SELECT pg_reload_conf()")
    _marker(pair, "done")
    _wait_marker(pair, "done", timeout=180)
    _verify(pair)
    with open(
        f"/proc/{proc.pid}/status"
    ) as fh:  # peak RSS of the follower, streamed 250k-row transaction included
        peak_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib} KiB"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with pair.src() as conn:  # the final feedback moved the slot to what was applied
        confirmed = conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots").fetchone()[
            0
        ]
    with pair.dst() as conn:
        origin = conn.execute(
            "SELECT pg_replication_origin_progress('pgmigrator_default', true)"
        ).fetchone()[0]
    assert confirmed is not None and origin is not None


def test_follow_bad_input(pair: Pair, follower: list[subprocess.Popen[str]]) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE marker (v text PRIMARY KEY)"
        )
    res = pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 1 and "slot 'pgmigrator_default' does not exist" in res.stderr, (
        res.stderr
    )
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0

    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    follower.append(proc)
    _marker(pair, "one")
    _wait_marker(pair, "one")
    res = pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 1 and "in use by another consumer" in res.stderr, res.stderr
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0

    res = pgmigrator(
        "follow", "--source", pair.source, "--dest", pair.dest, "--publication", "nope"
    )
    assert res.returncode == 1 and "publication 'nope' does not exist" in res.stderr, res.stderr

    with pair.dst() as conn:
        conn.execute("ALTER TABLE t DROP COLUMN v")
    with pair.src() as conn:
        conn.execute("INSERT INTO t VALUES (1, 'x')")
    res = pgmigrator("follow", "--source", pair.source, "--dest", pair.dest, timeout=120)
    assert res.returncode == 1 and "public.t" in res.stderr and "v" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr

    with pair.src() as conn:  # as after a failover to a standby (PG < 17): the slot is gone
        conn.execute("SELECT pg_drop_replication_slot('pgmigrator_default')")
    res = pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 1, res.stderr
    assert "slot 'pgmigrator_default' of pipeline 'default' is gone from the source" in res.stderr
    assert "failed over" in res.stderr and "pgmigrator cleanup" in res.stderr


def test_a_transaction_with_nothing_to_apply_still_moves_the_origin(
    pair: Pair, follower: list[subprocess.Popen[str]]
) -> None:
    """A transaction whose only content is a logical message (or changes to unpublished tables)
    is committed on the destination too: the origin, and so the slot, move past it."""
    _load(pair)
    follower.append(
        start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
    )
    _marker(pair, "ready")
    _wait_marker(pair, "ready")
    with pair.src() as conn:
        conn.autocommit = True
        lsn = conn.execute(
            "SELECT pg_logical_emit_message(true, 'app', 'only this')::text"
        ).fetchone()[0]  # type: ignore[index]

    def applied() -> bool:
        with pair.dst() as conn:
            row = conn.execute(
                "SELECT remote_lsn >= %s::pg_lsn FROM pg_replication_origin_status", (lsn,)
            ).fetchone()
        return bool(row and row[0])

    wait_for(applied, timeout=60, interval=0.1, what="the origin past the message's transaction")
