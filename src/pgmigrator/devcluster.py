"""Throwaway local PostgreSQL clusters for the demo, the test suite and the benchmarks.

Uses the installed server's ``initdb``/``pg_ctl`` (run as the ``postgres`` OS user when we are root,
since both refuse to run as root), ``wal_level=logical``, a free port on 127.0.0.1 and password
authentication over TCP (so that wrong-password cases can be exercised).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pgmigrator.errors import ToolMissing

PASSWORD = "pgm-secret"
SUPERUSER = "postgres"

DEFAULT_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "120",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "track_commit_timestamp": "on",
    "max_prepared_transactions": "8",  # (the tests leave one behind on purpose)
}


def find_bindir() -> Path:
    """Locate the PostgreSQL server binaries (newest major first); raise a helpful error if absent."""
    override = os.environ.get("PGMIGRATOR_PG_BINDIR")
    candidates = [override] if override else []
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    candidates += versions
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for cand in candidates:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    raise ToolMissing(
        "no PostgreSQL server binaries (initdb, pg_ctl) found",
        hint="install the server: `apt-get install postgresql` (Debian/Ubuntu), or set PGMIGRATOR_PG_BINDIR",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
        )
    return res  # type: ignore[no-any-return]


@dataclass
class Cluster:
    """One local cluster. ``dsn(db)`` gives a connection string with the superuser's password."""

    name: str
    base: Path
    port: int = 0
    bindir: Path = field(default_factory=find_bindir)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.base / self.name / "data"

    @property
    def logfile(self) -> Path:
        return self.base / self.name / "server.log"

    def dsn(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = PASSWORD
    ) -> str:
        parts = f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"
        return parts + (f" password={password}" if password else "")

    def init(self) -> None:
        home = self.base / self.name
        home.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(home, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            pwfile = home / "pwfile"
            pwfile.write_text(PASSWORD + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            _run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    SUPERUSER,
                    "-A",
                    "scram-sha-256",
                    "--auth-local=trust",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
            pwfile.unlink()
        self.port = self.port or free_port()
        conf = {
            **DEFAULT_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{home}'",
            **self.settings,
        }
        (self.datadir / "postgresql.auto.conf").write_text(
            "".join(f"{k} = {v}\n" for k, v in conf.items())
        )
        with (self.datadir / "pg_hba.conf").open("w") as hba:
            hba.write(
                "local all all trust\nlocal replication all trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n"
            )

    def start(self) -> None:
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            _run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"])

    def restart(self) -> None:
        _run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-m",
                "fast",
                "-w",
                "restart",
            ]
        )

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base / self.name, ignore_errors=True)

    def connect(
        self, dbname: str = "postgres", autocommit: bool = True
    ) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def create_database(self, dbname: str) -> str:
        with self.connect() as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname))
            )
        return self.dsn(dbname)

    def drop_database(self, dbname: str) -> None:
        with self.connect() as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(dbname)
                )
            )

    def pgbench(
        self, dbname: str, *args: str, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        cmd = [
            str(self.bindir / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            *args,
            dbname,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, check=True, timeout=timeout
        )


def start_pair(base: Path, settings: dict[str, str] | None = None) -> tuple[Cluster, Cluster]:
    """Start a source and a destination cluster under ``base`` (reusing data dirs when present)."""
    clusters = []
    for name in ("source", "dest"):
        cluster = Cluster(name, base, settings=dict(settings or {}))
        cluster.init()
        cluster.start()
        clusters.append(cluster)
    return clusters[0], clusters[1]


def wait_ready(cluster: Cluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with cluster.connect():
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
