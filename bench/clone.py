"""Clone benchmark: pgmigrator against pg_dump/pg_restore, pgcopydb and a raw psql COPY pipe.

Starts two throwaway clusters (``pgmigrator.devcluster``) under a fresh directory in /tmp, loads
the source with ``pgbench -i -s SCALE`` plus a wide table (18 columns of mixed int, numeric, text,
timestamptz and jsonb, ~470 bytes a row, a secondary index and a foreign key), then copies the
database end to end, each time into a fresh empty destination database, with:

``pgmigrator``  ``pgmigrator clone --workers 2`` (then ``pgmigrator cleanup``); total wall time
                and the data phase (from its ``phase=copy`` to its ``phase=post-data`` log line)
``dump-restore`` ``pg_dump -Fd -j2`` into a temp dir + ``pg_restore -j2`` (total)
``pgcopydb``     ``pgcopydb clone --table-jobs 2 --index-jobs 2`` (total; skipped if it cannot be
                installed)
``raw-pipe``     pre-data schema via ``pg_dump | psql``, then ``psql \\copy t to pstdout |
                psql \\copy t from pstdin`` per table, two tables at a time; timed as the data
                phase only (no indexes or constraints), the floor pgmigrator's data phase is
                compared with

Every step's exit code is checked and, after each tool, the row counts of ``pgbench_accounts`` and
the wide table (and, for full clones, the numbers of indexes and constraints) are compared with the
source. An untimed raw-pipe copy runs first (a fresh destination cluster creates its WAL segment
files during the first big copy). Tools run ``--rounds`` times, interleaved, each round starting
with the next tool; the summary uses each tool's median. Each run also
records ``other%``, the machine's CPU used by processes outside the benchmark meanwhile (the
machine may be shared), and runs above 10% are flagged. Results go to stdout and to
``bench/results/clone-<timestamp>.json``.

Run: ``.venv/bin/python bench/clone.py --scale 50``
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pgmigrator import devcluster
from pgmigrator.devcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PGMIGRATOR = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pgmigrator"]
SOURCE_DB = "bench"
WIDE = "bench_wide"
TOOLS = ("pgmigrator", "dump-restore", "pgcopydb", "raw-pipe")
TARGET_TOTAL_RATIO = 1 / 1.2
TARGET_PIPE_RATIO = 0.9
NOISY_PCT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASE_RE = re.compile(r"^(\S+) info progress: phase phase=(\S+)$", re.MULTILINE)

WIDE_DDL = f"""
CREATE TABLE public.{WIDE} (
    id          bigint PRIMARY KEY,
    account_id  integer NOT NULL REFERENCES public.pgbench_accounts (aid),
    branch_id   smallint NOT NULL,
    quantity    integer NOT NULL,
    counter     bigint,
    price       numeric(12,2) NOT NULL,
    ratio       numeric,
    balance     numeric(18,4),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz,
    shipped_at  timestamptz,
    status      text NOT NULL,
    customer    text,
    email       text,
    description text,
    notes       text,
    attributes  jsonb NOT NULL,
    flags       jsonb
)"""


def wide_fill_sql(accounts: int, rows: int) -> str:
    """INSERT ... SELECT filling the wide table; ``account_id`` points at existing pgbench accounts."""
    return f"""
INSERT INTO public.{WIDE}
SELECT i, i % {accounts} + 1, i % 50, i % 1000, i * 1000003, (i % 100000) / 100.0,
       (i % 9973) / 9973.0, i * 1.2345, ts, ts + interval '1 hour' * (i % 48),
       CASE WHEN i % 3 = 0 THEN NULL ELSE ts + interval '2 days' END,
       (ARRAY['new', 'paid', 'shipped', 'returned'])[i % 4 + 1], 'customer ' || i,
       'user' || i || '@example.com', repeat(md5(i::text), 3), md5(i::text || 'a') || md5(i::text || 'b'),
       jsonb_build_object('sku', left(md5(i::text || 's'), 12), 'size', i % 7, 'weight', (i % 5000) / 10.0,
                          'color', (ARRAY['red', 'green', 'blue'])[i % 3 + 1], 'tags', jsonb_build_array('t' || i % 10, 't' || i % 13)),
       jsonb_build_object('gift', i % 2 = 0, 'express', i % 5 = 0)
