"""Fault family: the destination's disk fills up (a tiny tmpfs tablespace; needs root).

During the copy the clone stops with a clear "disk full" error and a ``--resume`` hint; once
space is freed, ``clone --resume`` finishes and both sides are equal. While streaming, the
follower stops with the same clear error (nothing half-applied: the failed batch rolls back);
once space is freed, ``follow`` resumes from the replication origin and converges.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgmigrator import devcluster
from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_streaming
from tests.scenarios.faults.helpers import converge, load


@pytest.fixture
def tiny_tablespace(pair: Pair) -> Iterator[Path]:
    """The pair's destination database recreated on a 6 MB tmpfs; yields the mount point."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs for the disk-full case needs root")
    mount = Path(tempfile.mkdtemp(prefix="pgm-tiny-", dir="/tmp"))
    mount.chmod(0o755)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {res.stderr.strip()}")
    shutil.chown(mount, "postgres", "postgres")
    with (
        pair.dest_cluster.connect() as conn
    ):  # the dump's preamble resets default_tablespace: use the database's own
        conn.execute(f"CREATE TABLESPACE tiny LOCATION '{mount}'")
        conn.execute(f'DROP DATABASE "{pair.dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{pair.dbname}" TABLESPACE tiny')
    try:
        yield mount
    finally:
        with pair.dest_cluster.connect() as conn:
            conn.execute(f'DROP DATABASE "{pair.dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{pair.dbname}"')
            conn.execute("DROP TABLESPACE tiny")
        subprocess.run(["umount", str(mount)], check=False)


def _grow(mount: Path, size: str) -> None:
    """Free space the way an operator would: a bigger volume (tmpfs resizes in place)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def _assert_clean_failure(out: str, *needles: str) -> None:
    assert "Traceback" not in out and "internal error" not in out, out
    assert devcluster.PASSWORD not in out
    for needle in needles:
        assert needle in out, out


def test_disk_full_during_copy_then_resume(pair: Pair, tiny_tablespace: Path) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE fat (id int PRIMARY KEY, pad text)")
        conn.execute(
            "INSERT INTO fat SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g"
        )
        conn.execute("CREATE TABLE thin (id int PRIMARY KEY)")
        conn.execute("INSERT INTO thin SELECT generate_series(1, 100)")
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode != 0
    _assert_clean_failure(res.stderr, "\nerror: ", "disk full", "--resume")
    _grow(tiny_tablespace, "200M")
    res = pgmigrator("clone", "--source", pair.source, "--dest", pair.dest, "--resume")
    assert res.returncode == 0, res.stderr
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0 and "all equal" in res.stdout, res.stdout


def test_disk_full_while_streaming_then_follow_resumes(
    pair: Pair, tiny_tablespace: Path, procs: list[subprocess.Popen[str]]
) -> None:
    load(pair, rows=100)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    wait_streaming(pair, proc)
    with pair.src() as conn:  # far more than the destination's volume holds
        conn.execute("INSERT INTO hist (acct, delta) SELECT g, g FROM generate_series(1, 300000) g")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    _assert_clean_failure(err, "disk full")
    _grow(tiny_tablespace, "300M")
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    converge(pair, "space-freed", timeout=120)
