"""Fault family: the slot holds WAL back on the source (stuck transaction, idle source).

The WAL budget watcher must report a slot over its maximum as ``down`` (``/readyz`` fails, the
retained-WAL gauge shows it, a log line says it) and recover when the slot moves again; an idle
source database must not pin WAL while other databases on the same server write.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest
from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.errors import ReplicationError
from pgmigrator.lsn import Lsn
from pgmigrator.source.replication import ReplicationStream
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming
from tests.scenarios.faults.helpers import converge, load

BUDGET_ENV = {
    "PGMIGRATOR_WAL_BUDGET__WARN_MB": "1",
    "PGMIGRATOR_WAL_BUDGET__MAX_MB": "2",
    "PGMIGRATOR_WAL_BUDGET__CHECK_S": "0.2",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slot(pair: Pair) -> tuple[str, int]:
    """The slot's confirmed flush LSN (as text and as a byte position)."""
    with pair.src() as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn - '0/0'::pg_lsn"
            " FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()
    return row[0], int(row[1])


def _current_lsn(pair: Pair) -> int:
    with pair.src() as conn:
        return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def test_wal_over_budget_fails_readiness_then_recovers(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    load(pair)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    url = f"http://127.0.0.1:{_free_port()}"
    proc = start_pgmigrator(
        "follow", "--source", pair.source, "--dest", pair.dest,
        "--api-addr", url.removeprefix("http://"), env=BUDGET_ENV,
    )  # fmt: skip
    procs.append(proc)
    wait_streaming(pair, proc)
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200,
        timeout=30,
        interval=0.1,
        what="ready while the slot is within budget",
    )
    stuck = pair.src()  # an open transaction with an xid: the slot's restart_lsn cannot pass it
    stuck.execute("BEGIN")
    stuck.execute("INSERT INTO hist (acct, delta) VALUES (-1, 0)")
    try:
        with pair.src() as conn:  # about 4 MB of WAL behind the stuck transaction
            conn.execute(
                "INSERT INTO hist (acct, delta) SELECT g, g FROM generate_series(1, 40000) g"
            )

        def not_ready() -> httpx.Response | None:
            res = httpx.get(f"{url}/readyz", timeout=5)
            return res if res.status_code == 503 else None

        res = wait_for(not_ready, timeout=30, interval=0.1, what="/readyz to fail")
        assert isinstance(res, httpx.Response)
        assert "over the 2 MB maximum" in res.json()["reason"], res.text
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        gauge = next(
            line for line in metrics.splitlines() if line.startswith("pgmigrator_slot_retained")
        )
        assert float(gauge.split()[-1]) > 2 * 1024 * 1024, gauge
        health = httpx.get(f"{url}/healthz", timeout=5).json()["components"]["slot"]
        assert health["status"] == "down"
    finally:
        stuck.rollback()
        stuck.close()
    with pair.src() as conn:  # a running-xacts record lets the slot's restart point move on
        conn.execute("CHECKPOINT")
    converge(pair, "after-stuck")

    def ready_again() -> bool:
        with pair.src() as conn:
            conn.execute("CHECKPOINT")
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    wait_for(ready_again, timeout=60, interval=0.5, what="/readyz to recover")
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert "slot over its WAL maximum" in err and "slot back under its WAL budget" in err, err


@pytest.mark.parametrize("heartbeat", [False, True], ids=["other-databases-write", "heartbeat"])
def test_idle_source_slot_keeps_advancing(
    pair: Pair, procs: list[subprocess.Popen[str]], heartbeat: bool
) -> None:
    load(pair, rows=10)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    env = {"PGMIGRATOR_WAL_BUDGET__HEARTBEAT_S": "0.3"} if heartbeat else {}
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest, env=env)
    procs.append(proc)
    wait_streaming(pair, proc)
    converge(pair, "streaming")  # the slot's own database goes idle from here on
    before = _current_lsn(pair)
    if not heartbeat:  # WAL written by another database of the same server only
        with pair.source_cluster.connect() as conn:
            conn.execute("CREATE TEMP TABLE other_db (a int)")
            conn.execute("INSERT INTO other_db SELECT generate_series(1, 20000)")
            conn.execute("SELECT pg_switch_wal()")
    wait_for(
        lambda: _slot(pair)[1] > before,
        timeout=60,
        interval=0.1,
        what="the idle slot's confirmed_flush_lsn to move past the other writes",
    )
    assert proc.poll() is None


