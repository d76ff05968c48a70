"""Journey: the clone's copy paths: split tables, frozen loads and their fallback, both COPY loops."""

from __future__ import annotations

import multiprocessing as mp
import queue
from typing import Any

import psycopg
import pytest
from psycopg import pq

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.pipeline import clone, copyworker, plan
from pgmigrator.pipeline._pump import c_pump
from pgmigrator.pipeline.copyworker import ChunkTask, Worker
from pgmigrator.retry import RetryPolicy
from pgmigrator.schema.apply import PostDataBuilder
from pgmigrator.schema.dump import Entry, Script
from pgmigrator.schema.early import Step, TablePlan
from pgmigrator.source.catalog import TableInfo, list_tables
from pgmigrator.store.state import StateStore
from tests.conftest import Pair, pgmigrator

# (pages all frozen, pages): pg_visibility reads the visibility map
FROZEN = "SELECT all_frozen, pg_relation_size('{0}') / 8192 FROM pg_visibility_map_summary('{0}')"


def frozen(dst: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    dst.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
    row = dst.execute(FROZEN.format(table)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_split_table_copies_in_chunks_and_whole_tables_load_frozen(pair: Pair) -> None:
    with pair.src() as src:
        src.execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);"
            "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 40000) g;"
            "CREATE TABLE small (id int PRIMARY KEY, big_id int REFERENCES big (id));"
            "INSERT INTO small SELECT g, g FROM generate_series(1, 500) g"
        )
    env = {"PGMIGRATOR_COPY__SPLIT_THRESHOLD_MB": "2", "PGMIGRATOR_COPY__CHUNK_MB": "2"}
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, env=env)
    assert res.returncode == 0, res.stderr
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout + res.stderr
    with pair.dst() as dst:
        chunks: dict[str, int] = dict(
            dst.execute(
                "SELECT table_name, count(*) FROM pgmigrator.chunks WHERE done GROUP BY 1"
            ).fetchall()
        )
        assert chunks["small"] == 1 and chunks["big"] > 1
        # chunks of one table load side by side, so only a table copied whole can be frozen
        pages = frozen(dst, "small")
        assert pages[0] == pages[1] > 0
        assert frozen(dst, "big")[0] == 0
        # COPY FREEZE set the visibility map, and ANALYZE recorded it
        assert dst.execute(
            "SELECT relallvisible = relpages AND relpages > 0 FROM pg_class WHERE relname = 'small'"
        ).fetchone() == (True,)
        assert dst.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'small_big_id_fkey'"
        ).fetchone() == (True,)


