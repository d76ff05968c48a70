"""Journey: a PostgreSQL database copied into Apache Iceberg tables and kept current.

`pgmigrator lake --follow` copies the tables under the slot's exported snapshot into a local
warehouse (SQLite catalog), then streams inserts, updates (one changing the key), deletes, a
truncate and an added column. The lake is read back with pyiceberg and compared with the source.
A second journey kills the process with SIGKILL in the middle of a backlog (a transaction larger
than the commit limit, written in pieces, then many small ones) and restarts it: the change log
holds every change exactly once and the current state equals the source.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from sqlalchemy.exc import OperationalError

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for

SOURCE_SCHEMA = """
CREATE TABLE items (
    id int PRIMARY KEY, qty smallint, big bigint, price numeric(10,2), ratio float8, name text,
    active bool, born date, at timestamptz, ts timestamp, t time, u uuid, data bytea,
    doc jsonb, tags text[], loose numeric
);
CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b));
INSERT INTO items
SELECT i, (i % 100)::smallint, i::bigint * 1000000007, (i * 1.25)::numeric(10,2), i / 3.0,
       CASE WHEN i % 10 = 0 THEN NULL ELSE 'name ' || i END, i % 2 = 0,
       DATE '2024-01-01' + i, TIMESTAMPTZ '2024-01-01 00:00:00+02' + i * INTERVAL '1 minute',
       TIMESTAMP '2024-01-01 12:00:00.5' + i * INTERVAL '1 second', TIME '10:00' + i * INTERVAL '1 s',
       md5(i::text)::uuid, decode(md5(i::text), 'hex'), jsonb_build_object('i', i, 'q', 'x"y'),
       ARRAY['a', 'b,c'], i * 10.125
FROM generate_series(1, 400) AS i;
INSERT INTO pairs SELECT i, 'k' || i, i FROM generate_series(1, 50) AS i;
"""

ITEMS_SQL = """
SELECT id, qty, big, price, ratio, name, active, born, at, ts, t, u, data, doc::text, tags::text,
       loose::text {extra} FROM items ORDER BY id
