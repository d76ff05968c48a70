"""Journey: verify a migration while the application still writes (`verify --live`)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator

import pytest

from pgmigrator.dsn import Target
from pgmigrator.pipeline.verify import verify_live
from pgmigrator.pipeline.verify_live import LiveOptions
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming


@pytest.fixture
def following(pair: Pair, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    with pair.src() as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("CREATE TABLE static (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO ledger SELECT g, 0 FROM generate_series(1, 500) g")
        conn.execute("INSERT INTO static SELECT g, 'v' || g FROM generate_series(1, 100) g")
    proc = start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    for conn, rows in ((pair.src(), 3), (pair.dst(), 2)):  # created since: not replicated
        with conn:
            conn.execute("CREATE TABLE later (id int PRIMARY KEY)")
            conn.execute("INSERT INTO later SELECT generate_series(1, %s)", (rows,))
    return proc


@pytest.fixture
def writer(pair: Pair) -> Iterator[list[int]]:
    """An application writing to `items` and `ledger` without pause; yields its commit count."""
    commits = [0]
    stop = threading.Event()

    def run() -> None:
        with pair.src() as conn:
            conn.autocommit = False
            while not stop.is_set():
                conn.execute("INSERT INTO items (v) VALUES ('live')")
                conn.execute(
                    "UPDATE ledger SET balance = balance + 1 WHERE id = 1 + (random() * 499)::int"
                )
                conn.execute("UPDATE ledger SET balance = balance - 1 WHERE id = 1")
                conn.commit()
                commits[0] += 1

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: commits[0] > 50, what="the writer to commit")
    yield commits
    stop.set()
    thread.join()


def live_verify(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    return pgmigrator("verify", "--live", "--source", pair.source, "--dest", pair.dest, *args)


def test_live_verify_sees_equal_sides_while_writes_go_on_and_a_real_difference(
    pair: Pair, following: subprocess.Popen[str], writer: list[int]
) -> None:
    for _ in range(3):  # each run lines the sides up at a different point of a busy stream
        before = writer[0]
        res = live_verify(pair, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["live"]["lsn"].startswith("0/") and doc["live"]["writes_paused_s"] < 10
        checks = {c["table"]: c for c in doc["tables"]}
        assert {c["status"] for c in checks.values()} == {"ok"}
        assert set(checks) == {"public.items", "public.ledger", "public.static"}  # no `later`
        wait_for(lambda b=before: writer[0] > b + 20, what="the writer to go on")  # type: ignore[misc]
    res = live_verify(pair)
    assert res.returncode == 0 and "writes to the checked tables waited" in res.stdout
    checks, point = verify_live(
        Target(pair.source, "source"),
        Target(pair.dest, "destination"),
        LiveOptions("default"),
        group_tables=2,  # thousands of tables are lined up group by group: here 2 + 1
    )
    assert point.groups == 2 and {c.status for c in checks} == {"ok"} and len(checks) == 3
    with pair.dst() as dst:  # damage the destination: the live check must not hide it
        dst.execute("UPDATE static SET v = 'damaged' WHERE id = 7")
    res = live_verify(pair, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    status = {c["table"]: c["status"] for c in json.loads(res.stdout)["tables"]}
    assert status == {"public.items": "ok", "public.ledger": "ok", "public.static": "differs"}


def test_live_verify_without_a_follower_stops_before_locking(
    pair: Pair, following: subprocess.Popen[str]
) -> None:
    following.terminate()
    assert following.wait(timeout=60) == 0
    res = live_verify(pair, "--follower-timeout", "0.5")
    assert res.returncode == 1
    assert "did not apply a sentinel within 0.5 s; nothing was checked" in res.stderr
    assert "start `pgmigrator follow`" in res.stderr and "Traceback" not in res.stderr


def test_live_verify_gives_way_to_a_long_writer(
    pair: Pair, following: subprocess.Popen[str]
) -> None:
    with pair.src() as holder:
        holder.autocommit = False
        holder.execute("UPDATE ledger SET balance = balance + 1 WHERE id = 3")  # left open
        res = live_verify(pair, "--lock-timeout", "0.3")
        holder.commit()
    assert res.returncode == 1
    assert "stayed busy on the source" in res.stderr and "nothing was checked" in res.stderr
    with pair.src() as conn:  # the application writes on, and the follower too
        conn.execute("SET lock_timeout = '5s'")
        conn.execute("UPDATE ledger SET balance = balance + 1 WHERE id = 4")
    res = live_verify(pair)
    assert res.returncode == 0, res.stdout + res.stderr


def test_writers_wait_no_longer_than_the_lock_timeout_for_a_stalled_follower(
    pair: Pair, following: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower stalls right after the first sentinel (its destination transaction blocked
    behind a lock): the wait under the source lock ends at --lock-timeout, not at the follower
    timeout, the lock is released and nothing is reported as checked."""
    from pgmigrator.pipeline import verify_live as live

    blocker = pair.dst()
    calls: list[float] = []
    real = live._await

    def stall_after_first(*args: object) -> object:
        if calls:  # the second sentinel: hold the follower's next batch on the destination
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE pgmigrator.sentinels IN ACCESS EXCLUSIVE MODE")
        calls.append(args[2])  # type: ignore[arg-type]
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(live, "_await", stall_after_first)
    options = LiveOptions("default", lock_timeout_s=0.5, follower_timeout_s=30)
    try:
        with pytest.raises(
            live.LiveVerifyFailed, match=r"within 0\.5 s while the tables were locked"
        ):
            verify_live(Target(pair.source, "source"), Target(pair.dest, "destination"), options)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert calls == [30, 0.5]
    with pair.src() as conn:  # the lock is gone: writers go on at once
        conn.execute("SET lock_timeout = '1s'")
        conn.execute("UPDATE ledger SET balance = balance + 1 WHERE id = 5")
