"""Journey: clone a database with every common type, verify it, survive a kill with --resume."""

from __future__ import annotations

import os
import signal

from pgmigrator import sample
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for


def test_clone_every_type_then_verify(pair: Pair) -> None:
    with pair.src() as conn:
        sample.load(conn, rows=3000)

    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "clone complete" in res.stdout
    assert "pgm-secret" not in res.stdout + res.stderr  # the password is never printed

    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all equal" in res.stdout

    with pair.dst() as dst, pair.src() as src:
        # generated column recomputed, identity values copied and the identity sequence moved on
        assert (
            dst.execute(
                "SELECT count(*) FROM every_type WHERE doubled IS DISTINCT FROM n * 2"
            ).fetchone()[0]
            == 0
        )
        new_id = dst.execute("INSERT INTO every_type (n) VALUES (1) RETURNING id").fetchone()[0]
        assert new_id > src.execute("SELECT max(id) FROM every_type").fetchone()[0]
        # serial sequence synced: a new order id does not collide
        dst.execute("INSERT INTO sales.orders (customer_id, amount) VALUES (1, 1)")
        # post-data: indexes, FK and trigger exist; the trigger fires after the copy only
        assert (
            dst.execute(
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer_idx'"
            ).fetchone()[0]
            == 1
        )
        assert (
            dst.execute(
                "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_id_fkey'"
            ).fetchone()[0]
            == 1
        )
        assert (
            dst.execute("SELECT count(*) FROM sales.audit").fetchone()[0]
            == src.execute("SELECT count(*) FROM sales.audit").fetchone()[0] + 1
        )
        # materialized view populated, view present, partitions attached
        assert (
            dst.execute("SELECT count(*) FROM sales.big_customers").fetchone()[0]
            == src.execute("SELECT count(*) FROM sales.big_customers").fetchone()[0]
        )
        assert dst.execute("SELECT count(*) FROM sales.order_totals").fetchone()[0] > 0
        assert (
            dst.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass"
            ).fetchone()[0]
            == 2
        )
        # special values survive
        for query in (
            "SELECT count(*) FROM every_type WHERE n = 'NaN'",
            "SELECT count(*) FROM every_type WHERE dt = 'infinity'",
            "SELECT count(*) FROM every_type WHERE big IS NOT NULL AND length(big) = 128000",
        ):
            assert dst.execute(query).fetchone()[0] == src.execute(query).fetchone()[0] > 0
        # the slot and the state are kept for `follow`
        assert (
            src.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgmigrator_default'"
            ).fetchone()[0]
            == 1
        )
        assert dst.execute(
            "SELECT phase, consistent_lsn IS NOT NULL FROM pgmigrator.pipelines"
        ).fetchone() == ("copied", True)

    res = pgmigrator("cleanup", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stderr
    with pair.src() as src, pair.dst() as dst:
        assert src.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        assert src.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        assert dst.execute("SELECT to_regnamespace('pgmigrator')").fetchone()[0] is None


def test_verify_reports_differences(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;"
            "CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u SELECT generate_series(1, 10)"
        )
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    with pair.dst() as dst:
        dst.execute("UPDATE t SET v = 'changed' WHERE id = 500")
        dst.execute("DELETE FROM u WHERE id = 3")
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest, "--json")
    assert res.returncode == 1
    import json

    by_table = {c["table"]: c for c in json.loads(res.stdout)}
    assert (
        by_table["public.t"]["status"] == "differs"
        and by_table["public.t"]["detail"] == "same row count, different contents"
    )
    assert by_table["public.u"]["status"] == "differs" and by_table["public.u"]["dest_rows"] == 9


def _load_for_kill(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, pad text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 1500000) g"
        )
        for i in range(6):
            conn.execute(f"CREATE TABLE small_{i} (id int PRIMARY KEY, v text)")
            conn.execute(f"INSERT INTO small_{i} SELECT g, 'v' FROM generate_series(1, 1000) g")


def test_kill_mid_copy_then_resume(pair: Pair) -> None:
    _load_for_kill(pair)
    proc = start_pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--workers", "2")

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
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

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


def test_destination_connection_dropped_mid_copy_is_retried(pair: Pair) -> None:
    _load_for_kill(pair)
    proc = start_pgmigrator(
        "clone",
        "--source",
        pair.source,
        "--dest",
        pair.dest,
        "--workers",
        "1",
        "--tables",
        "public.big",
    )

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


def test_status_reads_the_state_file_after_the_run(pair: Pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500)"
        )
    env = {"PGMIGRATOR_STATE_DIR": str(tmp_path)}
    res = pgmigrator("status", "--name", "st", env=env)
    assert res.returncode == 1 and "no state file" in res.stderr and "Traceback" not in res.stderr
    assert (
        pgmigrator(
            "clone", "--name", "st", "--source", pair.source, "--dest", pair.dest, env=env
        ).returncode
        == 0
    )
    import json

    res = pgmigrator("status", "--name", "st", "--json", env=env)
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert snap["phase"] == "done" and snap["pipeline"] == "st"
    assert [(t["name"], t["state"], t["rows_copied"]) for t in snap["tables"]] == [
        ("t", "copied", 500)
    ]
    assert "pgm-secret" not in res.stdout  # DSNs in the state file are redacted
    human = pgmigrator("status", "--name", "st", env=env).stdout
    assert "phase" in human and "public.t" in human
    (tmp_path / "state-st.json").write_text("{not json")
    res = pgmigrator("status", "--name", "st", env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "error:" in res.stderr