@pytest.fixture(params=["c", "python"])
def pump(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c" and c_pump() is None:
        pytest.skip("the C copy loop was not built")
    if request.param == "python":
        monkeypatch.setattr(copyworker, "c_pump", lambda: None)
    return str(request.param)


def _task(dst: psycopg.Connection[Any], name: str) -> ChunkTask:
    info = TableInfo(
        oid=0,
        schema="public",
        name=name,
        kind="r",
        is_partition=False,
        persistence="p",
        replident="d",
        size_bytes=0,
        est_rows=0,
        has_pk=True,
        has_ri_index=False,
        root_schema="public",
        root_name=name,
        columns=("id", "v"),
        generated=(),
    )
    return ChunkTask(
        "default",
        "public",
        name,
        0,
        plan.copy_out_sql(info, None, None).as_string(dst),
        plan.copy_in_sql(info, freeze=True).as_string(dst),
        truncate=plan.truncate_sql(info).as_string(dst),
        copy_in_plain=plan.copy_in_sql(info).as_string(dst),
    )


def test_copy_loop_freezes_or_falls_back_when_truncate_is_refused(pair: Pair, pump: str) -> None:
    setup = "CREATE TABLE {0} (id int PRIMARY KEY, v text);"
    with pair.src() as src:
        for name in ("free", "pinned"):
            src.execute(setup.format(name))
            src.execute(
                f"INSERT INTO {name} SELECT g, md5(g::text) FROM generate_series(1, 3000) g"
            )
    with pair.dst() as dst:
        StateStore(dst, "default").ensure_schema()
        dst.execute(setup.format("free") + setup.format("pinned"))
        dst.execute("CREATE TABLE holder (id int REFERENCES pinned (id))")  # TRUNCATE refused
        dst.commit()
        tasks = [_task(dst, "free"), _task(dst, "pinned")]
    results: mp.Queue[Any] = mp.Queue()
    with pair.src() as exporter:
        exporter.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot = exporter.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        worker = Worker(
            0,
            Target(pair.source, "source"),
            Target(pair.dest, "destination"),
            snapshot,
            results,
            RetryPolicy(),
        )
        copied = [worker.copy(task) for task in tasks]
    assert [rows for rows, _ in copied] == [3000, 3000]
    with pair.dst() as dst:
        pages = frozen(dst, "free")
        assert pages[0] == pages[1] > 0
        assert frozen(dst, "pinned")[0] == 0
        assert dst.execute("SELECT sum(id), count(DISTINCT v) FROM pinned").fetchone() == (
            3000 * 3001 // 2,
            3000,
        )
    with pair.src() as src, src.cursor().copy(tasks[0].copy_out) as out:
        expected = sum(len(data) for data in out)
    assert [n for _, n in copied] == [expected, expected]  # every byte moved, by either loop
    sent = []
    while True:
        try:
            sent.append(results.get(timeout=0.1))
        except queue.Empty:
            break
    # the refused TRUNCATE is reported (the parent logs it), progress is counted in bytes
    assert [m for m in sent if m[0] != "progress"] == [
        ("unfrozen", ("public", "pinned", 0), sent_reason(sent))
    ]
    assert "foreign key" in sent_reason(sent)
    assert all(m[2] > 0 for m in sent if m[0] == "progress")


def sent_reason(sent: list[Any]) -> str:
    return next(str(m[2]) for m in sent if m[0] == "unfrozen")


class Stop(Exception):
    pass


def test_c_loop_drains_the_source_before_a_failing_progress_callback_propagates(
    pair: Pair,
) -> None:
    loop = c_pump()
    if loop is None:
        pytest.skip("the C copy loop was not built")
    with pair.src() as src:
        src.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5000)")
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int)")
        dst.commit()
    calls: list[int] = []

    def progress(n: int) -> None:
        calls.append(n)
        raise Stop

    with pair.src() as src, pair.dst() as dst:
        src.pgconn.nonblocking = dst.pgconn.nonblocking = 0
        assert (
            src.pgconn.exec_(b"COPY t TO STDOUT (FORMAT binary)").status == pq.ExecStatus.COPY_OUT
        )
        assert (
            dst.pgconn.exec_(b"COPY t FROM STDIN (FORMAT binary)").status == pq.ExecStatus.COPY_IN
        )
        with pytest.raises(Stop):
            loop(src.pgconn.pgconn_ptr, dst.pgconn.pgconn_ptr, progress, 0.0)
        assert len(calls) == 1  # called once, then left alone
        # every row was still read, so the source session is back to idle and usable
        res = src.pgconn.get_result()
        assert res is not None and res.command_status == b"COPY 5000"
        assert src.pgconn.get_result() is None
        assert src.execute("SELECT 1").fetchone() == (1,)
        # and every row was still sent: the destination takes the whole COPY
        dst.pgconn.put_copy_end()
        res = dst.pgconn.get_result()
        assert res is not None and res.command_status == b"COPY 5000"
        assert dst.pgconn.get_result() is None


def test_post_data_connections_carry_the_configured_build_settings(pair: Pair) -> None:
    settings = Settings(copy={"index_memory_mb": 300, "index_parallel_workers": 1})  # type: ignore[call-arg]
    probe = Entry(
        1,
        "TRIGGER",
        "probe",
        "public",
        "CREATE TABLE public.seen AS SELECT current_setting('maintenance_work_mem') AS mem,"
        " current_setting('max_parallel_maintenance_workers') AS workers",
    )
    with pair.dst() as dst:
        store = StateStore(dst, "default")
        store.ensure_schema()
        store.create("slot", "publication", "post-data")
    builder = PostDataBuilder(
        Target(pair.dest, "destination"),
        Script("", (probe,)),
        "default",
        set(),
        workers=2,
        gucs=clone.build_gucs(settings),
    )
    builder.finish()
    with pair.dst() as dst:
        assert dst.execute("SELECT mem, workers FROM public.seen").fetchall() == [("300MB", "1")]
        assert dst.execute(
            "SELECT done FROM pgmigrator.post_data WHERE pipeline = 'default' AND seq = 1"
        ).fetchall() == [(True,)]
    defaults = clone.build_gucs(Settings())  # type: ignore[call-arg]
    assert defaults == {"maintenance_work_mem": "1024MB", "max_parallel_maintenance_workers": "0"}