FROM generate_series(1::bigint, {rows}) AS i, LATERAL (SELECT timestamptz '2024-01-01' + interval '1 second' * i AS ts) AS t
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed (non-zero exit, wrong row counts, missing tool)."""


@dataclass
class Bench:
    """What every tool run needs: both clusters, the work dir, client env and expected counts."""

    source: Cluster
    dest: Cluster
    work: Path
    expected: dict[str, int]
    pgcopydb: str | None
    env: dict[str, str] = field(default_factory=dict)

    def bin(self, name: str) -> str:
        return str(self.source.bindir / name)

    def libpq(self, cluster: Cluster, db: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", devcluster.SUPERUSER, "-d", db]


@dataclass
class RunResult:
    tool: str
    round: int
    db: str
    total_s: float | None = None
    data_s: float | None = None
    phases_s: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    other_cpu_pct: float | None = (
        None  # CPU used by processes outside the benchmark, % of the machine
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scale", type=int, default=50, help="pgbench scale factor (default 50)")
    p.add_argument(
        "--wide-rows", type=int, default=1_000_000, help="rows in the wide table (default 1M)"
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="runs of each tool, interleaved (default 1)"
    )
    p.add_argument("--workers", type=int, default=2, help="parallelism for every tool (default 2)")
    p.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the clusters' directory (for debugging)"
    )
    return p.parse_args(argv)


def run_checked(
    cmd: list[str], env: dict[str, str], log: Path | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise :class:`BenchError` with the tail of its output on a non-zero exit."""
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{Path(cmd[0]).name} exited {res.returncode}:\n{tail}")
    return res


def uri(cluster: Cluster, db: str) -> str:
    return (
        f"postgresql://{devcluster.SUPERUSER}:{devcluster.PASSWORD}@127.0.0.1:{cluster.port}/{db}"
    )


def scalar(cluster: Cluster, db: str, query: str) -> Any:
    with cluster.connect(db) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


# --- source data -------------------------------------------------------------------------------


def load_source(source: Cluster, scale: int, wide_rows: int) -> dict[str, Any]:
    """Fill the source database; return facts about it (sizes, row widths, expected counts)."""
    source.create_database(SOURCE_DB)
    t0 = time.perf_counter()
    source.pgbench(SOURCE_DB, "-i", "-q", "-s", str(scale))
    with source.connect(SOURCE_DB) as conn:
        conn.execute(WIDE_DDL)
        conn.execute(wide_fill_sql(scale * 100_000, wide_rows))
        conn.execute(
            f"CREATE INDEX {WIDE}_account_created ON public.{WIDE} (account_id, created_at)"
        )
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    os.sync()  # the load's dirty pages would otherwise be written back during the first run
    facts = {
        "load_s": round(time.perf_counter() - t0, 1),
        "db_bytes": scalar(source, SOURCE_DB, "SELECT pg_database_size(current_database())"),
        "wide_table_bytes": scalar(source, SOURCE_DB, f"SELECT pg_table_size('public.{WIDE}')"),
        "wide_avg_row_bytes": float(
            scalar(
                source,
                SOURCE_DB,
                f"SELECT avg(pg_column_size(w.*))::numeric(8,1) FROM public.{WIDE} w",
            )
        ),
        "accounts_table_bytes": scalar(
            source, SOURCE_DB, "SELECT pg_table_size('public.pgbench_accounts')"
        ),
    }
    return facts


