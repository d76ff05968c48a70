"""Journey: an extension whose configuration table holds rows the user added (as PostGIS's
``spatial_ref_sys`` holds custom projections): the clone copies them, the switchover the later ones.

The extension is a test one, installed into the server's extension directory for this module
(skipped when that directory is not writable) and removed afterwards.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmigrator import devcluster
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_streaming

NAME = "pgm_test_config"
CONTROL = """comment = 'pgmigrator tests: an extension with a configuration table'
default_version = '1.0'
relocatable = false
schema = public
"""
# Rows 1-5 come with the extension; the user's own are above 1000, as its condition says.
SCRIPT = """
CREATE TABLE refs (id int PRIMARY KEY, label text);
INSERT INTO refs SELECT g, 'shipped ' || g FROM generate_series(1, 5) g;
SELECT pg_catalog.pg_extension_config_dump('refs', 'WHERE id > 1000');
"""


@pytest.fixture(scope="module")
def extension() -> Iterator[str]:
    pg_config = devcluster.find_bindir() / "pg_config"
    share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True)
    folder = Path(share.stdout.strip()) / "extension"
    files = [folder / f"{NAME}.control", folder / f"{NAME}--1.0.sql"]
    try:
        files[0].write_text(CONTROL)
        files[1].write_text(SCRIPT)
    except OSError as exc:
        pytest.skip(f"cannot install a test extension into {folder}: {exc}")
    try:
        yield NAME
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def _rows(conn: object) -> list[tuple[int, str]]:
    return conn.execute("SELECT id, label FROM refs ORDER BY id").fetchall()  # type: ignore[attr-defined,no-any-return]


def test_user_rows_of_a_configuration_table_are_copied_then_kept_current(
    pair: Pair, extension: str, tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute(f"CREATE EXTENSION {extension}")
        conn.execute("INSERT INTO refs VALUES (1001, 'mine'), (1002, 'mine too')")
        conn.execute("UPDATE refs SET label = 'edited' WHERE id = 2")  # not a user row: stays
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    args = ("--source", pair.source, "--dest", pair.dest)
    checks = {c["name"]: c for c in json.loads(pgmigrator("preflight", *args, "--json").stdout)}
    check = checks["extension configuration tables"]
    assert check["status"] == "warning", check
    assert f"{extension}: public.refs (2 user row(s))" in check["detail"]

    proc = start_pgmigrator("clone", "--follow", *args)
    try:
        wait_streaming(pair, proc)
        with pair.dst() as conn:  # the extension's own rows as its script made them
            assert _rows(conn) == [
                *((i, f"shipped {i}") for i in range(1, 6)),
                (1001, "mine"),
                (1002, "mine too"),
            ]
        line = f"{extension}: public.refs"
        res = pgmigrator("verify", *args)
        assert res.returncode == 0, res.stdout
        assert any(ln.startswith(line) and " ok " in ln for ln in res.stdout.splitlines())
        with pair.src() as conn:  # not streamed: the switchover carries them
            conn.execute("DELETE FROM refs WHERE id = 1001; INSERT INTO refs VALUES (1003, 'new')")
        res = pgmigrator("verify", *args)
        assert res.returncode == 1
        assert any(
            ln.startswith(line) and "user rows differ" in ln for ln in res.stdout.splitlines()
        )
        report = tmp_path / "cutover.json"
        res = pgmigrator("switchover", *args, "--report", str(report))
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(report.read_text())["extension_rows"] == [
            f"{extension}: public.refs: 2 row(s)"
        ]
        with pair.dst() as conn:
            assert [r for r in _rows(conn) if r[0] > 1000] == [(1002, "mine too"), (1003, "new")]
        verified = json.loads(report.read_text())["verification"]
        assert [v["status"] for v in verified if v["table"] == line] == ["ok"]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
