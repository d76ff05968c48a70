"""Paired A/B benchmark of the follower: two source trees drain equal backlogs, alternately.

On a noisy machine (run-to-run noise of 20-40% here) whole `bench/follow.py` runs cannot tell
apart changes worth 5-15%. This script keeps one pair of throwaway clusters, writes the same
backlog again before every drain and lets tree A and tree B (``PYTHONPATH`` of a checkout's
``src``, e.g. a ``git worktree`` of the base commit) drain it in alternating order, then prints
the per-pair differences and their median.

Run: ``.venv/bin/python bench/follow_ab.py --a /tmp/base/src --b src --work bulk --pairs 6``
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clone import WIDE_DDL, wide_fill_sql
from follow import WIDE_SEQ, wide_insert_sql

from pgmigrator import devcluster

PY = sys.executable
BULK_TXNS, BULK_ROWS = 20, 10_000  # per backlog: 200k wide rows
TPCB_TXNS = 30_000  # per backlog, over two clients
SINGLE_TXNS = 60_000  # single-row wide inserts per backlog, over two clients
POLL_S = 0.02


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--a", required=True, help="tree A: a directory to put on PYTHONPATH")
    p.add_argument("--b", required=True, help="tree B: a directory to put on PYTHONPATH")
    p.add_argument("--work", choices=("bulk", "tpcb", "single"), default="bulk")
    p.add_argument("--pairs", type=int, default=6, help="drains per tree (default 6)")
    return p.parse_args()


def setup(src: devcluster.Cluster, dst: devcluster.Cluster) -> tuple[str, str]:
    for cluster in (src, dst):
        cluster.create_database("bench")
    src.pgbench("bench", "-i", "-s", "10", "-q")
    with src.connect("bench") as conn:
        conn.execute(WIDE_DDL)
        conn.execute(wide_fill_sql(1_000_000, 1000))
        conn.execute(f"CREATE SEQUENCE public.{WIDE_SEQ} START 100000000")
    source, dest = src.dsn("bench"), dst.dsn("bench")
    clone = [PY, "-m", "pgmigrator", "clone", "--keyless-tables", "full"]  # pgbench_history
    res = subprocess.run(
        [*clone, "--source", source, "--dest", dest],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SystemExit(f"clone failed: {res.stderr}")
    return source, dest


class Backlogs:
    """Writes one backlog at a time; returns the source's WAL position right after it."""

    def __init__(self, src: devcluster.Cluster, work: str, base: Path) -> None:
        self.src, self.work, self.next_id = src, work, 1_000_000
        self.script = base / "single-insert.sql"
        self.script.write_text(wide_insert_sql(1_000_000, 1).strip() + ";\n")

    def write(self) -> str:
        if self.work == "bulk":
            with self.src.connect("bench") as conn:
                for _ in range(BULK_TXNS):
                    lo, self.next_id = self.next_id, self.next_id + BULK_ROWS
                    fill = wide_fill_sql(1_000_000, BULK_ROWS).replace(
                        f"generate_series(1::bigint, {BULK_ROWS})",
                        f"generate_series({lo}::bigint, {lo + BULK_ROWS - 1})",
                    )
                    conn.execute(fill)
        elif self.work == "single":
            per_client = str(SINGLE_TXNS // 2)
            self.src.pgbench(
                "bench",
                "-n",
                "-M",
                "prepared",
                "-c2",
                "-j2",
                "-t",
                per_client,
                "-f",
                str(self.script),
            )
        else:
            self.src.pgbench("bench", "-c2", "-t", str(TPCB_TXNS // 2), "-n")
        with self.src.connect("bench") as conn:
            # the backlog's end: a transaction of its own, whose commit is applied last (the
            # server's WAL position after the backlog could lie past every commit, when some
            # background record came after it, and then no drain would ever reach it)
            with conn.transaction():
                row = conn.execute(
                    "SELECT pg_logical_emit_message(true, 'pgm-bench', 'end')::text"
                ).fetchone()
            conn.execute("CHECKPOINT")  # each drain starts from the same state
        return str(row[0]) if row else "0/0"


def drain(dst: devcluster.Cluster, source: str, dest: str, tree: str, target: str) -> float:
    """Seconds from starting `pgmigrator follow` (tree on PYTHONPATH) to applying ``target``."""
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [PY, "-m", "pgmigrator", "follow", "--source", source, "--dest", dest]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"follow exited with {proc.returncode} (tree {tree})")
            with dst.connect("bench") as conn:
                row = conn.execute(
                    "SELECT (SELECT pg_replication_origin_progress(roname, false)"
                    " FROM pg_replication_origin LIMIT 1) >= %s::pg_lsn",
                    (target,),
                ).fetchone()
            if row and row[0]:
                return time.perf_counter() - t0
            time.sleep(POLL_S)
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)


def main() -> None:
    args = parse_args()
    trees = {"a": str(Path(args.a).resolve()), "b": str(Path(args.b).resolve())}
    for tree in trees.values():  # bytecode written, as for an installed package
        compileall.compile_dir(str(Path(tree) / "pgmigrator"), quiet=1)
    base = Path(tempfile.mkdtemp(prefix="pgm-bench-ab-"))
    src, dst = devcluster.start_pair(base)
    try:
        source, dest = setup(src, dst)
        backlogs = Backlogs(src, args.work, base)
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(args.pairs):
            for key in ("a", "b") if i % 2 == 0 else ("b", "a"):
                times[key].append(drain(dst, source, dest, trees[key], backlogs.write()))
            print(f"pair {i}: a {times['a'][-1]:.2f} s, b {times['b'][-1]:.2f} s", flush=True)
        diffs = [b - a for a, b in zip(times["a"], times["b"], strict=True)]
        print(
            f"{args.work}: a median {statistics.median(times['a']):.2f} s, b median "
            f"{statistics.median(times['b']):.2f} s, b - a median {statistics.median(diffs):+.2f} s"
            f" (pairs: {' '.join(f'{d:+.2f}' for d in diffs)})"
        )
    finally:
        for cluster in (src, dst):
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