"""


def catalog(warehouse: Path) -> SqlCatalog:
    return SqlCatalog(
        "pgmigrator", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=warehouse.as_uri()
    )


def lake_rows(warehouse: Path, name: str, order: tuple[str, ...]) -> list[dict[str, Any]] | None:
    if not (warehouse / "catalog.db").exists():
        return None
    try:
        table = catalog(warehouse).load_table(("public", name))
    except (NoSuchTableError, OperationalError):  # not created yet, or the writer holds the lock
        return None
    rows = table.scan().to_arrow().to_pylist()
    return sorted(rows, key=lambda r: tuple(r[k] for k in order))


def source_items(pair: Pair, extra: str = "") -> list[tuple[Any, ...]]:
    with pair.src() as conn:
        return conn.execute(ITEMS_SQL.format(extra=extra)).fetchall()


def as_tuples(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in columns) for r in rows]


ITEM_COLUMNS = [
    "id", "qty", "big", "price", "ratio", "name", "active", "born", "at", "ts", "t", "u", "data",
    "doc", "tags", "loose",
]  # fmt: skip


def alive(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"pgmigrator lake exited: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_copy_then_stream_changes_into_iceberg(pair: Pair, tmp_path: Path) -> None:
    warehouse = tmp_path / "lake"
    with pair.src() as conn:
        conn.execute(SOURCE_SCHEMA)
    proc = start_pgmigrator(
        "lake", "--source", pair.source, "--warehouse", str(warehouse), "--follow",
        "--flush-interval", "0.3", "--name", pair.dbname,
    )  # fmt: skip
    try:
        wait_for(
            lambda: alive(proc) or len(lake_rows(warehouse, "items", ("id",)) or []) == 400,
            60,
            what="the initial copy",
        )
        copied = lake_rows(warehouse, "items", ("id",)) or []
        assert as_tuples(copied, ITEM_COLUMNS) == source_items(pair)
        with pair.src() as conn:
            conn.execute(
                "INSERT INTO items (id, qty, name, price, at) VALUES (1001, 1, 'new', 9.99, now())"
            )
            conn.execute("UPDATE items SET qty = qty + 1, name = 'upd' WHERE id <= 100")
            conn.execute("UPDATE items SET id = 2000 WHERE id = 21")  # the key changes
            conn.execute("DELETE FROM items WHERE id BETWEEN 30 AND 39")
            with conn.transaction():  # inserted and deleted in one transaction: leaves nothing
                conn.execute("INSERT INTO items (id) VALUES (3000)")
                conn.execute("DELETE FROM items WHERE id = 3000")
            conn.execute("ALTER TABLE items ADD COLUMN note text")
            conn.execute("UPDATE items SET note = 'n' || id WHERE id % 50 = 0")
            conn.execute("INSERT INTO items (id, note) VALUES (4000, 'with note')")
            conn.execute("UPDATE pairs SET v = -v WHERE a <= 5")
            conn.execute("DELETE FROM pairs WHERE a = 6 AND b = 'k6'")
            conn.execute("UPDATE pairs SET b = 'moved' WHERE a = 7")
        expected = source_items(pair, ", note")
        columns = [*ITEM_COLUMNS, "note"]

        def caught_up() -> bool:
            alive(proc)
            rows = lake_rows(warehouse, "items", ("id",))
            return rows is not None and "note" in rows[0] and as_tuples(rows, columns) == expected

        wait_for(caught_up, 60, interval=0.2, what="the lake to hold the source's items")
        with pair.src() as conn:
            pairs = conn.execute("SELECT a, b, v FROM pairs ORDER BY a, b").fetchall()
        wait_for(
            lambda: (
                as_tuples(lake_rows(warehouse, "pairs", ("a", "b")) or [], ["a", "b", "v"]) == pairs
            ),
            60,
            what="the lake to hold the source's pairs",
        )

        def reported() -> dict[str, Any] | None:
            out = pgmigrator("status", "--name", pair.dbname, "--json")
            snap = orjson.loads(out.stdout) if out.returncode == 0 else {}
            return snap if snap.get("phase") == "streaming" and snap.get("total_rows") else None

        snapshot = wait_for(reported, 30, interval=0.2, what="status to show the lake streaming")
        assert isinstance(snapshot, dict)
        assert snapshot["info"]["slot"] == f"pgmigrator_lake_{pair.dbname}"
        assert snapshot["applied_lsn"] and snapshot["health"]["source"]["status"] == "ok"
        log = lake_rows(warehouse, "items__changes", ("_lsn", "_seq")) or []
        ops = [r["_op"] for r in log]
        assert ops.count("c") == 3 and ops.count("d") == 11  # 1001, 3000, 4000; 30-39, 3000
        assert ops.count("u") == 100 + 1 + 9  # 100 updates, the key change, 9 notes (2000 too)
        assert all(r["_commit_time"] is not None and r["_lsn"] > 0 for r in log)
        with pair.src() as conn:
            conn.execute("TRUNCATE pairs")
            conn.execute("INSERT INTO pairs VALUES (1, 'after', 1)")
        wait_for(
            lambda: (
                as_tuples(lake_rows(warehouse, "pairs", ("a",)) or [], ["a", "b", "v"])
                == [(1, "after", 1)]
            ),
            60,
            what="the truncate to reach the lake",
        )
    finally:
        stop(proc)
        print(proc.stderr.read() if proc.stderr else "")  # shown by pytest when the test fails
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    # a rerun without --follow finds the slot and every table committed: nothing is copied again
    again = pgmigrator(
        "lake",
        "--source",
        pair.source,
        "--warehouse",
        str(warehouse),
        "--json",
        "--name",
        pair.dbname,
    )
    assert again.returncode == 0, again.stderr
    assert '"copied_rows":0' in again.stdout


def test_kill_minus_9_mid_stream_then_restart_is_exactly_once(pair: Pair, tmp_path: Path) -> None:
    warehouse = tmp_path / "lake"
    with pair.src() as conn:
        conn.execute("CREATE TABLE acc (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO acc SELECT i, 0 FROM generate_series(1, 1000) AS i")
    args = (
        "lake", "--source", pair.source, "--warehouse", str(warehouse), "--follow",
        "--flush-interval", "0.2", "--max-rows", "300", "--name", pair.dbname,
    )  # fmt: skip
    proc = start_pgmigrator(*args)
    try:
        wait_for(
            lambda: alive(proc) or len(lake_rows(warehouse, "acc", ("id",)) or []) == 1000,
            60,
            what="copy",
        )
        small = 3000

        def load() -> None:  # writes on while the lake streams, and while it is killed
            with pair.src() as conn:
                conn.autocommit = True
                # one transaction larger than --max-rows: committed to the lake in pieces
                conn.execute("INSERT INTO acc SELECT i, 1 FROM generate_series(50000, 54999) AS i")
                for i in range(small):  # one change per transaction: many small commits
                    if i % 3 == 0:
                        conn.execute("INSERT INTO acc VALUES (%s, %s)", (10_000 + i, i))
                    elif i % 3 == 1:
                        conn.execute("UPDATE acc SET v = v + 1 WHERE id = %s", (i % 1000 + 1,))
                    else:
                        conn.execute("DELETE FROM acc WHERE id = %s", (10_000 + i - 2,))

        writer = threading.Thread(target=load)
        writer.start()
        try:

            def some_logged() -> bool:
                return len(lake_rows(warehouse, "acc__changes", ("_lsn",)) or []) > 0

            wait_for(some_logged, 60, interval=0.02, what="the first change-log commit")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            writer.join()
        changes = 5000 + small
        logged_at_kill = len(lake_rows(warehouse, "acc__changes", ("_lsn",)) or [])
        assert 0 < logged_at_kill < changes, "the kill should land in the middle of the stream"
        with pair.src() as conn:  # more changes while the lake process is down
            conn.execute("UPDATE acc SET v = v + 100 WHERE id <= 50")
            changes += 50
        proc = start_pgmigrator(*args)
        with pair.src() as conn:
            expected = conn.execute("SELECT id, v FROM acc ORDER BY id").fetchall()

        def done() -> bool:
            alive(proc)
            rows = lake_rows(warehouse, "acc", ("id",)) or []
            return as_tuples(rows, ["id", "v"]) == expected

        wait_for(done, 120, interval=0.2, what="the restarted lake to catch up")
        wait_for(
            lambda: len(lake_rows(warehouse, "acc__changes", ("_lsn",)) or []) >= changes,
            60,
            what="the change log to catch up",
        )
        log = lake_rows(warehouse, "acc__changes", ("_lsn", "_seq")) or []
        keys = [(r["_lsn"], r["_seq"]) for r in log]
        assert len(keys) == changes, f"{len(keys)} change-log rows for {changes} changes"
        assert len(set(keys)) == len(keys), "a change was written twice"
    finally:
        stop(proc)


def test_settings_from_the_config_file(pair: Pair, tmp_path: Path) -> None:
    warehouse = tmp_path / "from-config"
    with pair.src() as conn:
        conn.execute("CREATE TABLE c (id int PRIMARY KEY)")
        conn.execute("INSERT INTO c SELECT generate_series(1, 10)")
    config = tmp_path / "lake.yaml"
    config.write_text(f"lake:\n  warehouse: {warehouse}\n  copy_batch_rows: 3\n")
    result = pgmigrator(
        "lake", "--config", str(config), "--source", pair.source, "--json", "--name", pair.dbname
    )
    assert result.returncode == 0, result.stderr
    assert '"copied_rows":10' in result.stdout
    assert [r["id"] for r in lake_rows(warehouse, "c", ("id",)) or []] == list(range(1, 11))


def test_missing_warehouse_is_a_clear_error(pair: Pair) -> None:
    result = pgmigrator("lake", "--source", pair.source)
    assert result.returncode == 1
    assert "error: no warehouse given" in result.stderr
    assert "hint: pass --warehouse" in result.stderr


def test_walsender_terminated_mid_stream_reconnects_without_loss(
    pair: Pair, tmp_path: Path
) -> None:
    warehouse = tmp_path / "lake"
    with pair.src() as conn:
        conn.execute("CREATE TABLE ev (id int PRIMARY KEY, v int)")
    proc = start_pgmigrator(
        "lake", "--source", pair.source, "--warehouse", str(warehouse), "--follow",
        "--flush-interval", "0.2", "--name", pair.dbname,
    )  # fmt: skip
    try:
        wait_for(
            lambda: alive(proc) or lake_rows(warehouse, "ev", ("id",)) is not None,
            60,
            what="the initial copy",
        )
        with pair.src() as conn:
            conn.autocommit = True
            for i in range(300):
                conn.execute("INSERT INTO ev VALUES (%s, %s)", (i, i))
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = current_database() AND active"
            )
            for i in range(300, 600):
                conn.execute("INSERT INTO ev VALUES (%s, %s)", (i, i))
            conn.execute("UPDATE ev SET v = -v WHERE id % 7 = 0")

        def converged() -> bool:
            alive(proc)
            rows = lake_rows(warehouse, "ev", ("id",)) or []
            return as_tuples(rows, ["id", "v"]) == [
                (i, -i if i % 7 == 0 else i) for i in range(600)
            ]

        wait_for(converged, 90, interval=0.2, what="the lake to catch up after the reconnect")
        log = lake_rows(warehouse, "ev__changes", ("_lsn", "_seq")) or []
        assert len(log) == 600 + len(range(0, 600, 7))
    finally:
        stop(proc)
    err = proc.stderr.read() if proc.stderr else ""
    assert "reconnecting" in err, err[-2000:]


def test_interrupted_copy_says_to_reset_and_reset_recovers(pair: Pair, tmp_path: Path) -> None:
    warehouse = tmp_path / "lake"
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(1, 400000) i")
    args = ("lake", "--source", pair.source, "--warehouse", str(warehouse), "--name", pair.dbname)
    proc = start_pgmigrator(*args)
    try:

        def copying() -> bool:
            alive(proc)
            if not (warehouse / "catalog.db").exists():
                return False
            try:
                catalog(warehouse).load_table(("public", "big"))
            except (NoSuchTableError, OperationalError):
                return False
            return True

        wait_for(copying, 60, interval=0.01, what="the copy to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    again = pgmigrator(*args)
    assert again.returncode == 1, again.stderr
    assert "have no completed initial copy" in again.stderr and "--reset" in again.stderr
    reset = pgmigrator(*args, "--reset", "--json")
    assert reset.returncode == 0, reset.stderr
    assert '"copied_rows":400000' in reset.stdout
    assert len(lake_rows(warehouse, "big", ("id",)) or []) == 400000


def test_keyless_tables_made_full_survive_a_reset_and_cleanup_gives_them_back(
    pair: Pair, tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE k (v int); INSERT INTO k SELECT generate_series(1, 5)")
    args = ("lake", "--source", pair.source, "--warehouse", str(tmp_path / "lake"))
    args += ("--name", pair.dbname, "--keyless-tables", "full")
    for extra in ((), ("--reset",)):  # the reset recreates the publication: the record carries over
        result = pgmigrator(*args, *extra)
        assert result.returncode == 0, result.stderr

    def identity() -> str:
        with pair.src() as conn:
            return str(
                conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'k'").fetchone()[0]
            )  # type: ignore[index]

    assert identity() == "f"
    res = pgmigrator("cleanup", "--lake", "--source", pair.source, "--name", pair.dbname)
    assert res.returncode == 0, res.stderr
    name = f"pgmigrator_lake_{pair.dbname}"
    assert f"dropped replication slot {name}" in res.stdout, res.stdout
    assert "reset REPLICA IDENTITY of public.k to DEFAULT on the source" in res.stdout
    assert identity() == "d"
