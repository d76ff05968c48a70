"""Fault family: connections and servers going away under a running pipeline.

The walsender terminated, the source restarted, the destination restarted in the middle of
applying a batch, a destination connection dropped in the middle of a COPY: the pipeline retries
with backoff (``retry`` settings) and ends with both sides equal.
"""

from __future__ import annotations

import subprocess

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming
from tests.scenarios.faults.helpers import converge, load, workload, write_some


def _walsender(pair: Pair) -> int | None:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE database = current_database()"
            " AND active"
        ).fetchone()
    return row[0] if row else None


def _terminate_and_wait_for_a_new_walsender(pair: Pair, proc: subprocess.Popen[str]) -> None:
    old = _walsender(pair)
    assert old is not None
    with pair.src() as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone()[0]

    def new_walsender() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the follower exited: {proc.communicate()[1][-2000:]}")
        return _walsender(pair) not in (None, old)

    wait_for(new_walsender, timeout=60, interval=0.05, what="a new walsender")


def test_walsender_terminated_while_writing(pair: Pair, procs: list[subprocess.Popen[str]]) -> None:
    load(pair)
    proc = start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    with workload(pair):
        write_some(pair, 50, "before")
        _terminate_and_wait_for_a_new_walsender(pair, proc)
        write_some(pair, 50, "after-terminate")
        _terminate_and_wait_for_a_new_walsender(pair, proc)  # again: the follower never gives up
    converge(pair, "after-terminate")
    assert proc.poll() is None


def test_source_restarted_while_writing(pair: Pair, procs: list[subprocess.Popen[str]]) -> None:
    load(pair)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    with workload(pair, tolerate_disconnects=True):
        write_some(pair, 50, "before")
        pair.source_cluster.restart()
        write_some(pair, 50, "after-restart")
        wait_streaming(pair, proc)
    converge(pair, "source-restarted")
    assert proc.poll() is None


def test_destination_restarted_mid_batch(pair: Pair, procs: list[subprocess.Popen[str]]) -> None:
    load(pair)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    with pair.src() as conn:  # one big transaction: the applier needs a while for it
        conn.execute(
            "INSERT INTO no_key SELECT g, repeat('z', 100) FROM generate_series(1, 250000) g"
        )

    def applier_busy() -> bool:
        with pair.dst() as conn:
            return bool(
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'active' AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
                ).fetchone()[0]
            )

    wait_for(applier_busy, timeout=60, interval=0.01, what="the applier inside a batch")
    pair.dest_cluster.restart()  # the batch in flight is lost with the server's session
    write_some(pair, 30, "after-restart")
    converge(pair, "dest-restarted", timeout=120)  # keyless: the batch is not applied twice
    assert proc.poll() is None


def _load_big(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, pad text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 1500000) g"
        )


def test_destination_connection_dropped_mid_copy_is_retried(pair: Pair) -> None:
    _load_big(pair)
    proc = start_pgmigrator(
        "clone", "--source", pair.source, "--dest", pair.dest, "--workers", "1",
        "--tables", "public.big",
    )  # fmt: skip

    def kill_dest_copy() -> bool:
        with pair.dst() as dst:
            row = dst.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'COPY%%FROM STDIN%%' AND state = 'active'"
            ).fetchone()
        return bool(row and row[0])

    wait_for(kill_dest_copy, timeout=60, interval=0.1, what="an active COPY on the destination")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "chunk retried" in err
    res = pgmigrator(
        "verify", "--source", pair.source, "--dest", pair.dest, "--tables", "public.big"
    )
    assert res.returncode == 0, res.stdout


def test_destination_down_for_good_gives_up_after_the_configured_attempts(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    load(pair, rows=50)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    env = {
        "PGMIGRATOR_RETRY__INITIAL_S": "0.1",
        "PGMIGRATOR_RETRY__MAX_S": "0.2",
        "PGMIGRATOR_RETRY__MAX_ATTEMPTS": "3",
    }
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest, env=env)
    procs.append(proc)
    wait_streaming(pair, proc)
    pair.dest_cluster.stop()
    try:
        write_some(pair, 5, "while-down")
        _, err = proc.communicate(timeout=120)
    finally:
        pair.dest_cluster.start()
    assert proc.returncode == 1, err
    assert "gave up after 3 attempts in a row" in err and "retry.max_attempts" in err, err
    assert err.count("reconnecting") == 2 and "Traceback" not in err
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    converge(pair, "back")  # the changes written while it was down waited in the slot
