"""Follow benchmark: catch-up time of a replication backlog, pgmigrator against native logical
replication and pg_recvlogical.

Starts two throwaway clusters (``pgmigrator.devcluster``) under a fresh directory in /tmp and loads
the source with ``pgbench -i -s SCALE`` plus the wide table of ``bench/clone.py``. Three consumers
get the same starting point and their own slot on the source:

``pgmigrator``      ``pgmigrator clone`` into ``follow_pgm``, then ``pgmigrator follow`` per backlog
``native``          ``pg_dump | psql`` into ``follow_native`` (schema and rows, the source idle) and a
                    ``SUBSCRIPTION ... WITH (copy_data = false)``, enabled only to drain a backlog
``pg_recvlogical``  its own pgoutput slot and publication, drained to /dev/null (a floor: decoding
                    and streaming without applying anything)

Then, for each workload, a backlog is written while every consumer is stopped: (a) pgbench TPC-B
for ``--tpcb-seconds``, (b) ``--bulk-rows`` inserts into the wide table in 100 transactions,
(c) ``--single-txns`` single-row insert transactions. A marker row closes each backlog; the
source's WAL position after it is the target LSN. The consumers then drain the backlog one after
another, each timed until it has applied the marker (``pg_recvlogical --endpos`` exits by itself),
with the machine's other CPU load (``other%``) and pgmigrator's peak RSS. Afterwards both
destinations must match the source (row counts and balance sums of the pgbench tables, the wide
table and the markers). Results go to stdout and ``bench/results/follow-<timestamp>.json``.

Run: ``.venv/bin/python bench/follow.py``
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from clone import (
    CLK_TCK,
    NOISY_PCT,
    PGMIGRATOR,
    ROOT,
    WIDE,
    WIDE_DDL,
    BenchError,
    LoadMeter,
    fmt,
    postmaster_pid,
    precompile,
    proc_fields,
    run_checked,
    scalar,
    server_cpu_s,
    wide_fill_sql,
    write_json,
)
from psycopg import sql

from pgmigrator import devcluster
from pgmigrator.devcluster import Cluster

SOURCE_DB = "bench"
PGM_DB = "follow_pgm"
NATIVE_DB = "follow_native"
NAME = "bench"  # pgmigrator pipeline name: slot, publication and origin pgmigrator_bench
PGM_ORIGIN = f"pgmigrator_{NAME}"
NATIVE = "bench_native"  # publication, subscription and slot of native logical replication
RECV = "bench_recv"  # publication and slot drained by pg_recvlogical
MARKER = "bench_marker"
WIDE_SEQ = "bench_wide_id_seq"
TOOLS = ("pgmigrator", "native", "pg_recvlogical")
WORKLOADS = {"a": "tpcb", "b": "bulk", "c": "single"}
BULK_TXNS = 100
TARGET_RECV_RATIO = 1.15
DRAIN_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05
# The logical replication launcher starts apply workers at most once per wal_retrieve_retry_interval
# (default 5 s): without this, ENABLE shortly after a DISABLE waits up to 5 s for its worker.
CLUSTER_SETTINGS = {"wal_retrieve_retry_interval": "100ms"}
FAST_COMMIT = "-c synchronous_commit=off"  # backlog generation only: the WAL is the same
PROCESSED_RE = re.compile(r"number of transactions actually processed: (\d+)")
STOPPED_RE = re.compile(r"stopped: (\d+) transaction\(s\), (\d+) row\(s\) applied up to (\S+)")
STREAMING_RE = re.compile(r"^(\S+) info replication: streaming ", re.MULTILINE)
CHECKS = {  # compared between the source and each destination after every workload
    "pgbench_accounts": "SELECT count(*), sum(abalance) FROM public.pgbench_accounts",
    "pgbench_branches": "SELECT count(*), sum(bbalance) FROM public.pgbench_branches",
    "pgbench_tellers": "SELECT count(*), sum(tbalance) FROM public.pgbench_tellers",
    "pgbench_history": "SELECT count(*), sum(delta) FROM public.pgbench_history",
    WIDE: f"SELECT count(*), sum(id), sum(quantity) FROM public.{WIDE}",
    MARKER: f"SELECT count(*), max(id) FROM public.{MARKER}",
}


@dataclass
class Ctx:
    """What every step needs: both clusters, the work dir, the client environment."""

    source: Cluster
    dest: Cluster
    work: Path
    env: dict[str, str]
    accounts: int
    tables: list[str] = field(default_factory=list)

    def bin(self, name: str) -> str:
        return str(self.source.bindir / name)

    @staticmethod
    def conn_args(cluster: Cluster) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", devcluster.SUPERUSER]


@dataclass
class Drain:
    """One consumer catching up with one backlog."""

    tool: str
    seconds: float | None = None
    rows_per_s: float | None = None
    other_cpu_pct: float | None = None
    client_cpu_s: float | None = None  # CPU of the consumer process (pgmigrator, pg_recvlogical)
    source_cpu_s: float | None = None  # the source cluster's server processes (the walsender)
    dest_cpu_s: float | None = None  # the destination's (the applier's backend, native's worker)
    walsender_cpu_s: float | None = None  # the walsender serving this consumer's slot
    walsender_sys_s: float | None = None  # ... of which kernel time
    walsender_waits: int | None = None  # ... its voluntary context switches (times it slept)
    tcp_segments: int | None = None  # TCP segments sent on the machine during the drain
    peak_rss_kb: int | None = None  # pgmigrator follow (and children): peak VmHWM
    startup_s: float | None = None  # pgmigrator: launch to its "streaming" log line
    reached_lsn: str | None = None  # origin progress / slot confirmed_flush afterwards
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Workload:
    key: str
    name: str
    txns: int = 0
    rows: int = 0  # row changes in the backlog (the marker row not counted)
    generate_s: float = 0.0
    wal_bytes: int = 0
    target_lsn: str = ""
    drains: dict[str, Drain] = field(default_factory=dict)
    source_checks: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--tpcb-seconds", type=int, default=30, help="workload a: pgbench -c2 -T (default 30)"
    )
    p.add_argument(
        "--bulk-rows",
        type=int,
        default=1_000_000,
        help=f"workload b: wide rows inserted in {BULK_TXNS} transactions (default 1M)",
    )
    p.add_argument(
        "--single-txns",
        type=int,
        default=200_000,
        help="workload c: single-row insert transactions (default 200k)",
    )
    p.add_argument(
        "--workloads", default="a,b,c", help="comma-separated subset of a,b,c (default all)"
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench scale of the source (default 10)")
    p.add_argument(
        "--wide-rows",
        type=int,
        default=100_000,
        help="initial rows of the wide table (default 100k)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the clusters' directory and logs (for debugging)"
    )
    return p.parse_args(argv)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def wait_for(
    done: Callable[[], bool],
    what: str,
    tick: Callable[[], None] | None = None,
    timeout: float = DRAIN_TIMEOUT_S,
) -> None:
    """Poll ``done`` every POLL_S (calling ``tick`` in between) until true; BenchError on timeout."""
    deadline = time.monotonic() + timeout
    while not done():
        if tick is not None:
            tick()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def checkpoint(*clusters: Cluster) -> None:
    for cluster in clusters:
        with cluster.connect() as conn:
            conn.execute("CHECKPOINT")


def settle(ctx: Ctx) -> None:
    """VACUUM (ANALYZE) the source and both destinations, untimed, before a drain.

    Otherwise autovacuum picks up the rows a backlog (or an earlier drain) left behind while a
    consumer is being timed: on the source that hits whichever tool drains first, and a workload
    after the bulk one saw pgmigrator's single-row drain take twice as long as when run alone.
    ``other%`` does not show it (autovacuum runs under the benchmark's postmasters).
    """
    for cluster, db in ((ctx.source, SOURCE_DB), (ctx.dest, PGM_DB), (ctx.dest, NATIVE_DB)):
        with cluster.connect(db) as conn:
            conn.execute("VACUUM (ANALYZE)")


# --- setup -------------------------------------------------------------------------------------


def wide_insert_sql(accounts: int, rows: int) -> str:
    """bench/clone.py's wide-row INSERT, with ids from a sequence instead of 1..rows."""
    fill = wide_fill_sql(accounts, rows)
    series = f"generate_series(1::bigint, {rows}) AS i"
    if series not in fill:
        raise BenchError("bench/clone.py's wide_fill_sql changed: update wide_insert_sql")
    return fill.replace(
        series, f"(SELECT nextval('public.{WIDE_SEQ}') AS i FROM generate_series(1, {rows})) AS g"
    )


def load_source(ctx: Ctx, scale: int, wide_rows: int) -> None:
    ctx.source.create_database(SOURCE_DB)
    ctx.source.pgbench(SOURCE_DB, "-i", "-q", "-s", str(scale))
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute(WIDE_DDL)
        conn.execute(wide_fill_sql(ctx.accounts, wide_rows))
        conn.execute(
            f"CREATE INDEX {WIDE}_account_created ON public.{WIDE} (account_id, created_at)"
        )
        conn.execute(f"CREATE SEQUENCE public.{WIDE_SEQ} START {wide_rows + 1}")
        conn.execute(
            f"CREATE TABLE public.{MARKER} (id integer PRIMARY KEY, workload text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
    ctx.tables = [str(r[0]) for r in rows]


def pgm_args(ctx: Ctx) -> list[str]:
    return [
        "--source",
        ctx.source.dsn(SOURCE_DB),
        "--dest",
        ctx.dest.dsn(PGM_DB),
        "--name",
        NAME,
        "--log-format",
        "text",
    ]


def setup_pgmigrator(ctx: Ctx) -> None:
    """``pgmigrator clone`` into a fresh database: creates slot and publication pgmigrator_bench."""
    ctx.dest.create_database(PGM_DB)
    run_checked(
        [*PGMIGRATOR, "clone", *pgm_args(ctx), "--workers", "2", "--keyless-tables", "full"],
        ctx.env,
        ctx.work / "pgmigrator-clone.log",
    )


def create_publication(ctx: Ctx, name: str) -> None:
    tables = sql.SQL(", ").join(sql.Identifier("public", t) for t in ctx.tables)
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), tables)
        )


