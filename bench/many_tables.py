"""Many-tables benchmark: the per-table costs of clone, verify and a first follow, against pgcopydb.

A schema of ``--tables`` small tables (``--rows`` rows each, a primary key each), as a multi-tenant
database has. On two throwaway clusters, in one run: ``pgcopydb clone`` (when installed) and
``pgmigrator clone`` into separate destination databases, then ``pgmigrator verify``, then a
``pgmigrator follow`` catching up one source transaction that updates a row of every table (the
follower describes every table once). Prints seconds, per-table milliseconds and the
pgmigrator / pgcopydb ratio; results go to ``bench/results/many_tables-<timestamp>.json``.

Run: ``.venv/bin/python bench/many_tables.py [--tables 2000]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clone import PGMIGRATOR, BenchError, precompile, run_checked, uri, write_json

from pgmigrator import devcluster
from pgmigrator.devcluster import Cluster

DB, PGCOPYDB_DB = "many", "many_pgcopydb"
CATCH_UP_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tables", type=int, default=2000, help="tables in the schema (2000)")
    p.add_argument("--rows", type=int, default=10, help="rows per table (10)")
    return p.parse_args(argv)


def load(src: Cluster, tables: int, rows: int) -> None:
    with src.connect(DB) as conn:
        for first in range(0, tables, 200):
            conn.execute(
                "; ".join(
                    f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);"
                    f" INSERT INTO t{i} SELECT g, 'x' FROM generate_series(1, {rows}) g"
                    for i in range(first, min(tables, first + 200))
                )
            )


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    run_checked(cmd, env, log)
    return round(time.perf_counter() - started, 2)


def first_follow(
    src: Cluster, dst: Cluster, args: argparse.Namespace, env: dict[str, str]
) -> float:
    """Seconds for a running follower to apply one transaction touching every table."""
    cmd = [*PGMIGRATOR, "follow", "--source", src.dsn(DB), "--dest", dst.dsn(DB)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        with src.connect(DB) as conn:  # (the follower streams from the slot: no need to wait)
            started = time.perf_counter()
            conn.execute(
                "; ".join(f"UPDATE t{i} SET v = 'y' WHERE id = 1" for i in range(args.tables))
            )
        last = f"t{args.tables - 1}"
        while True:
            with dst.connect(DB) as conn:
                if conn.execute(f"SELECT v FROM {last} WHERE id = 1").fetchone() == ("y",):
                    return round(time.perf_counter() - started, 2)
            if proc.poll() is not None or time.perf_counter() - started > CATCH_UP_TIMEOUT_S:
                raise BenchError(f"follow did not catch up: {proc.communicate()[1][-500:]}")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    src, dst = devcluster.start_pair(work, {"max_locks_per_transaction": "256"})
    try:
        env = {
            **os.environ,
            "PATH": f"{src.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PGMIGRATOR_STATE_DIR": str(work / "state"),
        }
        src.create_database(DB)
        dst.create_database(DB)
        load(src, args.tables, args.rows)
        out: dict[str, Any] = {}
        pgcopydb = shutil.which("pgcopydb")
        if pgcopydb:
            dst.create_database(PGCOPYDB_DB)
            out["pgcopydb_clone_s"] = timed(
                [pgcopydb, "clone", "--source", uri(src, DB), "--target", uri(dst, PGCOPYDB_DB),
                 "--dir", str(work / "pgcopydb"), "--table-jobs", "2", "--index-jobs", "2",
                 "--no-owner", "--no-acl"],
                env, work / "pgcopydb.log",
            )  # fmt: skip
        dsns = ["--source", src.dsn(DB), "--dest", dst.dsn(DB)]
        out["clone_s"] = timed([*PGMIGRATOR, "clone", *dsns], env, work / "clone.log")
        out["verify_s"] = timed([*PGMIGRATOR, "verify", *dsns], env, work / "verify.log")
        out["first_follow_s"] = first_follow(src, dst, args, env)
        return out
    finally:
        for cluster in (src, dst):
            cluster.destroy()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    precompile()
    with tempfile.TemporaryDirectory(prefix="pgm-bench-many-", ignore_cleanup_errors=True) as work:
        out = run(args, Path(work))
    per = 1000 / args.tables
    for key, value in out.items():
        print(f"{key:<18}{value:>8.2f} s  ({value * per:6.2f} ms a table)")
    ratio = out["clone_s"] / out["pgcopydb_clone_s"] if out.get("pgcopydb_clone_s") else None
    out["clone_over_pgcopydb"] = None if ratio is None else round(ratio, 3)
    print(f"pgmigrator clone / pgcopydb clone = {'-' if ratio is None else f'{ratio:.2f}'}")
    facts = {"tables": args.tables, "rows": args.rows}
    print(f"results: {write_json('many_tables', ('runs', []), out, facts, stamp)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