def expected_counts(source: Cluster) -> dict[str, int]:
    return {
        "pgbench_accounts": int(
            scalar(source, SOURCE_DB, "SELECT count(*) FROM public.pgbench_accounts")
        ),
        WIDE: int(scalar(source, SOURCE_DB, f"SELECT count(*) FROM public.{WIDE}")),
        "indexes": int(
            scalar(source, SOURCE_DB, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
        ),
        "constraints": int(
            scalar(
                source,
                SOURCE_DB,
                "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n "
                "ON n.oid = c.connamespace WHERE n.nspname = 'public'",
            )
        ),
    }


def tables_by_size(source: Cluster) -> list[str]:
    with source.connect(SOURCE_DB) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' "
            "ORDER BY pg_table_size(c.oid) DESC, c.relname"
        ).fetchall()
    return [str(r[0]) for r in rows]


def verify(bench: Bench, db: str, full: bool) -> dict[str, int]:
    """Compare destination counts with the source; ``full`` also checks indexes and constraints."""
    got = {
        "pgbench_accounts": int(
            scalar(bench.dest, db, "SELECT count(*) FROM public.pgbench_accounts")
        ),
        WIDE: int(scalar(bench.dest, db, f"SELECT count(*) FROM public.{WIDE}")),
    }
    if full:
        got["indexes"] = int(
            scalar(bench.dest, db, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
        )
        got["constraints"] = int(
            scalar(
                bench.dest,
                db,
                "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n "
                "ON n.oid = c.connamespace WHERE n.nspname = 'public'",
            )
        )
    wrong = {k: (v, bench.expected[k]) for k, v in got.items() if v != bench.expected[k]}
    if wrong:
        raise BenchError(f"destination {db} differs from the source (got, expected): {wrong}")
    return got


# --- other load on the machine ------------------------------------------------------------------


def proc_fields(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat from ``state`` on (index 1 = ppid, 11..14 = utime stime cutime cstime)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _machine_busy_s() -> float:
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / CLK_TCK


def server_cpu_s(postmasters: set[int]) -> float:
    """CPU used so far by the clusters of ``postmasters``: every server process, exited ones too."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        fields = proc_fields(entry.name) if entry.name.isdigit() else None
        if fields is None:
            continue
        if int(entry.name) in postmasters:  # cutime/cstime hold the backends that already exited
            ticks += sum(int(v) for v in fields[11:15])
        elif int(fields[1]) in postmasters:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().split()[0])


def _bench_cpu_s(postmasters: set[int]) -> float:
    """CPU used so far by this process, its reaped children and both clusters' server processes."""
    own = os.times()
    return (
        server_cpu_s(postmasters) + own.user + own.system + own.children_user + own.children_system
    )


class LoadMeter:
    """How much of the machine's CPU went to processes outside the benchmark during a run."""

    def __init__(self, clusters: tuple[Cluster, ...]) -> None:
        self.postmasters = {postmaster_pid(c) for c in clusters}
        self.start = (time.monotonic(), _machine_busy_s(), _bench_cpu_s(self.postmasters))

    def other_pct(self) -> float:
        wall, busy, ours = (
            b - a
            for a, b in zip(
                self.start,
                (time.monotonic(), _machine_busy_s(), _bench_cpu_s(self.postmasters)),
                strict=True,
            )
        )
        return round(max(0.0, busy - ours) / (wall * (os.cpu_count() or 1)) * 100, 1)


# --- the tools ---------------------------------------------------------------------------------


def phase_durations(log_text: str) -> dict[str, float]:
    """Seconds spent in each pgmigrator phase, from its ``progress: phase`` log lines."""
    marks = [
        (datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ"), phase)
        for ts, phase in PHASE_RE.findall(log_text)
    ]
    return {
        phase: round((nxt - at).total_seconds(), 3)
        for (at, phase), (nxt, _) in itertools.pairwise(marks)
    }


def run_pgmigrator(bench: Bench, db: str, workers: int, res: RunResult) -> None:
    common = [
        "--source",
        bench.source.dsn(SOURCE_DB),
        "--dest",
        bench.dest.dsn(db),
        "--log-format",
        "text",
    ]
    log = bench.work / f"pgmigrator-{db}.log"
    t0 = time.perf_counter()
    try:
        out = run_checked(
            [*PGMIGRATOR, "clone", *common, "--workers", str(workers), "--keyless-tables", "full"],
            bench.env,
            log,
        )
        res.total_s = time.perf_counter() - t0
    finally:  # drop the slot and publication even when the clone failed
        cleanup = subprocess.run(
            [*PGMIGRATOR, "cleanup", *common],
            env=bench.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if cleanup.returncode:
            res.notes.append(
                f"pgmigrator cleanup exited {cleanup.returncode}: {cleanup.stderr.strip()[-500:]}"
            )
    if cleanup.returncode:
        raise BenchError(res.notes[-1])
    res.phases_s = phase_durations(out.stderr)
    if "copy" not in res.phases_s:
        raise BenchError("pgmigrator logged no 'phase=copy' ... 'phase=post-data' lines")
    res.data_s = res.phases_s["copy"]
    lines = out.stderr.splitlines()
    res.notes += [ln for ln in lines if " info " not in ln][:20]
    res.notes.append(
        f"{len(lines)} log lines from clone, {len(cleanup.stderr.splitlines())} from cleanup"
    )
    res.counts = verify(bench, db, full=True)


def run_dump_restore(bench: Bench, db: str, workers: int, res: RunResult) -> None:
    out_dir = bench.work / f"dump-{db}"
    t0 = time.perf_counter()
    run_checked(
        [
            bench.bin("pg_dump"),
            *bench.libpq(bench.source, SOURCE_DB),
            "-Fd",
            f"-j{workers}",
            "-f",
            str(out_dir),
        ],
        bench.env,
    )
    dumped = time.perf_counter()
    run_checked(
        [
            bench.bin("pg_restore"),
            *bench.libpq(bench.dest, db),
            f"-j{workers}",
            "--no-owner",
            "--no-acl",
            str(out_dir),
        ],
        bench.env,
    )
    res.total_s = time.perf_counter() - t0
    res.phases_s = {
        "pg_dump": round(dumped - t0, 3),
        "pg_restore": round(res.total_s - (dumped - t0), 3),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    res.counts = verify(bench, db, full=True)


def run_pgcopydb(bench: Bench, db: str, workers: int, res: RunResult) -> None:
    if bench.pgcopydb is None:
        raise BenchError("pgcopydb is not installed")
    work_dir = bench.work / f"pgcopydb-{db}"
    cmd = [
        bench.pgcopydb,
        "clone",
        "--source",
        uri(bench.source, SOURCE_DB),
        "--target",
        uri(bench.dest, db),
        "--dir",
        str(work_dir),
        "--table-jobs",
        str(workers),
        "--index-jobs",
        str(workers),
        "--no-owner",
        "--no-acl",
    ]
    t0 = time.perf_counter()
    run_checked(cmd, bench.env, bench.work / f"pgcopydb-{db}.log")
    res.total_s = time.perf_counter() - t0
    shutil.rmtree(work_dir, ignore_errors=True)
    res.notes.append("pgcopydb also runs VACUUM ANALYZE on every copied table (part of its total)")
    res.counts = verify(bench, db, full=True)


def pipe_table(bench: Bench, db: str, table: str) -> None:
    """``psql \\copy t to pstdout | psql \\copy t from pstdin``; both exit codes are checked."""
    out_cmd = [
        bench.bin("psql"),
        *bench.libpq(bench.source, SOURCE_DB),
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"\\copy public.{table} to pstdout",
    ]
    in_cmd = [
        bench.bin("psql"),
        *bench.libpq(bench.dest, db),
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"\\copy public.{table} from pstdin",
    ]
    with (
        subprocess.Popen(
            out_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bench.env
        ) as reader,
        subprocess.Popen(
            in_cmd,
            stdin=reader.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=bench.env,
        ) as writer,
    ):
        assert reader.stdout is not None
        reader.stdout.close()  # the writer owns the pipe now: a dying writer makes the reader see EPIPE
        w_out, w_err = writer.communicate()
        r_err = reader.stderr.read() if reader.stderr else b""
        reader.wait()
    if reader.returncode or writer.returncode:
        raise BenchError(
            f"pipe of {table} failed (reader {reader.returncode}, writer {writer.returncode}): "
            f"{(r_err + w_err).decode(errors='replace').strip()[-800:]}"
        )
    if not w_out.startswith(b"COPY "):
        raise BenchError(f"pipe of {table}: unexpected psql output {w_out[:200]!r}")


def run_raw_pipe(bench: Bench, db: str, workers: int, res: RunResult) -> None:
    t0 = time.perf_counter()
    schema = run_checked(
        [
            bench.bin("pg_dump"),
            *bench.libpq(bench.source, SOURCE_DB),
            "--schema-only",
            "--section=pre-data",
        ],
        bench.env,
    ).stdout
    apply = subprocess.run(
        [bench.bin("psql"), *bench.libpq(bench.dest, db), "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        input=schema,
        env=bench.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if apply.returncode:
        raise BenchError(
            f"psql applying pre-data exited {apply.returncode}: {apply.stderr.strip()[-800:]}"
        )
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(pipe_table, bench, db, t) for t in tables_by_size(bench.source)]:
            fut.result()
    res.data_s = time.perf_counter() - started
    res.phases_s = {"schema": round(started - t0, 3), "copy": round(res.data_s, 3)}
    res.notes.append(
        "data phase only: no indexes or constraints are built; total_s is schema + data"
    )
    res.total_s = time.perf_counter() - t0
    res.counts = verify(bench, db, full=False)


RUNNERS: dict[str, Callable[[Bench, str, int, RunResult], None]] = {
    "pgmigrator": run_pgmigrator,
    "dump-restore": run_dump_restore,
    "pgcopydb": run_pgcopydb,
    "raw-pipe": run_raw_pipe,
}


def run_tool(bench: Bench, tool: str, rnd: int, workers: int) -> RunResult:
    """One timed run of ``tool`` into a fresh empty destination database, dropped afterwards."""
    db = f"bench_{tool.replace('-', '_')}_{rnd}"
    res = RunResult(tool, rnd, db)
    bench.dest.drop_database(db)
    bench.dest.create_database(db)
    for cluster in (bench.source, bench.dest):
        with cluster.connect() as conn:
            conn.execute("CHECKPOINT")
    if rnd:
        print(f"[{time.strftime('%H:%M:%S')}] round {rnd}: {tool} ...", file=sys.stderr, flush=True)
    meter = LoadMeter((bench.source, bench.dest))
    try:
        RUNNERS[tool](bench, db, workers, res)
    except (BenchError, subprocess.SubprocessError, OSError, psycopg.Error) as exc:
        res.error = str(exc)
        print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
    else:
        data = f", data {res.data_s:.1f}s" if res.data_s is not None else ""
        print(f"  total {res.total_s:.1f}s{data}; counts {res.counts}", file=sys.stderr, flush=True)
    finally:
        res.other_cpu_pct = meter.other_pct()
        bench.dest.drop_database(db)
    if res.other_cpu_pct > NOISY_PCT:
        print(
            f"  noisy: other processes used {res.other_cpu_pct}% of the CPU meanwhile",
            file=sys.stderr,
            flush=True,
        )
    return res


# --- setup, summary, output --------------------------------------------------------------------


def ensure_pgcopydb() -> tuple[str | None, str]:
    """Find pgcopydb, installing the Debian package when missing; return (path, version or why not)."""
    found = shutil.which("pgcopydb")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        print("pgcopydb not found: installing the Debian package ...", file=sys.stderr, flush=True)
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "pgcopydb"]):
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode:
                return None, f"{' '.join(cmd)} failed: {res.stderr.strip()[-300:]}"
        found = shutil.which("pgcopydb")
    if found is None:
        return None, "pgcopydb not on PATH and could not be installed"
    res = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    return found, (res.stdout.strip().splitlines() or ["?"])[0]


def median(results: list[RunResult], tool: str, attr: str) -> float | None:
    values = [
        getattr(r, attr)
        for r in results
        if r.tool == tool and r.error is None and getattr(r, attr) is not None
    ]
    return statistics.median(values) if values else None


def summarize(results: list[RunResult]) -> dict[str, Any]:
    tools = sorted({r.tool for r in results}, key=TOOLS.index)
    per_tool = {
        t: {
            "total_s": median(results, t, "total_s"),
            "data_s": median(results, t, "data_s"),
            "runs_ok": sum(r.tool == t and r.error is None for r in results),
            "runs": sum(r.tool == t for r in results),
        }
        for t in tools
    }
    pgm_total = per_tool.get("pgmigrator", {}).get("total_s")
    pgm_data = per_tool.get("pgmigrator", {}).get("data_s")
    others = [
        v["total_s"]
        for k, v in per_tool.items()
        if k in ("dump-restore", "pgcopydb") and v["total_s"]
    ]
    best = min(others) if others else None
    pipe = per_tool.get("raw-pipe", {}).get("data_s")
    total_ratio = pgm_total / best if pgm_total and best else None
    pipe_ratio = pipe / pgm_data if pipe and pgm_data else None
    return {
        "per_tool": per_tool,
        "best_other_total_s": best,
        "total_ratio": total_ratio,
        "total_ratio_target_max": TARGET_TOTAL_RATIO,
        "total_ratio_ok": total_ratio is not None and total_ratio <= TARGET_TOTAL_RATIO,
        "pipe_ratio": pipe_ratio,
        "pipe_ratio_target_min": TARGET_PIPE_RATIO,
        "pipe_ratio_ok": pipe_ratio is not None and pipe_ratio >= TARGET_PIPE_RATIO,
        "noisy_runs": sum((r.other_cpu_pct or 0) > NOISY_PCT for r in results),
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(results: list[RunResult], summary: dict[str, Any], facts: dict[str, Any]) -> None:
    print(
        f"\nsource: pgbench scale {facts['scale']} + {facts['wide_rows']:,} wide rows "
        f"(~{facts['wide_avg_row_bytes']:.0f} B/row), {facts['db_bytes'] / 2**20:,.0f} MiB on disk; "
        f"{facts['workers']} workers, {facts['nproc']} cores, PostgreSQL {facts['server_version']}"
    )
    print(f"\n{'tool':<14}{'round':>6}{'total s':>10}{'data s':>10}{'other%':>8}  phases / error")
    for r in results:
        detail = (
            r.error.splitlines()[0][:90]
            if r.error
            else " ".join(f"{k}={v:.1f}" for k, v in r.phases_s.items())
        )
        print(
            f"{r.tool:<14}{r.round:>6}{fmt(r.total_s):>10}{fmt(r.data_s):>10}{fmt(r.other_cpu_pct):>8}  {detail}"
        )
    print(f"\n{'median':<14}{'ok/runs':>8}{'total s':>10}{'data s':>10}")
    for tool, v in summary["per_tool"].items():
        print(
            f"{tool:<14}{v['runs_ok']:>4}/{v['runs']:<3}{fmt(v['total_s']):>10}{fmt(v['data_s']):>10}"
        )
    tr, pr = summary["total_ratio"], summary["pipe_ratio"]
    print(
        f"\npgmigrator total / best(pgcopydb, pg_dump+pg_restore) = {fmt(tr, '.3f')}  "
        f"(target <= {TARGET_TOTAL_RATIO:.3f}: {'OK' if summary['total_ratio_ok'] else 'MISSED'})"
    )
    print(
        f"raw pipe data / pgmigrator data phase              = {fmt(pr, '.3f')}  "
        f"(target >= {TARGET_PIPE_RATIO:.3f}: {'OK' if summary['pipe_ratio_ok'] else 'MISSED'})"
    )
    if summary["noisy_runs"]:
        print(
            f"\nWARNING: {summary['noisy_runs']} run(s) shared the machine with other processes using more than "
            f"{NOISY_PCT:.0f}% of its CPU (column other%): their times are inflated; rerun on an idle machine"
        )


def precompile() -> None:
    """Write pgmigrator's bytecode, as a package installed by pip has it.

    Without it (``PYTHONDONTWRITEBYTECODE`` set, or a fresh edit), every pgmigrator process would
    compile its modules from source at start-up (about 0.15 s here), which is not what users run.
    """
    compileall.compile_dir(str(ROOT / "src" / "pgmigrator"), quiet=1)


def write_json(
    benchmark: str,
    items: tuple[str, list[Any]],
    summary: dict[str, Any],
    facts: dict[str, Any],
    stamp: str,
) -> Path:
    """``bench/results/<benchmark>-<stamp>.json``: environment, summary and every run (dataclasses)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{benchmark}-{stamp}.json"
    doc = {
        "benchmark": benchmark,
        "timestamp": stamp,
        "environment": facts,
        "summary": summary,
        items[0]: [asdict(item) for item in items[1]],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def collect_facts(
    args: argparse.Namespace, bench: Bench, source_facts: dict[str, Any], copydb: str
) -> dict[str, Any]:
    return {
        "scale": args.scale,
        "wide_rows": args.wide_rows,
        "rounds": args.rounds,
        "workers": args.workers,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "bindir": str(bench.source.bindir),
        "server_version": scalar(bench.source, "postgres", "SHOW server_version"),
        "pgcopydb": copydb,
        "expected": bench.expected,
        **source_facts,
    }


def run_all(
    args: argparse.Namespace, tools: list[str], work: Path
) -> tuple[list[RunResult], dict[str, Any]]:
    copydb, copydb_version = ensure_pgcopydb() if "pgcopydb" in tools else (None, "not requested")
    if "pgcopydb" in tools and copydb is None:
        print(f"skipping pgcopydb: {copydb_version}", file=sys.stderr)
        tools.remove("pgcopydb")
    print(f"starting clusters under {work} ...", file=sys.stderr, flush=True)
    source, dest = devcluster.start_pair(work)
    try:
        print(
            f"loading source (scale {args.scale}, {args.wide_rows:,} wide rows) ...",
            file=sys.stderr,
            flush=True,
        )
        source_facts = load_source(source, args.scale, args.wide_rows)
        bin_path = f"{source.bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {
            **os.environ,
            "PGPASSWORD": devcluster.PASSWORD,
            "PATH": bin_path,
            "TMPDIR": str(work),
        }
        bench = Bench(source, dest, work, expected_counts(source), copydb, env)
        facts = collect_facts(args, bench, source_facts, copydb_version)
        # Untimed: the first copy into a fresh destination cluster also creates its WAL segment
        # files (about 1 GB written twice); later runs recycle them. Measured here: 14.6 s data
        # phase for the first run, 9.6 s for the same tool right after.
        print("warm-up (not timed): raw-pipe ...", file=sys.stderr, flush=True)
        run_tool(bench, "raw-pipe", 0, args.workers)
        results = [  # each round starts with the next tool: no tool always runs first
            run_tool(bench, tools[(i + rnd - 1) % len(tools)], rnd, args.workers)
            for rnd in range(1, args.rounds + 1)
            for i in range(len(tools))
        ]
    finally:
        for cluster in (source, dest):
            if args.keep:
                cluster.stop("fast")
            else:
                cluster.destroy()
    return results, facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        print(f"unknown tool(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    precompile()
    work = Path(tempfile.mkdtemp(prefix="pgm-bench-clone-"))
    try:
        results, facts = run_all(args, tools, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results)
    print_report(results, summary, facts)
    print(f"\nresults: {write_json('clone', ('runs', results), summary, facts, stamp)}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
