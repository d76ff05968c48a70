"""Test fixtures: real PostgreSQL clusters started by the suite, fresh databases per test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgmigrator import devcluster


@dataclass
class Pair:
    """A fresh source and destination database on the session's two clusters."""

    source_cluster: devcluster.Cluster
    dest_cluster: devcluster.Cluster
    dbname: str

    @property
    def source(self) -> str:
        return self.source_cluster.dsn(self.dbname)

    @property
    def dest(self) -> str:
        return self.dest_cluster.dsn(self.dbname)

    def src(self) -> psycopg.Connection:
        return self.source_cluster.connect(self.dbname)

    def dst(self) -> psycopg.Connection:
        return self.dest_cluster.connect(self.dbname)


@pytest.fixture(scope="session")
def clusters() -> Iterator[tuple[devcluster.Cluster, devcluster.Cluster]]:
    base = Path(tempfile.mkdtemp(prefix="pgm-test-", dir="/tmp"))
    source, dest = devcluster.start_pair(base)
    try:
        yield source, dest
    finally:
        source.destroy()
        dest.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _drop_everything(cluster: devcluster.Cluster, dbname: str) -> None:
    with cluster.connect() as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)
        ).fetchall():
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active",
                (slot,),
            )
            wait_for(
                lambda s=slot: (
                    not conn.execute(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (s,)
                    ).fetchone()[0]
                ),
                10,
            )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        for (origin,) in conn.execute("SELECT roname FROM pg_replication_origin").fetchall():
            conn.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
    cluster.drop_database(dbname)


@pytest.fixture
def pair(clusters: tuple[devcluster.Cluster, devcluster.Cluster]) -> Iterator[Pair]:
    source, dest = clusters
    dbname = "t_" + uuid.uuid4().hex[:10]
    source.create_database(dbname)
    dest.create_database(dbname)
    try:
        yield Pair(source, dest, dbname)
    finally:
        _drop_everything(source, dbname)
        _drop_everything(dest, dbname)


@pytest.fixture
def prefix(pair: Pair) -> Iterator[str]:
    """A prefix for this test's roles; they are dropped from both clusters afterwards."""
    p = "r" + uuid.uuid4().hex[:8]
    yield p
    for cluster in (pair.source_cluster, pair.dest_cluster):
        with cluster.connect(pair.dbname) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT quote_ident(rolname) FROM pg_roles WHERE rolname LIKE %s", (p + "%",)
                )
            ]
            if names:  # in one statement: one role's objects hold another's
                conn.execute(f"DROP OWNED BY {', '.join(names)}")
                conn.execute(f"DROP ROLE {', '.join(names)}")


def wait_for(
    condition: Callable[[], object],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pgmigrator(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process."""
    full_env = {**os.environ, "PGMIGRATOR_STATE_DIR": tempfile.gettempdir(), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pgmigrator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def start_pgmigrator(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PGMIGRATOR_STATE_DIR": tempfile.gettempdir(), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pgmigrator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )


def wait_streaming(
    pair: Pair, proc: subprocess.Popen[str] | None = None, timeout: float = 120
) -> None:
    """Wait until a follower streams: pipeline phase ``streaming`` and its slot active.

    The slot alone is not enough: it is also active while `clone` holds it to export its snapshot.
    """

    def streaming() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the follower exited: {proc.stderr.read() if proc.stderr else ''}"
            )
        with pair.dst() as conn:
            if conn.execute("SELECT to_regclass('pgmigrator.pipelines')").fetchone()[0] is None:
                return False
            phase = conn.execute("SELECT phase FROM pgmigrator.pipelines").fetchone()
        with pair.src() as conn:
            active = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE active AND database = current_database()"
            ).fetchone()[0]
        return bool(phase and phase[0] == "streaming" and active)

    wait_for(streaming, timeout=timeout, interval=0.1, what="the follower to stream")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end is killed with its process group."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