def setup_native(ctx: Ctx) -> None:
    """Schema and rows by ``pg_dump | psql`` (the source is idle), then a disabled subscription.

    The subscription creates its slot on the source now, so its backlog starts here; copy_data is
    off because the rows are already there.
    """
    ctx.dest.create_database(NATIVE_DB)
    dump = ctx.work / "native-dump.sql"
    run_checked(
        [
            ctx.bin("pg_dump"),
            *ctx.conn_args(ctx.source),
            "-d",
            SOURCE_DB,
            "--no-publications",
            "--no-subscriptions",
            "-f",
            str(dump),
        ],
        ctx.env,
    )
    run_checked(
        [
            ctx.bin("psql"),
            *ctx.conn_args(ctx.dest),
            "-d",
            NATIVE_DB,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(dump),
        ],
        ctx.env,
    )
    dump.unlink()
    create_publication(ctx, NATIVE)
    with ctx.dest.connect(NATIVE_DB) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                "WITH (copy_data = false, enabled = false)"
            ).format(
                sql.Identifier(NATIVE),
                sql.Literal(ctx.source.dsn(SOURCE_DB)),
                sql.Identifier(NATIVE),
            )
        )


def setup_recv(ctx: Ctx) -> None:
    create_publication(ctx, RECV)
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (RECV,))