def _recording_build(seq: int, table: str) -> Entry:
    """An index build that also records, in its own transaction, the parallel workers it got."""
    return Entry(
        seq,
        "INDEX",
        f"{table}_i",
        "public",
        f"CREATE INDEX {table}_i ON public.{table} (id);\n"
        f"CREATE TABLE public.{table}_seen AS"
        " SELECT current_setting('max_parallel_maintenance_workers') AS workers",
    )


def test_idle_cores_go_to_an_index_build_left_alone(pair: Pair) -> None:
    """Unset copy.index_parallel_workers: a build gets the cores no copy and no other step
    needs (two connections: none while both copy workers still have tables, one for a build
    left alone once the copy is over; `CoreBudget`'s unit tests cover the rest)."""
    with pair.dst() as dst:
        for table in ("a", "b"):
            dst.execute(f"CREATE TABLE public.{table} (id int)")
        store = StateStore(dst, "default")
        store.ensure_schema()
        store.create("slot", "publication", "post-data")
    gucs = clone.build_gucs(Settings())  # type: ignore[call-arg]
    early = {
        ("public", t): TablePlan(
            (Step(_recording_build(i, t), _recording_build(i, t).sql, True),), ()
        )
        for i, t in enumerate(("a", "b"), start=1)
    }
    builder = PostDataBuilder(
        Target(pair.dest, "destination"),
        Script("", tuple(plan.builds[0].entry for plan in early.values())),
        "default",
        set(),
        workers=2,
        early=early,
        gucs=gucs,
        auto_parallel=True,
    )
    builder.expect_copies(3, 2)
    builder.table_copied("public", "a")  # two tables left for two copy workers: no core spare
    builder._futures[0].result()
    builder.expect_copies(1, 2)
    builder.table_copied("public", "b")  # the copy is over, this build is alone: one spare core
    builder.finish()
    with pair.dst() as dst:
        seen = {
            t: dst.execute(f"SELECT workers FROM public.{t}_seen").fetchone()[0]  # type: ignore[index]
            for t in ("a", "b")
        }
    assert seen == {"a": "0", "b": "1"}


def test_types_without_binary_io_are_copied_in_text(pair: Pair) -> None:
    """contrib's isn (isbn, ean13, ...) and seg types have no binary send/receive functions:
    binary COPY of a table holding one fails ("no binary output function"), so that table is
    copied in text, its neighbours in binary."""
    ddl = (
        "CREATE EXTENSION isn; CREATE EXTENSION seg; CREATE DOMAIN book AS isbn;"
        " CREATE TABLE shelf (id int PRIMARY KEY, i isbn, b book, many isbn[], s seg);"
        " CREATE TABLE plain (id int PRIMARY KEY, v text)"
    )
    with pair.src() as conn:
        conn.execute(ddl)
        conn.execute(
            "INSERT INTO shelf SELECT g, '978-0-393-04002-9', '0-393-04002-X',"
            " ARRAY['978-0-393-04002-9'::isbn, NULL], (g || ' .. ' || g + 1)::seg"
            " FROM generate_series(1, 500) g;"
            " INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 500) g"
        )
        tables = {t.name: t for t in list_tables(conn)}
    assert (tables["shelf"].binary, tables["plain"].binary) == (False, True)
    assert "FORMAT text" in plan.copy_out_sql(tables["shelf"], None, None).as_string(None)
    args = ("--source", pair.source, "--dest", pair.dest)
    res = pgmigrator("clone", *args)
    assert res.returncode == 0, res.stderr
    res = pgmigrator("verify", *args)
    assert res.returncode == 0 and "all equal" in res.stdout, res.stdout
    with pair.dst() as conn:
        assert conn.execute("SELECT count(*), min(s::text) FROM shelf").fetchone() == (
            500,
            "1 .. 2",
        )