def _slot_wal_status(pair: Pair) -> str | None:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT wal_status FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()
    return row[0] if row else None


def test_slot_invalidated_by_max_slot_wal_keep_size_stops_with_what_to_do(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    """A paused follower's slot falls past max_slot_wal_keep_size and the server invalidates it:
    the WAL watcher reports it and stops the follower (exit 1, what to do); a restart, and a
    reconnect's START_REPLICATION, say the same instead of retrying forever."""
    load(pair, rows=10)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest, env=BUDGET_ENV)
    procs.append(proc)
    wait_streaming(pair, proc)
    converge(pair, "before")
    proc.send_signal(signal.SIGUSR1)  # pause: the slot holds its position from here
    with _small_keep_size(pair) as invalidate:
        invalidate("acct")
        proc.wait(timeout=60)  # still paused: the watcher saw it and stopped the follower
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 1, err
        assert "slot invalidated by the source" in err  # logged by the watcher
        assert "replication slot 'pgmigrator_default' was invalidated by the source" in err
        assert "pgmigrator cleanup" in err and "Traceback" not in err
        res = pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
        assert res.returncode == 1 and "was invalidated by the source" in res.stderr
        stream = ReplicationStream(  # a reconnect's START_REPLICATION says the same
            Target(pair.source, "source"), "pgmigrator_default", "pgmigrator_default"
        )
        with pytest.raises(ReplicationError, match="was invalidated by the source") as refused:
            stream.open(Lsn(0))
        assert not refused.value.retryable


def test_slot_invalidated_during_the_clone_fails_it_and_resume_refuses(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    """The server invalidates the clone's slot before the clone ends (a long copy on a busy
    source): the clone exits 1 saying so instead of "clone complete", and so does --resume."""
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 800000) g")
        conn.execute("CREATE TABLE churn (id int PRIMARY KEY, v int)")
    proc = start_pgmigrator("clone", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)

    def copying() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"clone ended early: {proc.stderr.read() if proc.stderr else ''}")
        with pair.dst() as dst:
            if dst.execute("SELECT to_regclass('pgmigrator.tables')").fetchone()[0] is None:
                return False
            row = dst.execute("SELECT state FROM pgmigrator.tables WHERE table_name = 'big'")
            return row.fetchone() == ("copying",)

    wait_for(copying, timeout=120, what="the big table being copied")
    with _small_keep_size(pair) as invalidate, pair.dst() as holder:
        # queued behind the copy: big's index builds (post-data) wait until the slot is lost
        holder.execute("BEGIN; LOCK TABLE big IN ROW EXCLUSIVE MODE")
        invalidate("churn")
        holder.execute("ROLLBACK")
        proc.wait(timeout=120)
        out, err = proc.communicate()
        assert proc.returncode == 1, out + err
        assert "clone complete" not in out and "Traceback" not in err
        assert "replication slot 'pgmigrator_default' was invalidated by the source" in err
        res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--resume")
        assert res.returncode == 1 and "was invalidated by the source" in res.stderr


@contextlib.contextmanager
def _small_keep_size(pair: Pair) -> Iterator[Callable[[str], None]]:
    """max_slot_wal_keep_size = 1MB on the source while inside; yields what invalidates the slot
    (WAL written to a table of the slot's database, segments switched and removed)."""
    with pair.source_cluster.connect() as admin:
        admin.autocommit = True
        admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        admin.execute("SELECT pg_reload_conf()")

        def invalidate(table: str) -> None:
            def lost() -> bool:
                with pair.src() as conn:
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} SELECT g, 1 FROM generate_series(10001, 12000) g"
                        ).format(sql.Identifier(table))
                    )
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE id > 10000").format(sql.Identifier(table))
                    )
                admin.execute("SELECT pg_switch_wal()")
                admin.execute("CHECKPOINT")
                return _slot_wal_status(pair) == "lost"

            wait_for(lost, timeout=60, interval=0.2, what="the server to invalidate the slot")

        try:
            yield invalidate
        finally:
            admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            admin.execute("SELECT pg_reload_conf()")