def setup(ctx: Ctx, args: argparse.Namespace) -> dict[str, float]:
    """Load the source and give every consumer the same starting point; return the step times."""
    times: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("load_source", lambda: load_source(ctx, args.scale, args.wide_rows)),
        ("pgmigrator_clone", lambda: setup_pgmigrator(ctx)),
        ("native_dump_restore", lambda: setup_native(ctx)),
        ("recvlogical_slot", lambda: setup_recv(ctx)),
    ]
    for step, fn in steps:
        say(f"setup: {step} ...")
        t0 = time.perf_counter()
        fn()
        times[step] = round(time.perf_counter() - t0, 1)
    return times


# --- workloads -----------------------------------------------------------------------------------


def run_pgbench(ctx: Ctx, args: list[str]) -> int:
    """Run pgbench on the source (asynchronous commit); return the transactions processed."""
    env = {**ctx.env, "PGOPTIONS": FAST_COMMIT}
    out = run_checked(
        [ctx.bin("pgbench"), *ctx.conn_args(ctx.source), *args, SOURCE_DB], env
    ).stdout
    found = PROCESSED_RE.search(out)
    if found is None:
        raise BenchError(f"no transaction count in pgbench's output: {out[-500:]}")
    return int(found.group(1))


def gen_tpcb(ctx: Ctx, args: argparse.Namespace) -> tuple[int, int]:
    txns = run_pgbench(ctx, ["-n", "-c2", "-j2", "-T", str(args.tpcb_seconds)])
    return txns, 4 * txns  # 3 updates and 1 insert a transaction


def gen_bulk(ctx: Ctx, args: argparse.Namespace) -> tuple[int, int]:
    per_txn, extra = divmod(args.bulk_rows, BULK_TXNS)
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute("SET synchronous_commit = off")
        for i in range(BULK_TXNS):
            conn.execute(wide_insert_sql(ctx.accounts, per_txn + (i < extra)))
    return BULK_TXNS, args.bulk_rows


