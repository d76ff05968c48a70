"""Journey: migrating a database together with its roles (``clone --roles``).

Roles are cluster-wide, so every role here carries a per-test prefix and is dropped at the end
on both clusters.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import Pair, pgmigrator

_ROLE_ROW = (
    "SELECT rolname, rolsuper, rolinherit, rolcreatedb, rolcanlogin, rolconnlimit,"
    " rolvaliduntil, rolpassword, shobj_description(oid, 'pg_authid')"
    " FROM pg_authid WHERE rolname LIKE %s ORDER BY 1"
)
_MEMBERS = (
    "SELECT r.rolname, m.rolname, a.admin_option FROM pg_auth_members a"
    " JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member"
    " WHERE m.rolname LIKE %s ORDER BY 1, 2"
)
_SETTINGS = (
    "SELECT r.rolname, s.setdatabase <> 0, s.setconfig FROM pg_db_role_setting s"
    " JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname LIKE %s ORDER BY 1, 2"
)


def _source_schema(pair: Pair, p: str) -> None:
    with pair.src() as conn:
        conn.execute(
            f"CREATE ROLE {p}_owner NOLOGIN; COMMENT ON ROLE {p}_owner IS 'owns the app';"
            f" CREATE ROLE {p}_rw NOLOGIN;"
            f" CREATE ROLE {p}_app LOGIN PASSWORD 'app-secret' CONNECTION LIMIT 7"
            "   VALID UNTIL '2031-01-01 00:00:00+00';"
            f' ALTER ROLE {p}_app SET search_path = app, "$user", public;'
            f" ALTER ROLE {p}_app IN DATABASE {pair.dbname} SET work_mem = '8MB';"
            f" GRANT {p}_rw TO {p}_app; GRANT pg_read_all_stats TO {p}_app WITH ADMIN OPTION;"
            f" CREATE ROLE {p}_other LOGIN;"  # involved in nothing here: not copied
            f" CREATE ROLE {p}_auditor NOLOGIN CREATEDB;"  # exists on both sides already
            f" CREATE SCHEMA app AUTHORIZATION {p}_owner;"
            " CREATE TABLE app.t (id int PRIMARY KEY, v text);"
            " INSERT INTO app.t SELECT i, 'v' || i FROM generate_series(1, 50) i;"
            f" ALTER TABLE app.t OWNER TO {p}_owner; GRANT USAGE ON SCHEMA app TO {p}_rw;"
            f" GRANT SELECT, INSERT ON app.t TO {p}_rw; GRANT SELECT ON app.t TO {p}_auditor"
        )
    with pair.dest_cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {p}_auditor NOLOGIN NOCREATEDB")


def test_clone_creates_the_roles_the_database_involves(pair: Pair, prefix: str) -> None:
    p = prefix
    _source_schema(pair, p)
    args = ("--source", pair.source, "--dest", pair.dest)

    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["roles"]
    assert check["status"] == "blocker" and "--roles" in check["hint"], check
    res = pgmigrator("preflight", *args, "--roles", "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["roles"]
    assert check["status"] == "ok", check
    assert f"3 role(s) to create: {p}_app, {p}_owner, {p}_rw" in check["detail"], check

    res = pgmigrator("clone", *args, "--roles")
    assert res.returncode == 0, res.stderr
    assert "app-secret" not in res.stderr and "SCRAM" not in res.stderr
    like = (p + "%",)
    with pair.src() as src, pair.dst() as dst:
        created = [r for r in src.execute(_ROLE_ROW, like) if r[0] != f"{p}_other"]
        on_dest = dst.execute(_ROLE_ROW, like).fetchall()
        auditor = [r for r in on_dest if r[0] == f"{p}_auditor"]
        assert [r for r in on_dest if r[0] != f"{p}_auditor"] == [
            r for r in created if r[0] != f"{p}_auditor"
        ]  # attributes, password hash and comment alike; p_other not created
        assert auditor and auditor[0][3] is False  # existing: left as it was (NOCREATEDB)
        assert dst.execute(_MEMBERS, like).fetchall() == [
            ("pg_read_all_stats", f"{p}_app", True),
            (f"{p}_rw", f"{p}_app", False),
        ]
        assert dst.execute(_SETTINGS, like).fetchall() == [
            (f"{p}_app", False, ['search_path=app, "$user", public']),
            (f"{p}_app", True, ["work_mem=8MB"]),
        ]
        assert dst.execute("SELECT tableowner FROM pg_tables WHERE tablename = 't'").fetchone() == (
            f"{p}_owner",
        )

    login = pair.dest_cluster.dsn(pair.dbname, user=f"{p}_app", password="app-secret")
    with psycopg.connect(login) as conn:  # the password came across; so did settings and grants
        row = conn.execute(
            "SELECT current_setting('search_path'), current_setting('work_mem'), count(*) FROM t"
        ).fetchone()
        assert row == ('app, "$user", public', "8MB", 50)


def test_roles_the_destination_user_may_not_create_are_refused_before_anything(
    pair: Pair, prefix: str
) -> None:
    p = prefix
    with pair.src() as conn:
        conn.execute(
            f"CREATE ROLE {p}_boss SUPERUSER NOLOGIN; CREATE ROLE {p}_reader NOLOGIN;"
            " CREATE TABLE t (id int PRIMARY KEY);"
            f" ALTER TABLE t OWNER TO {p}_boss; GRANT SELECT ON t TO {p}_reader"
        )
    with pair.dest_cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {p}_admin LOGIN CREATEROLE PASSWORD 'admin-pw'")
        conn.execute(f"GRANT ALL ON DATABASE {pair.dbname} TO {p}_admin")
    dest = pair.dest_cluster.dsn(pair.dbname, user=f"{p}_admin", password="admin-pw")
    args = ("--source", pair.source, "--dest", dest, "--roles")

    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["roles"]
    assert check["status"] == "blocker", check
    assert f"{p}_boss is SUPERUSER, which only a superuser may give" in check["detail"]

    res = pgmigrator("clone", *args)
    assert res.returncode == 1, res.stderr
    assert "cannot create the source's roles on the destination" in res.stderr
    assert "Traceback" not in res.stderr and "admin-pw" not in res.stderr
    with pair.dest_cluster.connect() as conn:  # nothing created: neither role nor state
        assert conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (p + "%",)
        ).fetchall() == [(f"{p}_admin",)]
    with pair.dst() as conn:
        assert conn.execute("SELECT to_regnamespace('pgmigrator')").fetchone() == (None,)
    with pair.src() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


def test_passwords_the_source_user_may_not_read_are_reported(pair: Pair, prefix: str) -> None:
    p = prefix
    with pair.src() as conn:
        conn.execute(
            f"CREATE ROLE {p}_repl LOGIN REPLICATION PASSWORD 'repl-pw';"  # not a superuser
            f" CREATE ROLE {p}_app LOGIN PASSWORD 'app-secret'; CREATE ROLE {p}_nopw NOLOGIN;"
            " CREATE TABLE t (id int PRIMARY KEY);"
            f" GRANT SELECT ON t TO {p}_app; GRANT SELECT ON t TO {p}_nopw"
        )
    source = pair.source_cluster.dsn(pair.dbname, user=f"{p}_repl", password="repl-pw")
    res = pgmigrator("preflight", "--source", source, "--dest", pair.dest, "--roles", "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["roles"]
    assert check["status"] == "warning", check
    assert check["detail"].endswith(f"without a password (unreadable): {p}_app"), check


def test_clone_copies_the_database_settings(pair: Pair, prefix: str) -> None:
    p, db = prefix, pair.dbname
    with pair.src() as conn:
        conn.execute(
            f'ALTER DATABASE {db} SET search_path = app, "$user", public;'
            f" ALTER DATABASE {db} SET statement_timeout = '5min';"
            f" ALTER DATABASE {db} SET default_transaction_read_only = off;"  # never copied
            f" CREATE ROLE {p}_gone NOLOGIN; ALTER ROLE {p}_gone IN DATABASE {db} SET work_mem = '4MB';"
            " CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY)"
        )
    with pair.dst() as conn:  # only on the destination: left alone
        conn.execute(f"ALTER DATABASE {db} SET work_mem = '7MB'")
    args = ("--source", pair.source, "--dest", pair.dest)
    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["database settings"]
    assert check["status"] == "warning", check
    assert check["detail"].startswith(
        f"4 setting(s), not all copied: role {p}_gone does not exist on the destination;"
        " default_transaction_read_only is not copied: a read-only default"
    ), check
    res = pgmigrator("clone", *args)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "database setting not copied" in line]
    assert len(warned) == 2 and "default_transaction_read_only=off" in warned[0], warned
    assert f"role {p}_gone in the database" in warned[1] and "does not exist" in warned[1]
    with pair.dst() as conn:
        config = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = 0"
            " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert config is not None and sorted(config[0]) == [
            'search_path=app, "$user", public',
            "statement_timeout=5min",
            "work_mem=7MB",
        ]
    res = pgmigrator("verify", *args, "--schema", "--json")  # the one not copied is missing
    assert res.returncode == 1
    assert json.loads(res.stdout)["schema"]["differences"] == [
        {
            "kind": "ROLE SETTING",
            "schema": "-",
            "name": f"{p}_gone work_mem",
            "status": "missing",
            "detail": "work_mem=4MB",
        }
    ], res.stdout
    with pair.dst() as conn:  # a new session of the application's gets them
        row = conn.execute(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'),"
            " to_regclass('t') IS NOT NULL"
        ).fetchone()
        assert row == ('app, "$user", public', "5min", True)


def test_clone_copies_the_database_privileges_and_comment(pair: Pair, prefix: str) -> None:
    p, db = prefix, pair.dbname
    with pair.src() as conn:
        conn.execute(
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;"
            f" CREATE ROLE {p}_app LOGIN PASSWORD 'app-pw'; CREATE ROLE {p}_ops NOLOGIN;"
            f" GRANT CONNECT ON DATABASE {db} TO {p}_app;"
            f" GRANT CREATE, TEMPORARY ON DATABASE {db} TO {p}_ops WITH GRANT OPTION;"
            f" COMMENT ON DATABASE {db} IS 'orders, since 2019'; CREATE TABLE t (id int PRIMARY KEY)"
        )
    with pair.dest_cluster.connect() as conn:  # a login the source's privileges keep out
        conn.execute(f"CREATE ROLE {p}_stranger LOGIN PASSWORD 'stranger-pw'")
    args = ("--source", pair.source, "--dest", pair.dest, "--roles")
    res = pgmigrator("preflight", *args, "--json")
    check = {c["name"]: c for c in json.loads(res.stdout)}["database privileges"]
    assert check["status"] == "ok", check
    assert check["detail"] == (
        "copied with the schema: REVOKE CREATE, CONNECT, TEMPORARY FROM PUBLIC;"
        f" GRANT CONNECT TO {p}_app; GRANT CREATE, TEMPORARY TO {p}_ops WITH GRANT OPTION; COMMENT"
    )

    res = pgmigrator("clone", *args)  # --roles: the grantees are created first
    assert res.returncode == 0, res.stderr
    with pair.dst() as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database'), has_database_privilege(%s, oid, 'CONNECT'),"
            " has_database_privilege(%s, oid, 'CONNECT'), has_database_privilege(%s, oid, 'CREATE WITH GRANT OPTION')"
            " FROM pg_database WHERE datname = current_database()",
            (f"{p}_stranger", f"{p}_app", f"{p}_ops"),
        ).fetchone()
    assert row == ("orders, since 2019", False, True, True)
    with psycopg.connect(pair.dest_cluster.dsn(db, user=f"{p}_app", password="app-pw")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (f"{p}_app",)
    stranger = pair.dest_cluster.dsn(db, user=f"{p}_stranger", password="stranger-pw")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(stranger)
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest, "--schema")
    assert res.returncode == 0, res.stdout

    with pair.dst() as conn:  # a difference the comparison must see
        conn.execute(f"GRANT CONNECT ON DATABASE {db} TO PUBLIC")
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest, "--schema", "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["schema"]["differences"] == [
        {
            "kind": "DATABASE PRIVILEGES",
            "schema": "-",
            "name": "PUBLIC",
            "status": "differs",
            "detail": "source: (nothing) / destination: CONNECT",
        }
    ], res.stdout
