"""Journey: clone a database with every common type, verify it, read its status (kills: faults/)."""

from __future__ import annotations

from pgmigrator import sample
from pgmigrator.dsn import Target
from pgmigrator.pipeline.verify import verify
from tests.conftest import Pair, pgmigrator


def rows_of(conn, query: str) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    return conn.execute(query).fetchall()  # type: ignore[no-any-return]


def test_clone_every_type_then_verify(pair: Pair) -> None:
    with pair.src() as conn:
        sample.load(conn, rows=3000)

    res = pgmigrator(
        "clone", "--source", pair.source, "--dest", pair.dest, "--workers", "2",
        "--keyless-tables", "full",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "clone complete" in res.stdout
    assert "pgm-secret" not in res.stdout + res.stderr  # the password is never printed
    # no_key has neither a key nor a replica identity: made FULL (refusals: test_clone_bad_input)
    [warned] = [ln for ln in res.stderr.splitlines() if "replica identity set to FULL" in ln]
    assert "public.no_key" in warned

    res = pgmigrator("verify", "--schema", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all equal" in res.stdout
    # the schema too, object by object: keys rebuilt as index + attach, triggers, views, ...
    [schema] = [ln for ln in res.stdout.splitlines() if ln.startswith("schema:")]
    assert schema.endswith("compared, all equal") and int(schema.split()[1]) > 40, schema

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
        # every copied table was analyzed (planner statistics), partitions included
        assert (
            rows_of(
                dst,
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND n.nspname IN ('public', 'sales')"
                " AND c.reltuples > 0 AND NOT EXISTS (SELECT 1 FROM pg_stats s"
                " WHERE s.schemaname = n.nspname AND s.tablename = c.relname)",
            )
            == []
        )
        assert (
            dst.execute(
                "SELECT count(*) FROM pg_stats WHERE tablename IN ('every_type', 'events_2024')"
            ).fetchone()[0]
            > 0
        )
        # keys built as index + USING INDEX keep their options; exclusion constraints built as dumped
        assert dst.execute(
            "SELECT contype, condeferrable, condeferred FROM pg_constraint"
            " WHERE conname IN ('bookings_code_key', 'bookings_no_overlap', 'bookings_pkey')"
            " ORDER BY conname"
        ).fetchall() == [("u", True, True), ("x", False, False), ("p", False, False)]
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
    with pair.dst() as dst:  # and the schema: an index missing, a check changed, a trigger added
        dst.execute("ALTER TABLE u ADD CONSTRAINT u_small CHECK (id < 100)")
        dst.execute(
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'"
        )
        dst.execute("CREATE TRIGGER audit BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()")
    with pair.src() as src:
        src.execute("ALTER TABLE u ADD CONSTRAINT u_small CHECK (id < 1000)")
        src.execute("CREATE INDEX t_v ON t (v)")
    res = pgmigrator("verify", "--schema", "--json", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 1
    found = {(d["kind"], d["name"]): d for d in json.loads(res.stdout)["schema"]["differences"]}
    assert {k: d["status"] for k, d in found.items()} == {
        ("TABLE", "u"): "differs",  # (pg_dump writes a table's checks in its CREATE TABLE)
        ("FUNCTION", "f()"): "extra",
        ("INDEX", "t_v"): "missing",
        ("TRIGGER", "t audit"): "extra",
    }
    assert found[("TABLE", "u")]["detail"] == (
        "source: CONSTRAINT u_small CHECK ((id < 1000)) / "
        "destination: CONSTRAINT u_small CHECK ((id < 100))"
    )
    assert (
        by_table["public.t"]["status"] == "differs"
        and by_table["public.t"]["detail"] == "same row count, different contents"
    )
    assert by_table["public.u"]["status"] == "differs" and by_table["public.u"]["dest_rows"] == 9


def test_verify_checks_large_tables_in_key_ranges_and_names_the_one_that_differs(
    pair: Pair,
) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, v text);"
            "INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 4000) g; ANALYZE big;"
            "CREATE TABLE keyless (v text); INSERT INTO keyless SELECT 'k' FROM generate_series(1, 4000);"
            "ANALYZE keyless"
        )
    res = pgmigrator(
        "clone", "--source", pair.source, "--dest", pair.dest, "--keyless-tables", "full"
    )
    assert res.returncode == 0, res.stderr
    src, dst = Target(pair.source, "source"), Target(pair.dest, "destination")
    checks = {c.table: c for c in verify(src, dst, chunk_rows=1000, sample=True)}
    assert checks["public.big"].status == checks["public.keyless"].status == "ok"
    with pair.dst() as conn:
        conn.execute("UPDATE big SET v = 'changed' WHERE id = 2500")
        conn.execute("INSERT INTO big VALUES (9999, 'beyond the source keys')")
        conn.execute("DELETE FROM keyless WHERE ctid = '(0,1)'")
    checks = {c.table: c for c in verify(src, dst, chunk_rows=1000)}
    big = checks["public.big"]
    assert (big.status, big.source_rows, big.dest_rows) == ("differs", 4000, 4001)
    # four ranges of 1000 keys: the changed row's and the open-ended last one
    assert big.detail == "row count 4000 vs 4001 (id in [2001, 3001), id >= 3001)", big.detail
    assert checks["public.keyless"].detail == "row count 4000 vs 3999"  # whole: no key to split by


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