def gen_single(ctx: Ctx, args: argparse.Namespace) -> tuple[int, int]:
    script = ctx.work / "single-insert.sql"
    script.write_text(wide_insert_sql(ctx.accounts, 1).strip() + ";\n")
    clients = 2 if args.single_txns % 2 == 0 else 1
    txns = run_pgbench(
        ctx,
        [
            "-n",
            "-M",
            "prepared",
            f"-c{clients}",
            f"-j{clients}",
            "-t",
            str(args.single_txns // clients),
            "-f",
            str(script),
        ],
    )
    if txns != args.single_txns:
        raise BenchError(f"pgbench ran {txns} single-row transactions, not {args.single_txns}")
    return txns, txns


GENERATORS: dict[str, Callable[[Ctx, argparse.Namespace], tuple[int, int]]] = {
    "a": gen_tpcb,
    "b": gen_bulk,
    "c": gen_single,
}


def write_backlog(ctx: Ctx, wl: Workload, args: argparse.Namespace) -> None:
    """Generate the workload, then the marker row; the WAL position after it is the target."""
    before = str(scalar(ctx.source, SOURCE_DB, "SELECT pg_current_wal_lsn()::text"))
    t0 = time.perf_counter()
    wl.txns, wl.rows = GENERATORS[wl.key](ctx, args)
    wl.generate_s = round(time.perf_counter() - t0, 1)
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute(
            f"INSERT INTO public.{MARKER} (id, workload) VALUES (%s, %s)",
            (list(WORKLOADS).index(wl.key) + 1, wl.name),
        )
        wl.target_lsn = str(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
    wl.wal_bytes = lsn_int(wl.target_lsn) - lsn_int(before)


# --- consumers -----------------------------------------------------------------------------------


def marker_seen(conn: psycopg.Connection[Any], wl: Workload) -> bool:
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM public.{MARKER} WHERE id = %s)",
        (list(WORKLOADS).index(wl.key) + 1,),
    ).fetchone()
    return bool(row and row[0])


def _proc_status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeProbe:
    """Peak RSS (VmHWM) and CPU of a process and its descendants, polled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._next_scan = 0.0

    def _tree(self) -> list[int]:
        pids, parents = [self.pid], {self.pid}
        for entry in Path("/proc").iterdir():
            try:
                ppid = int(
                    Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError, IndexError):
                continue
            if ppid in parents:
                pids.append(int(entry.name))
        return pids

    def poll(self) -> None:
        """Main process every call; its children (a /proc scan) at most once a second."""
        now = time.monotonic()
        pids = [self.pid]
        if now >= self._next_scan:
            self._next_scan = now + 1.0
            pids = self._tree()
        for pid in pids:
            self.peaks[pid] = max(self.peaks.get(pid, 0), _proc_status_kb(pid, "VmHWM"))

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)


def proc_times(pid: int | None) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process so far ((0, 0) when it is gone)."""
    fields = proc_fields(str(pid)) if pid is not None else None
    if fields is None:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    return proc_times(pid)[0]


def tcp_segments() -> int:
    """TCP segments sent so far in this network namespace (``Tcp: OutSegs``, /proc/net/snmp)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("Tcp:"):
            return int(dict(zip(head.split(), vals.split(), strict=False))["OutSegs"])
    return 0


def proc_waits(pid: int) -> int:
    """Voluntary context switches of a process so far: how often it went to sleep."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_")), 0
    )


def start_follow(ctx: Ctx, err: IO[str]) -> subprocess.Popen[str]:
    """``pgmigrator follow`` on the benchmark's clusters, its log to ``err``."""
    return subprocess.Popen(
        [*PGMIGRATOR, "follow", *pgm_args(ctx)],
        env=ctx.env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )


