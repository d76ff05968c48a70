"""Journey: a destination table got damaged; `pgmigrator resync` copies it again while the
follower streams and the source keeps writing, and the two sides end up equal."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for
from tests.scenarios.faults.helpers import (
    clone_and_follow,
    converge,
    load,
    marker,
    wait_marker,
    workload,
    write_some,
)


def _table_row(pair: Pair, name: str) -> tuple[str, str | None, int]:
    with pair.dst() as conn:
        row = conn.execute(
            "SELECT state, sync_lsn::text, copies FROM pgmigrator.tables WHERE table_name = %s",
            (name,),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@contextmanager
def _follower_held_back(pair: Pair) -> Iterator[None]:
    """Keep the follower behind until the resync has planned its copy.

    The follower's destination transaction starts with a change to ``hist`` and waits on a lock
    we hold there (it holds no lock on ``acct``). Everything written meanwhile is older than the
    new copy's sync LSN: applied on top of the copy it would duplicate rows. The lock goes as
    soon as the state store shows the new copy planned (``copying``, second copy).
    """
    marker(pair, "idle")
    wait_marker(pair, "idle")
    holder = pair.dst()
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE hist IN ACCESS EXCLUSIVE MODE")
    with pair.src() as conn:
        conn.execute("INSERT INTO hist (acct, delta) VALUES (0, 0)")

    def follower_waits() -> bool:
        with pair.dst() as conn:
            return bool(
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'hist'::regclass AND NOT granted"
                ).fetchone()[0]
            )

    wait_for(follower_waits, timeout=30, what="the follower to wait on hist")

    def release() -> None:
        wait_for(
            lambda: _table_row(pair, "acct")[0::2] == ("copying", 2),
            timeout=60,
            interval=0.02,
            what="the resync to plan its copy",
        )
        holder.rollback()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(60)
        holder.close()


def test_resync_a_damaged_table_while_following_under_writes(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    proc = clone_and_follow(pair, procs)
    with pair.dst() as conn:  # the damage: rows lost and rows changed behind the pipeline's back
        conn.execute("DELETE FROM acct WHERE id % 7 = 0")
        conn.execute("UPDATE acct SET note = 'corrupt' WHERE id % 11 = 0")
    with _follower_held_back(pair), workload(pair, acct_inserts=True):
        write_some(pair, 50, "before")  # the follower lags: these wait, and are in the new copy
        res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest, "--json", "acct")
    assert res.returncode == 0, res.stderr
    write_some(pair, 50, "after")
    [done] = json.loads(res.stdout)
    assert done["table"] == "public.acct" and done["rows"] > 2000
    assert done["follower_reconnected"] is True
    state, sync_lsn, copies = _table_row(pair, "acct")
    assert (state, sync_lsn, copies) == ("copied", done["sync_lsn"], 2)
    assert _table_row(pair, "hist")[2] == 1  # the other tables were left alone
    converge(pair, "resynced")  # keyless table included: nothing lost, nothing applied twice
    assert proc.poll() is None  # the follower reconnected by itself and kept streaming


def test_resync_without_a_follower_then_follow_skips_what_the_copy_has(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    load(pair)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    with pair.dst() as conn:  # a table the clone reported as failed, and its rows half gone
        conn.execute("DELETE FROM no_key WHERE a < 100")
        conn.execute("UPDATE pgmigrator.tables SET state = 'errored' WHERE table_name = 'no_key'")
    write_some(pair, 30, "pending")  # in the slot, not applied yet: the new copy has them
    res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest, "public.no_key")
    assert res.returncode == 0, res.stderr
    assert "resynced public.no_key: 230 row(s)" in res.stdout
    assert "follower reconnected" not in res.stdout
    assert _table_row(pair, "no_key")[0] == "copied"
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    write_some(pair, 10, "later")
    converge(pair, "followed")  # keyless no_key: the 30 pending inserts were not applied twice


def test_resync_bad_input(pair: Pair) -> None:
    load(pair, rows=10)
    res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest, "acct")
    assert res.returncode == 1 and "no state for pipeline 'default'" in res.stderr, res.stderr
    with pair.src() as conn:
        conn.execute("CREATE TABLE later (id int PRIMARY KEY)")
        conn.execute("INSERT INTO later VALUES (1)")
    assert (
        pgmigrator(
            "clone", "--source", pair.source, "--dest", pair.dest, "--exclude", "public.later"
        ).returncode
        == 0
    )
    res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest, "nope")
    assert res.returncode == 1 and "no table on the source matches nope" in res.stderr
    res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest, "later")
    assert res.returncode == 1 and "not part of pipeline 'default': public.later" in res.stderr
    res = pgmigrator("resync", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 2 and "Missing argument" in res.stderr
    assert "Traceback" not in res.stderr and "pgm-secret" not in res.stdout + res.stderr


def test_resync_add_takes_a_table_created_since_the_clone_while_following(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    proc = clone_and_follow(pair, procs)
    ddl = "CREATE TABLE later (id int PRIMARY KEY, v text)"
    with pair.src() as conn:  # a table the application created during the migration
        conn.execute(ddl)
        conn.execute("INSERT INTO later SELECT g, 'before' FROM generate_series(1, 500) g")
    dsns = ("--source", pair.source, "--dest", pair.dest)
    res = pgmigrator("resync", *dsns, "public.later")
    assert res.returncode == 1 and "not part of pipeline 'default'" in res.stderr
    assert "--add" in res.stderr  # the hint
    res = pgmigrator("resync", *dsns, "--add", "public.later")
    assert res.returncode == 1 and "not on the destination: public.later" in res.stderr
    with pair.dst() as conn:
        conn.execute(ddl)

    def reported() -> bool:  # the follower's status names it too
        res = pgmigrator("status", "--json")
        info = json.loads(res.stdout).get("info", {}) if res.returncode == 0 else {}
        return bool(info.get("not_replicated") == "public.later")

    wait_for(reported, timeout=30, interval=0.3, what="the table in the follower's status")
    # Not replicated yet: a switchover would leave its rows behind, so it refuses.
    res = pgmigrator("switchover", *dsns, "--timeout", "30s")
    assert res.returncode == 1
    assert "does not replicate (created since the clone?): public.later" in res.stderr
    assert "resync --add" in res.stderr
    stop = threading.Event()

    def writes() -> None:  # its rows keep changing while it joins the pipeline
        with pair.src() as conn:
            i = 0
            while not stop.is_set() or i < 50:
                i += 1
                conn.execute("UPDATE later SET v = %s WHERE id = %s", (f"w{i}", i % 500 + 1))
                conn.execute("INSERT INTO later VALUES (%s, 'new')", (1000 + i,))

    writer = threading.Thread(target=writes)
    writer.start()
    try:
        res = pgmigrator("resync", *dsns, "--add", "--json", "public.later")
    finally:
        stop.set()
        writer.join(60)
    assert res.returncode == 0, res.stderr
    [done] = json.loads(res.stdout)
    assert done["table"] == "public.later" and done["rows"] >= 500
    assert _table_row(pair, "later")[0] == "copied"
    converge(pair, "added")  # verify covers it: every row, including the ones written meanwhile
    with pair.dst() as conn:
        assert conn.execute("SELECT count(*) FROM later WHERE v = 'new'").fetchone()[0] >= 50
    assert proc.poll() is None

    keyless = "CREATE TABLE later_log (at int, msg text)"  # the same rule as the clone's
    with pair.dst() as conn:
        conn.execute(keyless)
    with pair.src() as conn:
        conn.execute(keyless + "; INSERT INTO later_log VALUES (1, 'a')")
    res = pgmigrator("resync", *dsns, "--add", "public.later_log")
    assert res.returncode == 1 and "public.later_log" in res.stderr
    assert "--keyless-tables full" in res.stderr
    with pair.src() as conn:  # not published: the application still updates it
        conn.execute("UPDATE later_log SET msg = 'b'")
    # Left out on purpose: the operator excludes it, and the switchover goes ahead.
    env = {"PGMIGRATOR_EXCLUDE": "public.later_log"}
    res = pgmigrator("switchover", *dsns, "--timeout", "30s", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    # The follower said so for each table as soon as it was created on the source.
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    warned = [line for line in err.splitlines() if "table not replicated" in line]
    assert len(warned) == 2, err
    assert "table=public.later " in warned[0] and "table=public.later_log " in warned[1]
