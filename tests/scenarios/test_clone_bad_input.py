"""Journey: an operator gets clear errors (and nothing half-done) for every bad input to clone."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgmigrator import devcluster
from pgmigrator.dsn import Target
from pgmigrator.errors import PreflightError
from pgmigrator.source import catalog, slots
from pgmigrator.source.blockers import SlotWait
from tests.conftest import Pair, pgmigrator, wait_for


def _assert_clean_failure(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    assert "\nerror: " in "\n" + res.stderr, res.stderr
    assert devcluster.PASSWORD not in res.stdout + res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def _one_table(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g"
        )


def test_unreachable_wrong_password_missing_database(pair: Pair) -> None:
    _one_table(pair)
    closed = f"host=127.0.0.1 port={devcluster.free_port()} user=postgres password={devcluster.PASSWORD} dbname=x connect_timeout=3"
    _assert_clean_failure(
        pgmigrator("clone", "--source", closed, "--dest", pair.dest), "cannot connect", "hint:"
    )
    wrong = pair.source_cluster.dsn(pair.dbname, password="not-the-password")
    _assert_clean_failure(
        pgmigrator("clone", "--source", wrong, "--dest", pair.dest), "authentication failed"
    )
    missing = pair.dest_cluster.dsn("no_such_db")
    _assert_clean_failure(
        pgmigrator("clone", "--source", pair.source, "--dest", missing), "does not exist"
    )
    with pair.src() as conn:  # nothing was left behind on the source
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0


def test_destination_with_rows_is_refused_unless_drop_if_exists(pair: Pair) -> None:
    _one_table(pair)
    with pair.dst() as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'keep me')"
        )
    _assert_clean_failure(
        pgmigrator("clone", "--source", pair.source, "--dest", pair.dest),
        "public.t (holds rows)",
        "--drop-if-exists",
    )
    with pair.dst() as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("keep me",)]
    with pair.src() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--drop-if-exists")
    assert res.returncode == 0, res.stderr
    assert pgmigrator("verify", "--source", pair.source, "--dest", pair.dest).returncode == 0


def test_pattern_matching_nothing_and_bad_config(pair: Pair, tmp_path: Path) -> None:
    _one_table(pair)
    _assert_clean_failure(
        pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--tables", "nope.*"),
        "matching no table on the source: nope.*",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: -3\nslot: Bad-Slot\nsurprise: 1\n")
    res = pgmigrator("clone", "--config", str(bad), "--source", pair.source, "--dest", pair.dest)
    _assert_clean_failure(res, "workers:", "slot:", "surprise: unknown setting")
    assert res.returncode == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("workers: [1\n")
    _assert_clean_failure(pgmigrator("config", "check", str(broken)), "not valid YAML", "line")


def test_pg_dump_older_than_source(pair: Pair, tmp_path: Path) -> None:
    _one_table(pair)
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.3'\n")
    fake.chmod(0o755)
    res = pgmigrator(
        "clone", "--source", pair.source, "--dest", pair.dest, env={"PGMIGRATOR_PG_DUMP": str(fake)}
    )
    _assert_clean_failure(res, "pg_dump 12", "older than the source server")


def test_role_without_replication_privilege(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute("DROP ROLE IF EXISTS pgm_norepl")
        conn.execute("CREATE ROLE pgm_norepl LOGIN PASSWORD 'pw'")
        conn.execute(
            f'GRANT ALL ON DATABASE "{pair.dbname}" TO pgm_norepl; GRANT ALL ON SCHEMA public TO pgm_norepl'
        )
    src = pair.source_cluster.dsn(pair.dbname, user="pgm_norepl", password="pw")
    with pair.source_cluster.connect(pair.dbname) as conn:
        conn.execute("SET ROLE pgm_norepl; CREATE TABLE t (id int PRIMARY KEY); RESET ROLE")
    try:
        res = pgmigrator("preflight", "--source", src, "--dest", pair.dest)
        assert res.returncode == 1
        assert "BLOCKER" in res.stdout and "neither REPLICATION nor superuser" in res.stdout
        _assert_clean_failure(
            pgmigrator("clone", "--source", src, "--dest", pair.dest),
            "'pgm_norepl' has neither REPLICATION nor superuser",
            'ALTER ROLE "pgm_norepl" REPLICATION',
        )
        with pair.src() as conn:  # refused before the publication was created
            assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
    finally:
        with pair.src() as conn:
            conn.execute("DROP TABLE t; DROP OWNED BY pgm_norepl; DROP ROLE pgm_norepl")


def test_row_level_security_that_would_hide_rows(pair: Pair, prefix: str) -> None:
    """A query row-level security filters returns fewer rows without an error: before sessions
    set row_security = off, a clone by a table owner under FORCE ROW LEVEL SECURITY copied none
    of them, and verify, filtered the same way, found both sides equal."""
    p = prefix
    with pair.src() as conn:
        conn.execute(
            f"CREATE ROLE {p}_owner LOGIN REPLICATION PASSWORD 'pw';"
            " CREATE TABLE t (id int PRIMARY KEY, tenant text);"
            " INSERT INTO t SELECT g, 'a' || g % 3 FROM generate_series(1, 300) g;"
            " ALTER TABLE t ENABLE ROW LEVEL SECURITY; ALTER TABLE t FORCE ROW LEVEL SECURITY;"
            " CREATE POLICY mine ON t USING (tenant = current_user);"
            f" ALTER TABLE t OWNER TO {p}_owner; GRANT CREATE ON DATABASE {pair.dbname} TO {p}_owner"
        )
    source = pair.source_cluster.dsn(pair.dbname, user=f"{p}_owner", password="pw")
    res = pgmigrator("preflight", "--source", source, "--dest", pair.dest, "--json")
    found = [c for c in json.loads(res.stdout) if c["name"] == "row-level security"]
    assert [(c["side"], c["status"]) for c in found] == [("source", "blocker")], found
    _assert_clean_failure(
        pgmigrator(
            "clone", "--source", source, "--dest", pair.dest, "--no-owner", "--no-privileges"
        ),
        f"row-level security would restrict the source's user '{p}_owner' on: t",
        f'ALTER ROLE "{p}_owner" BYPASSRLS on the source',
    )
    with pair.src() as conn:  # refused before anything was created
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0

    # The destination's user is no superuser either: it would not own the copied table.
    with pair.dest_cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {p}_dest LOGIN PASSWORD 'pw' CREATEROLE")
        conn.execute(f"GRANT CREATE ON DATABASE {pair.dbname} TO {p}_dest")
    dest = pair.dest_cluster.dsn(pair.dbname, user=f"{p}_dest", password="pw")
    res = pgmigrator("preflight", "--source", pair.source, "--dest", dest, "--json")
    found = [c for c in json.loads(res.stdout) if c["name"] == "row-level security"]
    assert [(c["side"], c["status"]) for c in found] == [("destination", "blocker")], found
    assert f"the destination's user '{p}_dest' on: t" in found[0]["detail"]

    # Once the source's user bypasses it, the verification reads every row, and says so when
    # it may not (instead of comparing what a policy let through).
    with pair.src() as conn:
        conn.execute(f"ALTER ROLE {p}_owner BYPASSRLS")
    res = pgmigrator(
        "clone", "--source", source, "--dest", pair.dest, "--no-owner", "--no-privileges"
    )
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    with pair.src() as conn:
        conn.execute(f"ALTER ROLE {p}_owner NOBYPASSRLS")
    res = pgmigrator("verify", "--source", source, "--dest", pair.dest)
    assert res.returncode == 1
    assert 'query would be affected by row-level security policy for table "t"' in res.stdout


def test_a_forgotten_prepared_transaction_is_named_while_the_slot_waits(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """A logical slot's creation waits for every transaction holding an xid, in every database:
    a prepared transaction nobody commits holds a clone in its schema phase silently."""
    with pair.src() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    holder = pair.src()
    holder.autocommit = False
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("PREPARE TRANSACTION 'pgm_forgotten'")
    holder.close()  # prepared: it outlives its session
    try:
        res = pgmigrator("preflight", "--source", pair.source, "--dest", pair.dest, "--json")
        check = {c["name"]: c for c in json.loads(res.stdout)}["open transactions"]
        assert check["status"] == "warning", check
        assert (
            "creating the slot waits for: prepared transaction 'pgm_forgotten'" in check["detail"]
        )
        assert "ROLLBACK PREPARED" in check["hint"]

        source = Target(pair.source, "source")
        session = slots.ReplicationSession(source)
        made: list[slots.ExportedSlot] = []
        creating = threading.Thread(target=lambda: made.append(session.create_slot("pgm_waits")))
        with caplog.at_level(logging.WARNING, logger="pgmigrator"), SlotWait(source, every_s=0.2):
            creating.start()
            wait_for(
                lambda: any(
                    "pgm_forgotten" in str(getattr(r, "fields", "")) for r in caplog.records
                ),
                timeout=30,
                what="the warning naming the prepared transaction",
            )
            assert not made  # still waiting
            with pair.source_cluster.connect(pair.dbname) as conn:
                conn.execute("ROLLBACK PREPARED 'pgm_forgotten'")
            creating.join(30)
        assert [s.name for s in made] == ["pgm_waits"]
        session.close()
    finally:
        with pair.source_cluster.connect(pair.dbname) as conn:
            if conn.execute(
                "SELECT 1 FROM pg_prepared_xacts WHERE gid = 'pgm_forgotten'"
            ).fetchone():
                conn.execute("ROLLBACK PREPARED 'pgm_forgotten'")


def test_a_foreign_key_to_a_table_left_out_is_refused_before_the_copy(pair: Pair) -> None:
    """pg_dump writes the foreign keys of the tables it dumps, to whatever they reference: one
    to a table left out failed at the very end, after the whole copy, every retry alike."""
    with pair.src() as conn:
        conn.execute(
            'CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE "Child" (id int PRIMARY KEY,'
            " p int CONSTRAINT child_parent REFERENCES parent);"
            ' INSERT INTO parent VALUES (1); INSERT INTO "Child" VALUES (1, 1)'
        )
    args = ("--source", pair.source, "--dest", pair.dest, "--tables", "public.Child")
    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["foreign keys"]
    assert check["status"] == "blocker", check
    expected = 'public."Child" child_parent -> public.parent'
    assert check["detail"].endswith(expected), check
    _assert_clean_failure(pgmigrator("clone", *args), expected, "--tables / --exclude")
    with pair.src() as conn:  # refused before anything was created
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    with pair.dst() as conn:  # the referenced table prepared on the destination: allowed
        conn.execute("CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1)")
    res = pgmigrator("clone", *args)
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        assert conn.execute('SELECT count(*) FROM "Child"').fetchone()[0] == 1


@pytest.fixture(scope="module")
def replica_level_cluster() -> Iterator[devcluster.Cluster]:
    base = Path(tempfile.mkdtemp(prefix="pgm-replica-", dir="/tmp"))
    cluster = devcluster.Cluster("plain", base, settings={"wal_level": "replica"})
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_wal_level_not_logical(replica_level_cluster: devcluster.Cluster, pair: Pair) -> None:
    with replica_level_cluster.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    source = replica_level_cluster.dsn()
    _assert_clean_failure(
        pgmigrator("clone", "--source", source, "--dest", pair.dest),
        "wal_level",
        "wal_level = logical",
    )
    res = pgmigrator("preflight", "--source", source, "--dest", pair.dest, "--json")
    assert res.returncode == 1
    assert '"name": "wal_level"' in res.stdout and '"status": "blocker"' in res.stdout


def test_preflight_flags_a_destination_encoding_or_collation_that_differs(pair: Pair) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'Grüße, 東京')")
    name = f"{pair.dbname}_latin1"
    with pair.dest_cluster.connect() as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
            " TEMPLATE template0"
        )
    try:
        res = pgmigrator(
            "preflight", "--source", pair.source, "--dest", pair.dest_cluster.dsn(name), "--json"
        )
        assert res.returncode == 1, res.stdout + res.stderr
        checks = {c["name"]: c for c in json.loads(res.stdout)}
        assert checks["encoding"]["status"] == "blocker", checks["encoding"]
        assert "destination LATIN1" in checks["encoding"]["detail"]
        assert "ENCODING 'UTF8'" in checks["encoding"]["hint"]
        assert "destination C/C" in checks["collation"]["detail"]  # a warning when they differ
        latin1 = pair.dest_cluster.dsn(name)
        res = pgmigrator("clone", "--source", pair.source, "--dest", latin1)  # refused up front
        _assert_clean_failure(res, "source UTF8, destination LATIN1: text the destination's")
        with psycopg.connect(latin1) as conn:  # nothing created there
            assert conn.execute("SELECT to_regclass('pgmigrator.pipelines')").fetchone() == (None,)
        res = pgmigrator("preflight", "--source", pair.source, "--dest", pair.dest, "--json")
        checks = {c["name"]: c for c in json.loads(res.stdout)}
        assert checks["encoding"]["status"] == "ok", checks["encoding"]  # same encoding
    finally:
        with pair.dest_cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")


def _identity(conn: psycopg.Connection, table: str) -> str:
    return str(
        conn.execute(
            "SELECT relreplident FROM pg_class WHERE oid = %s::regclass", (table,)
        ).fetchone()[0]  # type: ignore[index]
    )


def test_table_without_replica_identity_is_refused_unless_made_full(pair: Pair) -> None:
    _one_table(pair)
    with pair.src() as conn:
        conn.execute("CREATE TABLE logs (at int, msg text); INSERT INTO logs VALUES (1, 'a')")
    res = pgmigrator("preflight", "--source", pair.source, "--dest", pair.dest, "--json")
    assert res.returncode == 1
    check = {c["name"]: c for c in json.loads(res.stdout)}["replica identity"]
    assert check["status"] == "blocker" and "public.logs" in check["detail"], check
    _assert_clean_failure(
        pgmigrator("clone", "--source", pair.source, "--dest", pair.dest),
        "public.logs",
        "refuse UPDATE and DELETE",
        "--keyless-tables full",
    )
    with pair.src() as conn:  # refused before anything was created; the source still updates it
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        conn.execute("UPDATE logs SET msg = 'b'")
        assert _identity(conn, "logs") == "d"
    with pair.dst() as conn:  # nor on the destination
        assert conn.execute("SELECT to_regnamespace('pgmigrator')").fetchone()[0] is None
        assert conn.execute("SELECT to_regclass('public.t')").fetchone()[0] is None

    with pair.src() as conn:  # FULL by its owner's choice; and another keyless table
        conn.execute("CREATE TABLE mine (a int); ALTER TABLE mine REPLICA IDENTITY FULL")
        conn.execute("INSERT INTO mine VALUES (1)")
        conn.execute("CREATE TABLE shared (a int); INSERT INTO shared VALUES (1)")
    args = ("--source", pair.source, "--dest", pair.dest, "--keyless-tables", "full")
    assert pgmigrator("preflight", *args).returncode == 0
    res = pgmigrator("clone", *args)
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if "replica identity set to FULL" in ln]
    assert len(said) == 2 and "public.logs" in said[0] and "public.shared" in said[1], said
    with pair.src() as src, pair.dst() as dst:
        assert _identity(src, "logs") == _identity(dst, "logs") == "f"  # the dump carried it
        assert _identity(src, "t") == "d"  # a keyed table is left alone
        src.execute("UPDATE logs SET msg = 'c'")  # published and still writable
        src.execute("CREATE PUBLICATION analytics FOR TABLE shared")  # someone else's, since

    # cleanup gives the identities back where nothing else needs them
    res = pgmigrator("cleanup", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stderr
    assert "reset REPLICA IDENTITY of public.logs to DEFAULT on the source" in res.stdout
    assert "publication(s) analytics still hold it" in res.stdout
    with pair.src() as src, pair.dst() as dst:
        assert _identity(src, "logs") == _identity(dst, "logs") == "d"
        assert (_identity(src, "shared"), _identity(dst, "shared")) == ("f", "d")
        assert _identity(src, "mine") == _identity(dst, "mine") == "f"  # never ours


def test_replica_identity_change_waits_for_its_lock_at_most_the_timeout(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE logs (at int, msg text); INSERT INTO logs VALUES (1, 'a')")
    monkeypatch.setattr(slots, "KEYLESS_LOCK_TIMEOUT", "200ms")
    with pair.src() as holder, pair.src() as conn:
        tables = catalog.list_tables(conn)
        holder.execute("BEGIN; SELECT * FROM logs")  # a reader in a long transaction
        with pytest.raises(PreflightError, match=r"could not lock public\.logs within 200ms"):
            slots.prepare_keyless(conn, tables, "full")
        holder.execute("ROLLBACK")
        slots.prepare_keyless(conn, tables, "full")
        assert _identity(conn, "logs") == "f"


def _owner_and_reader(conn: psycopg.Connection) -> tuple[str, bool]:
    row = conn.execute(
        "SELECT tableowner, EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgm_reader')"
        " FROM pg_tables WHERE schemaname = 'app' AND tablename = 't'"
    ).fetchone()
    assert row is not None
    readable = (
        row[1]
        and conn.execute("SELECT has_table_privilege('pgm_reader', 'app.t', 'SELECT')").fetchone()[
            0
        ]
    )  # type: ignore[index]
    return str(row[0]), bool(readable)


def test_owners_and_grants_need_their_roles_on_the_destination(pair: Pair) -> None:
    roles = "CREATE ROLE pgm_owner NOLOGIN; CREATE ROLE pgm_reader NOLOGIN; CREATE ROLE pgm_coll"
    with pair.src() as conn:
        conn.execute(roles)
        conn.execute(
            "CREATE SCHEMA app AUTHORIZATION pgm_owner; CREATE TABLE app.t (id int PRIMARY KEY);"
            " INSERT INTO app.t SELECT generate_series(1, 10); ALTER TABLE app.t OWNER TO"
            " pgm_owner; GRANT SELECT ON app.t TO pgm_reader;"
            " CREATE COLLATION app.c (provider = libc, locale = 'C');"
            " ALTER COLLATION app.c OWNER TO pgm_coll"  # not a table: roles of any object
        )
    try:
        res = pgmigrator("preflight", "--source", pair.source, "--dest", pair.dest, "--json")
        check = {c["name"]: c for c in json.loads(res.stdout)}["roles"]
        assert res.returncode == 1 and check["status"] == "blocker", check
        assert "pgm_coll, pgm_owner, pgm_reader" in check["detail"]
        args = ("--source", pair.source, "--dest", pair.dest)
        _assert_clean_failure(
            pgmigrator("clone", *args),
            "lacks role(s)",
            "pgm_coll, pgm_owner, pgm_reader",
            "--no-owner",
        )
        with pair.src() as conn:  # refused before the slot
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        with pair.dst() as conn:  # and before the state schema
            assert conn.execute("SELECT to_regnamespace('pgmigrator')").fetchone()[0] is None

        # without owners only the grantee is needed (the owners, pgm_owner and pgm_coll, are not)
        res = pgmigrator("clone", *args, "--no-owner")
        assert res.returncode == 1 and "lacks role(s) the schema names" in res.stderr
        [said] = [ln for ln in res.stderr.splitlines() if "lacks role(s)" in ln]
        assert said.endswith(": pgm_reader"), said
        res = pgmigrator("clone", *args, "--no-owner", "--no-privileges")
        assert res.returncode == 0, res.stderr
        with pair.dst() as conn:
            assert _owner_and_reader(conn) == ("postgres", False)

        assert pgmigrator("cleanup", *args).returncode == 0
        with pair.dest_cluster.connect() as conn:  # the grantee is enough without owners
            conn.execute("CREATE ROLE pgm_reader NOLOGIN")
        res = pgmigrator("clone", *args, "--drop-if-exists", "--no-owner")
        assert res.returncode == 0, res.stderr
        with pair.dst() as conn:
            assert _owner_and_reader(conn) == ("postgres", True)

        assert pgmigrator("cleanup", *args).returncode == 0
        with pair.dest_cluster.connect() as conn:
            conn.execute("CREATE ROLE pgm_owner NOLOGIN; CREATE ROLE pgm_coll")
        res = pgmigrator("clone", *args, "--drop-if-exists")
        assert res.returncode == 0, res.stderr
        with pair.dst() as conn:
            assert _owner_and_reader(conn) == ("pgm_owner", True)
            assert conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'app'"
            ).fetchone() == ("pgm_owner",)
    finally:
        for cluster in (pair.source_cluster, pair.dest_cluster):
            with cluster.connect(pair.dbname) as conn:
                here = ", ".join(  # (in one statement: one role's objects hold another's)
                    r for r in ("pgm_owner", "pgm_reader", "pgm_coll")
                    if conn.execute("SELECT to_regrole(%s)", (r,)).fetchone()[0]
                )  # fmt: skip
                if here:
                    conn.execute(f"DROP OWNED BY {here}; DROP ROLE {here}")


def _tablespace_dir() -> Path:
    location = Path(tempfile.mkdtemp(prefix="pgm-ts-", dir="/tmp"))
    location.chmod(0o755)
    if os.geteuid() == 0:  # the server's OS user owns it
        shutil.chown(location, "postgres", "postgres")
    return location


@pytest.fixture
def tablespaces(pair: Pair) -> Iterator[tuple[str, Path]]:
    """A tablespace name, created on the source; the test may create it on the destination too
    (in the yielded directory)."""
    name, source_dir, dest_dir = "ts_" + pair.dbname, _tablespace_dir(), _tablespace_dir()
    with pair.source_cluster.connect() as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{source_dir}'")
    try:
        yield name, dest_dir
    finally:
        for cluster in (pair.source_cluster, pair.dest_cluster):
            with cluster.connect(pair.dbname) as conn:
                conn.execute("DROP TABLE IF EXISTS t")
            with cluster.connect() as conn:
                conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
        for path in (source_dir, dest_dir):
            shutil.rmtree(path, ignore_errors=True)


def _placement(conn: psycopg.Connection) -> dict[str, str | None]:
    rows = conn.execute(
        "SELECT c.relname, t.spcname FROM pg_class c LEFT JOIN pg_tablespace t"
        " ON t.oid = c.reltablespace WHERE c.relname IN ('t', 't_v', 't_pkey')"
    ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def test_tablespaces_the_destination_lacks(pair: Pair, tablespaces: tuple[str, Path]) -> None:
    ts, dest_dir = tablespaces
    with pair.src() as conn:
        conn.execute(
            f"CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE {ts};"
            f" CREATE INDEX t_v ON t (v) TABLESPACE {ts};"
            " INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 100) g"
        )
        placed = _placement(conn)
    assert placed == {"t": ts, "t_v": ts, "t_pkey": None}
    args = ("--source", pair.source, "--dest", pair.dest)
    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["tablespaces"]
    assert res.returncode == 1 and check["status"] == "blocker", check
    assert check["detail"] == f"the destination lacks tablespace(s) the schema uses: {ts}"
    _assert_clean_failure(pgmigrator("clone", *args), f"schema uses: {ts}", "--no-tablespaces")
    with pair.src() as conn:  # refused before the slot
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)

    res = pgmigrator("preflight", *args, "--no-tablespaces", "--json")
    assert res.returncode == 0, res.stdout
    res = pgmigrator("clone", *args, "--no-tablespaces")
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:  # the destination database's default tablespace
        assert _placement(conn) == {"t": None, "t_v": None, "t_pkey": None}
    res = pgmigrator("verify", *args, "--schema", "--no-tablespaces")
    assert res.returncode == 0, res.stdout + res.stderr
    res = pgmigrator("verify", *args, "--schema", "--json")  # with them: both objects differ
    assert res.returncode == 1
    differing = {d["name"] for d in json.loads(res.stdout)["schema"]["differences"]}
    assert differing == {"t", "t_v"}, res.stdout

    # the destination gets the tablespace: each object lands where it is on the source (the
    # key and the index are built apart, in parallel, each with its own placement)
    assert pgmigrator("cleanup", *args).returncode == 0
    with pair.dest_cluster.connect() as conn:
        conn.execute(f"CREATE TABLESPACE {ts} LOCATION '{dest_dir}'")
    res = pgmigrator("clone", *args, "--drop-if-exists")
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        assert _placement(conn) == placed
    res = pgmigrator("verify", *args, "--schema")
    assert res.returncode == 0, res.stdout + res.stderr


def test_pre_data_failure_leaves_the_source_as_it_was(pair: Pair) -> None:
    """Nothing recorded, nothing to resume: the slot (which would hold WAL), the publication and
    the replica identity the clone set are undone, and the retry needs no cleanup first."""
    with pair.src() as conn:
        conn.execute(
            "CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY); CREATE TABLE app.logs (m text);"
            " INSERT INTO app.t VALUES (1); INSERT INTO app.logs VALUES ('x')"
        )
    with pair.dst() as conn:
        conn.execute("CREATE SCHEMA app")  # pg_dump's CREATE SCHEMA app fails on it
    args = ("--source", pair.source, "--dest", pair.dest, "--keyless-tables", "full")
    _assert_clean_failure(pgmigrator("clone", *args), 'schema "app" already exists')
    with pair.src() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute(
            "SELECT relreplident FROM pg_class WHERE relname = 'logs'"
        ).fetchone() == ("d",)
    res = pgmigrator("clone", *args, "--drop-if-exists")
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        assert conn.execute("SELECT count(*) FROM app.logs").fetchone() == (1,)