def stop_follow(proc: subprocess.Popen[str], log: Path) -> str:
    """SIGINT the follow process, wait for it; return its stdout; BenchError on a bad exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(
            f"pgmigrator follow ignored SIGINT for {STOP_TIMEOUT_S:.0f} s; killed"
        ) from None
    if proc.returncode != 0:
        raise BenchError(f"pgmigrator follow exited {proc.returncode}:\n{log_tail(log)}")
    return out


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def follow_running(proc: subprocess.Popen[str], probe: TreeProbe, log: Path) -> Callable[[], None]:
    def tick() -> None:
        if proc.poll() is not None:
            raise BenchError(
                f"pgmigrator follow exited early ({proc.returncode}):\n{log_tail(log)}"
            )
        probe.poll()

    return tick


def drain_pgmigrator(ctx: Ctx, wl: Workload, d: Drain) -> None:
    """Start ``pgmigrator follow``, time it until the marker row is on the destination, stop it."""
    log = ctx.work / f"follow-{wl.key}.log"
    with log.open("w") as err, ctx.dest.connect(PGM_DB) as dst:
        launched, t0 = time.time(), time.perf_counter()
        proc = start_follow(ctx, err)
        try:
            probe = TreeProbe(proc.pid)
            wait_for(
                lambda: marker_seen(dst, wl),
                "pgmigrator to apply the marker",
                follow_running(proc, probe, log),
            )
            d.seconds = time.perf_counter() - t0
            probe.poll()
            d.client_cpu_s = round(probe.cpu_s(), 2)
            d.notes.append(
                f"consumer: {proc_times(proc.pid)[1]:.2f} s kernel, {proc_waits(proc.pid):,} sleeps"
            )
            d.peak_rss_kb = sum(probe.peaks.values())
        finally:
            out = stop_follow(proc, log)
        d.reached_lsn = str(
            dst.execute(
                "SELECT pg_replication_origin_progress(%s, true)::text", (PGM_ORIGIN,)
            ).fetchone()[0]
        )  # type: ignore[index]
    text = log.read_text(errors="replace")
    if (first := STREAMING_RE.search(text)) is not None:
        at = datetime.strptime(first.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        d.startup_s = round(at.timestamp() - launched, 2)
    d.notes += [ln for ln in text.splitlines() if " info " not in ln][:20]
    d.notes += [m.group(0) for m in STOPPED_RE.finditer(out)]
    if len(probe.peaks) > 1:
        d.notes.append(f"peak RSS summed over {len(probe.peaks)} processes")


def native_state(conn: psycopg.Connection[Any]) -> tuple[bool, int]:
    """(apply worker running, apply errors so far) of the native subscription."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_stat_subscription WHERE subname = %s AND pid IS NOT NULL),"
        " (SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = %s)",
        (NATIVE, NATIVE),
    ).fetchone()
    return (bool(row and row[0]), int(row[1] or 0) if row else 0)


def drain_native(ctx: Ctx, wl: Workload, d: Drain) -> None:
    """ENABLE the subscription, time it until the marker row is there, DISABLE it again."""
    with ctx.dest.connect(NATIVE_DB) as dst:
        errors_before = native_state(dst)[1]

        def tick() -> None:
            if native_state(dst)[1] > errors_before:
                raise BenchError(
                    "the native apply worker failed (see the destination's server log)"
                )

        t0 = time.perf_counter()
        dst.execute(f"ALTER SUBSCRIPTION {NATIVE} ENABLE")
        try:
            wait_for(lambda: marker_seen(dst, wl), "the subscription to apply the marker", tick)
            d.seconds = time.perf_counter() - t0
        finally:
            dst.execute(f"ALTER SUBSCRIPTION {NATIVE} DISABLE")
        wait_for(
            lambda: not native_state(dst)[0], "the apply worker to stop", timeout=STOP_TIMEOUT_S
        )
        d.reached_lsn = str(
            dst.execute(
                "SELECT pg_replication_origin_progress('pg_' || oid, true)::text "
                "FROM pg_subscription WHERE subname = %s",
                (NATIVE,),
            ).fetchone()[0]
        )  # type: ignore[index]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain_recv(ctx: Ctx, wl: Workload, d: Drain) -> None:
    """``pg_recvlogical --endpos <target>`` to /dev/null: exits by itself once it reaches the target."""
    cmd = [
        ctx.bin("pg_recvlogical"),
        *ctx.conn_args(ctx.source),
        "-d",
        SOURCE_DB,
        "--slot",
        RECV,
        "--start",
        "--no-loop",
        "-o",
        "proto_version=2",
        "-o",
        f"publication_names={RECV}",
        "-f",
        "/dev/null",
        "--endpos",
        wl.target_lsn,
    ]
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    run_checked(cmd, ctx.env, ctx.work / f"recvlogical-{wl.key}.log", timeout=DRAIN_TIMEOUT_S)
    d.seconds = time.perf_counter() - t0
    d.client_cpu_s = round(children_cpu_s() - cpu0, 2)
    d.reached_lsn = str(
        scalar(
            ctx.source,
            SOURCE_DB,
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
            f"WHERE slot_name = '{RECV}'",
        )
    )


