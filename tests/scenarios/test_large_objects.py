"""Journey: a database with large objects, which logical replication does not carry.

The clone copies them (contents of any size, owner, privileges, comment); verify compares them;
changes made while ``follow`` streams reach the destination at the switchover.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import psycopg

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_streaming

# Every large object as the tests compare them: oid, owner, privileges, comment, contents' digest.
_OBJECTS = (
    "SELECT oid::bigint, pg_get_userbyid(lomowner), lomacl::text,"
    " obj_description(oid, 'pg_largeobject'), md5(lo_get(oid)), length(lo_get(oid))"
    " FROM pg_largeobject_metadata ORDER BY 1"
)
BIG = 700_000  # bytes: more than two of the pieces the copy reads at a time


def _objects(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(_OBJECTS).fetchall()


def _make_source(pair: Pair, p: str) -> None:
    with pair.src() as conn:
        conn.execute(
            f"CREATE ROLE {p}_owner NOLOGIN; CREATE ROLE {p}_rw NOLOGIN;"
            " CREATE TABLE docs (id int PRIMARY KEY, body oid)"
        )
        conn.execute(
            "INSERT INTO docs VALUES (1, lo_from_bytea(0, 'hello')),"
            " (2, lo_from_bytea(0, decode(repeat(md5('x'), %s), 'hex'))),"
            " (3, lo_create(0)), (4, lo_from_bytea(0, 'owned'))",
            (BIG // 16,),
        )
        one, four = (
            conn.execute("SELECT body FROM docs WHERE id = %s", (i,)).fetchone()[0] for i in (1, 4)
        )
        conn.execute(f"COMMENT ON LARGE OBJECT {one} IS 'the greeting'")
        conn.execute(
            f"ALTER LARGE OBJECT {four} OWNER TO {p}_owner;"
            f" GRANT SELECT ON LARGE OBJECT {four} TO PUBLIC;"
            f" GRANT UPDATE ON LARGE OBJECT {four} TO {p}_rw WITH GRANT OPTION"
        )
    with pair.dest_cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {p}_owner NOLOGIN; CREATE ROLE {p}_rw NOLOGIN")


def test_clone_copies_large_objects_and_switchover_brings_them_up_to_date(
    pair: Pair, prefix: str, tmp_path: Path
) -> None:
    _make_source(pair, prefix)
    args = ("--source", pair.source, "--dest", pair.dest)
    checks = {c["name"]: c for c in json.loads(pgmigrator("preflight", *args, "--json").stdout)}
    assert checks["large objects"]["status"] == "warning"
    assert "4 large object(s): copied by the clone" in checks["large objects"]["detail"]

    proc = start_pgmigrator("clone", "--follow", *args)
    try:
        wait_streaming(pair, proc)
        with pair.src() as s, pair.dst() as d:
            source = _objects(s)
            assert _objects(d) == source
        assert [row[5] for row in source] == [5, BIG, 0, 5]
        res = pgmigrator("verify", *args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "(large objects)  ok" in res.stdout

        # While the follower streams: one object rewritten, one unlinked, one created; and the
        # destination's own object (an oid the source never had) must be left alone.
        with pair.src() as conn:
            conn.execute("SELECT lo_put(body, 1, 'ELL') FROM docs WHERE id = 1")
            conn.execute("SELECT lo_unlink(body) FROM docs WHERE id = 3")
            conn.execute("DELETE FROM docs WHERE id = 3")
            conn.execute("INSERT INTO docs VALUES (5, lo_from_bytea(0, 'new'))")
        with pair.dst() as conn:
            own = conn.execute("SELECT lo_from_bytea(0, 'the destination''s')").fetchone()[0]
        res = pgmigrator("verify", *args)
        assert res.returncode == 1
        assert "(large objects)  differs" in res.stdout
        assert "2 missing or different" in res.stdout and "2 on the destination only" in res.stdout

        report = tmp_path / "cutover.json"
        res = pgmigrator("switchover", *args, "--report", str(report), "--timeout", "60s")
        assert res.returncode == 0, res.stdout + res.stderr
        done = json.loads(report.read_text())
        assert (
            done["large_objects"].startswith("2 copied") and "1 unlinked" in done["large_objects"]
        )
        assert any(
            v["table"] == "(large objects)" and v["status"] == "ok" for v in done["verification"]
        )
        with pair.src() as s, pair.dst() as d:
            theirs, ours = _objects(s), _objects(d)
        assert [row for row in ours if row[0] != own] == theirs
        assert [row[4] for row in ours if row[0] == own] == [_md5(b"the destination's")]
    finally:
        _stop(proc)
        with pair.src() as conn:
            conn.execute(f'ALTER DATABASE "{pair.dbname}" RESET default_transaction_read_only')


def test_clone_refuses_to_overwrite_or_read_what_it_may_not(pair: Pair, prefix: str) -> None:
    _make_source(pair, prefix)
    with pair.src() as conn:
        taken = conn.execute("SELECT body FROM docs WHERE id = 1").fetchone()[0]
    with pair.dst() as conn:
        conn.execute("SELECT lo_from_bytea(%s, 'mine')", (taken,))
    args = ("--source", pair.source, "--dest", pair.dest)

    res = pgmigrator("clone", *args)
    assert res.returncode == 1
    assert f"already has large object(s) with the source's oids: {taken}" in res.stderr
    assert "--drop-if-exists" in res.stderr
    with pair.dst() as conn:
        assert conn.execute("SELECT to_regclass('pgmigrator.pipelines')").fetchone()[0] is None
    with pair.src() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0

    # Left out, the destination's object stays as it is; verify compares them unless told not to.
    res = pgmigrator("clone", *args, "--no-large-objects")
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        assert _objects(conn) == [(taken, "postgres", None, None, _md5(b"mine"), 4)]
    assert pgmigrator("verify", *args).returncode == 1
    assert pgmigrator("verify", *args, "--no-large-objects").returncode == 0

    assert pgmigrator("cleanup", *args).returncode == 0
    res = pgmigrator("clone", *args, "--drop-if-exists")
    assert res.returncode == 0, res.stderr
    with pair.src() as s, pair.dst() as d:
        assert _objects(d) == _objects(s)

    # A source user that may not read an object: preflight names it before any clone starts.
    reader = f"{prefix}_reader"
    with pair.src() as conn:
        conn.execute(f"CREATE ROLE {reader} LOGIN PASSWORD 'pw'")
        hidden = conn.execute("SELECT body FROM docs WHERE id = 2").fetchone()[0]
    dsn = pair.source_cluster.dsn(pair.dbname, user=reader, password="pw")
    res = pgmigrator("preflight", "--source", dsn, "--dest", pair.dest, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["large objects"]
    assert check["status"] == "blocker"
    assert "may not read 3 large object(s)" in check["detail"] and str(hidden) in check["detail"]
    assert "GRANT SELECT ON LARGE OBJECT" in check["hint"]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