DRAINERS: dict[str, Callable[[Ctx, Workload, Drain], None]] = {
    "pgmigrator": drain_pgmigrator,
    "native": drain_native,
    "pg_recvlogical": drain_recv,
}


SLOTS = {"pgmigrator": PGM_ORIGIN, "native": NATIVE, "pg_recvlogical": RECV}


def slot_redecode_mib(ctx: Ctx, slot: str) -> float:
    """WAL between the slot's restart point and its confirmed position: decoded again, unsent."""
    with ctx.source.connect(SOURCE_DB) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return float(row[0] or 0) / 2**20 if row else 0.0


class WalsenderProbe:
    """CPU of the walsender(s) serving one slot, polled every 50 ms on a thread of its own.

    The walsender starts when its consumer connects and exits when it leaves, so its last
    reading before it went is kept (the CPU of its final 50 ms may be missed).
    """

    def __init__(self, source: Cluster, slot: str) -> None:
        self.source, self.slot = source, slot
        self.seen: dict[int, tuple[float, float, int]] = {}  # pid: (cpu s, sys s, sleeps)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walsender-probe", daemon=True)

    def __enter__(self) -> WalsenderProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_s(self) -> float:
        return sum(v[0] for v in self.seen.values())

    def sys_s(self) -> float:
        return sum(v[1] for v in self.seen.values())

    def waits(self) -> int:
        return sum(v[2] for v in self.seen.values())

    def _run(self) -> None:
        with self.source.connect(SOURCE_DB) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
                ).fetchone()
                for pid in list(self.seen) + ([row[0]] if row and row[0] else []):
                    cpu, kernel = proc_times(pid)
                    if cpu > 0:
                        self.seen[pid] = (cpu, kernel, proc_waits(pid))
                self._stop.wait(0.05)


def drain(ctx: Ctx, wl: Workload, tool: str) -> Drain:
    d = Drain(tool)
    settle(ctx)
    checkpoint(ctx.source, ctx.dest)
    meter = LoadMeter((ctx.source, ctx.dest))
    servers = {postmaster_pid(ctx.source)}, {postmaster_pid(ctx.dest)}
    before = [server_cpu_s(pids) for pids in servers]
    sender = WalsenderProbe(ctx.source, SLOTS[tool])
    d.notes.append(f"slot: {slot_redecode_mib(ctx, SLOTS[tool]):.0f} MiB of WAL decoded again")
    segments = tcp_segments()
    try:
        with sender:
            DRAINERS[tool](ctx, wl, d)
    except (BenchError, subprocess.SubprocessError, OSError, psycopg.Error) as exc:
        d.error = str(exc)
    d.walsender_cpu_s = round(sender.cpu_s(), 2)
    d.tcp_segments = tcp_segments() - segments
    d.walsender_sys_s, d.walsender_waits = round(sender.sys_s(), 2), sender.waits()
    d.source_cpu_s, d.dest_cpu_s = (
        round(server_cpu_s(pids) - cpu, 2) for pids, cpu in zip(servers, before, strict=True)
    )
    d.other_cpu_pct = meter.other_pct()
    if d.seconds is not None:
        d.seconds = round(d.seconds, 2)
        d.rows_per_s = round(wl.rows / d.seconds) if d.seconds else None
    if (
        d.reached_lsn
        and d.reached_lsn != "None"
        and lsn_int(d.reached_lsn) < lsn_int(wl.target_lsn)
    ):
        d.notes.append(
            f"progress {d.reached_lsn} is behind the target {wl.target_lsn} "
            "(the position moves only on commits it decoded; the marker is what counts)"
        )
    status = f"FAILED: {d.error}" if d.error else f"{d.seconds:.1f} s, {d.rows_per_s:,} rows/s"
    say(f"  {tool}: {status} (other% {d.other_cpu_pct})")
    return d


# --- verification, workload loop -----------------------------------------------------------------


def checks(cluster: Cluster, db: str) -> dict[str, list[str]]:
    with cluster.connect(db) as conn:
        return {
            name: [str(v) for v in conn.execute(q).fetchone() or ()] for name, q in CHECKS.items()
        }


def verify(ctx: Ctx, wl: Workload) -> None:
    """Each applying consumer's destination must equal the source (counts and sums)."""
    wl.source_checks = checks(ctx.source, SOURCE_DB)
    for tool, db in (("pgmigrator", PGM_DB), ("native", NATIVE_DB)):
        d = wl.drains.get(tool)
        if d is None or d.error:
            continue
        got = checks(ctx.dest, db)
        wrong = {k: (got[k], v) for k, v in wl.source_checks.items() if got[k] != v}
        if wrong:
            d.error = f"destination {db} differs from the source (got, expected): {wrong}"
            say(f"  {tool}: {d.error}")


def run_workload(ctx: Ctx, key: str, args: argparse.Namespace) -> Workload:
    wl = Workload(key, WORKLOADS[key])
    say(f"workload {key} ({wl.name}): writing the backlog ...")
    try:
        write_backlog(ctx, wl, args)
    except (BenchError, subprocess.SubprocessError, OSError, psycopg.Error) as exc:
        wl.error = str(exc)
        say(f"  FAILED: {exc}")
        return wl
    say(
        f"  {wl.txns:,} transactions, {wl.rows:,} rows, {wl.wal_bytes / 2**20:,.0f} MiB of WAL in "
        f"{wl.generate_s} s; target {wl.target_lsn}"
    )
    for tool in TOOLS:
        wl.drains[tool] = drain(ctx, wl, tool)
    verify(ctx, wl)
    return wl


# --- output --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(workloads: list[Workload]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for wl in workloads:
        secs = {t: (d.seconds if not d.error else None) for t, d in wl.drains.items()}
        pgm = wl.drains.get("pgmigrator")
        rows[wl.key] = {
            "name": wl.name,
            "txns": wl.txns,
            "rows": wl.rows,
            "seconds": secs,
            "native_over_pgmigrator": ratio(secs.get("native"), secs.get("pgmigrator")),
            "pgmigrator_over_recvlogical": ratio(
                secs.get("pgmigrator"), secs.get("pg_recvlogical")
            ),
            "pgmigrator_peak_rss_mib": round(pgm.peak_rss_kb / 1024, 1)
            if pgm and pgm.peak_rss_kb
            else None,
            "max_other_cpu_pct": max(
                (d.other_cpu_pct or 0 for d in wl.drains.values()), default=None
            ),
        }
        r = rows[wl.key]["pgmigrator_over_recvlogical"]
        rows[wl.key]["recv_ratio_ok"] = r is not None and r <= TARGET_RECV_RATIO
    return {
        "per_workload": rows,
        "recv_ratio_target_max": TARGET_RECV_RATIO,
        "errors": sum(
            bool(wl.error) + sum(bool(d.error) for d in wl.drains.values()) for wl in workloads
        ),
    }


def label(wl: Workload, args: argparse.Namespace) -> str:
    return {"a": f"a tpcb {args.tpcb_seconds}s", "b": f"b bulk/{BULK_TXNS}tx", "c": "c single-row"}[
        wl.key
    ]


def cpu_cells(d: Drain | None) -> str:
    if d is None:
        return "-"
    cells = (d.client_cpu_s, d.walsender_cpu_s, d.source_cpu_s, d.dest_cpu_s)
    return "/".join(fmt(v, ".1f") for v in cells)


def walsender_cells(d: Drain | None) -> str:
    if d is None:
        return "-"
    return "/".join(
        (fmt(d.walsender_sys_s, ".2f"), fmt(d.walsender_waits, ","), fmt(d.tcp_segments, ","))
    )


def print_report(
    workloads: list[Workload], summary: dict[str, Any], args: argparse.Namespace
) -> None:
    print(
        f"\n{'workload':<15}{'txns':>9}{'rows':>10}{'pgm s':>8}{'native s':>9}{'recv s':>8}"
        f"{'nat/pgm':>8}{'pgm/recv':>9}{'peak RSS':>10}{'other%':>7}"
    )
    for wl in workloads:
        s = summary["per_workload"][wl.key]
        secs = s["seconds"]
        rss = f"{s['pgmigrator_peak_rss_mib']:.0f} MiB" if s["pgmigrator_peak_rss_mib"] else "-"
        print(
            f"{label(wl, args):<15}{wl.txns:>9,}{wl.rows:>10,}{fmt(secs.get('pgmigrator')):>8}"
            f"{fmt(secs.get('native')):>9}{fmt(secs.get('pg_recvlogical')):>8}"
            f"{fmt(s['native_over_pgmigrator'], '.2f'):>8}{fmt(s['pgmigrator_over_recvlogical'], '.2f'):>9}"
            f"{rss:>10}{fmt(s['max_other_cpu_pct']):>7}"
        )
    print(f"\n{'rows/s':<15}" + "".join(f"{t:>16}" for t in TOOLS) + f"{'pgm startup s':>15}")
    for wl in workloads:
        pgm = wl.drains.get("pgmigrator")
        print(
            f"{label(wl, args):<15}"
            + "".join(
                f"{fmt(wl.drains[t].rows_per_s, ',.0f') if t in wl.drains else '-':>16}"
                for t in TOOLS
            )
            + f"{fmt(pgm.startup_s if pgm else None, '.2f'):>15}"
        )
    print(f"\n{'CPU s':<15}" + "".join(f"{t + ' c/w/s/d':>24}" for t in TOOLS))
    for wl in workloads:
        print(
            f"{label(wl, args):<15}" + "".join(f"{cpu_cells(wl.drains.get(t)):>24}" for t in TOOLS)
        )
    print(f"\n{'walsender':<15}" + "".join(f"{t + ' sys/sleeps/segs':>28}" for t in TOOLS))
    for wl in workloads:
        print(
            f"{label(wl, args):<15}"
            + "".join(f"{walsender_cells(wl.drains.get(t)):>28}" for t in TOOLS)
        )
    print(
        "(c/w/s/d: CPU of the consumer process / its walsender / the source's server processes"
        " (walsender included) / the destination's;"
        " native's consumer is its apply worker, in d; walsender: its kernel CPU s, how often it slept, TCP segments sent on the machine)"
    )
    print(
        f"\nnative/pgmigrator > 1: pgmigrator faster.  pgmigrator/pg_recvlogical target <= {TARGET_RECV_RATIO}: "
        + ", ".join(
            f"{k} {'OK' if v['recv_ratio_ok'] else 'MISSED'}"
            for k, v in summary["per_workload"].items()
        )
    )
    for wl in workloads:
        problems = [f"{t}: {d.error}" for t, d in wl.drains.items() if d.error] + (
            [wl.error] if wl.error else []
        )
        for problem in problems:
            print(f"ERROR {wl.key}: {problem.splitlines()[0][:200]}")
    noisy = [
        f"{wl.key}/{t}"
        for wl in workloads
        for t, d in wl.drains.items()
        if (d.other_cpu_pct or 0) > NOISY_PCT
    ]
    if noisy:
        print(
            f"\nWARNING: other processes used more than {NOISY_PCT:.0f}% of the CPU during {', '.join(noisy)} "
            "(column other%: the highest of the three drains): times are inflated; rerun on an idle machine"
        )


def git_state() -> str:
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [ln[3:] for ln in dirty if ln.strip()]
    return rev + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def collect_facts(ctx: Ctx, args: argparse.Namespace, setup_s: dict[str, float]) -> dict[str, Any]:
    return {
        **vars(args),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "server_version": scalar(ctx.source, "postgres", "SHOW server_version"),
        "bindir": str(ctx.source.bindir),
        "pgmigrator": git_state(),
        "setup_s": setup_s,
        "tables": ctx.tables,
        "source_db_bytes": scalar(
            ctx.source, SOURCE_DB, "SELECT pg_database_size(current_database())"
        ),
    }


# --- main ----------------------------------------------------------------------------------------


@contextmanager
def bench_clusters(work: Path, scale: int, keep: bool) -> Iterator[Ctx]:
    """A source and a destination cluster under ``work``, stopped (``keep``) or destroyed after."""
    say(f"starting clusters under {work} ...")
    source, dest = devcluster.start_pair(work, CLUSTER_SETTINGS)
    try:
        env = {
            **os.environ,
            "PGPASSWORD": devcluster.PASSWORD,
            "TMPDIR": str(work),
            "PATH": f"{source.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PGMIGRATOR_STATE_DIR": str(work / "state"),
        }
        yield Ctx(source, dest, work, env, scale * 100_000)
    finally:
        for cluster in (source, dest):
            if keep:
                cluster.stop("fast")
            else:
                cluster.destroy()


def run_all(
    args: argparse.Namespace, keys: list[str], work: Path
) -> tuple[list[Workload], dict[str, Any]]:
    with bench_clusters(work, args.scale, args.keep) as ctx:
        facts = collect_facts(ctx, args, setup(ctx, args))
        workloads = [run_workload(ctx, key, args) for key in keys]
    return workloads, facts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    if not keys or set(keys) - set(WORKLOADS):
        print(
            f"--workloads takes a comma-separated subset of {','.join(WORKLOADS)}", file=sys.stderr
        )
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    precompile()
    work = Path(tempfile.mkdtemp(prefix="pgm-bench-follow-"))
    try:
        workloads, facts = run_all(args, keys, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(workloads)
    print_report(workloads, summary, args)
    print(f"\nresults: {write_json('follow', ('workloads', workloads), summary, facts, stamp)}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
