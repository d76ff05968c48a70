"""Steady-state benchmark: replication delay and the source's cost, pgmigrator against native.

Issue 3's steady-state half of the follow benchmark. Two throwaway clusters, the source loaded as
in ``bench/follow.py`` (pgbench tables and the wide table) plus a heartbeat table; pgmigrator
(``clone`` into ``follow_pgm``) and native logical replication (a subscription into
``follow_native``) both start from the same rows. Each destination's heartbeat table has one more
column, ``applied_at timestamptz DEFAULT clock_timestamp()``, which the applier (either one)
leaves to its default: the row's ``applied_at - sent_at`` is its replication delay (one machine,
one clock). Then, for ``--rounds`` rounds, three phases of ``--seconds`` each run the same load
on the source, ``pgbench -n -c2 -j2`` (TPC-B, synchronous commit) plus one heartbeat row every
``1/--rate`` s:

``none``        no consumer running: the source's own throughput
``pgmigrator``  ``pgmigrator follow`` running (caught up before the phase starts)
``native``      the subscription enabled (caught up before the phase starts)

Reported per consumer: the heartbeat delay's p50 / p95 / p99 / max, the source's throughput and its
cost against ``none`` (1 - tps / tps_none), pgmigrator's peak RSS. Targets (issue 3): pgmigrator's
p99 within 2x native's, and a cost to the source no bigger than native's. Results go to stdout and
``bench/results/steady-<timestamp>.json``.

Run: ``.venv/bin/python bench/steady.py``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from clone import BenchError, fmt, precompile, run_checked, write_json
from follow import (
    NATIVE,
    NATIVE_DB,
    PGM_DB,
    PROCESSED_RE,
    SOURCE_DB,
    Ctx,
    TreeProbe,
    bench_clusters,
    checkpoint,
    load_source,
    native_state,
    proc_cpu_s,
    say,
    setup_native,
    setup_pgmigrator,
    start_follow,
    stop_follow,
    wait_for,
)

HEARTBEAT = "bench_heartbeat"
TARGET_P99_RATIO = 2.0
CATCH_UP_TIMEOUT_S = 300.0


@dataclass
class Phase:
    consumer: str
    round: int
    tps: float = 0.0
    delays_ms: list[float] = field(default_factory=list)
    peak_rss_kb: int | None = None
    consumer_cpu_s: float | None = None  # follow process / native apply worker, during the load
    walsender_cpu_s: float | None = None
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=int, default=20, help="length of each phase (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="heartbeat rows per second (20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three phases (2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale of the source (10)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and clusters")
    return p.parse_args(argv)


def add_heartbeat(ctx: Ctx) -> None:
    """The heartbeat table on the source, before either consumer copies the schema."""
    with ctx.source.connect(SOURCE_DB) as conn:
        conn.execute(
            f"CREATE TABLE public.{HEARTBEAT} (id bigserial PRIMARY KEY, "
            "sent_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    ctx.tables.append(HEARTBEAT)


def stamp_destinations(ctx: Ctx) -> None:
    """The destination-only column each applier leaves to its default: when the row arrived."""
    for db in (PGM_DB, NATIVE_DB):
        with ctx.dest.connect(db) as conn:
            conn.execute(
                f"ALTER TABLE public.{HEARTBEAT} "
                "ADD COLUMN applied_at timestamptz DEFAULT clock_timestamp()"
            )


class Heartbeat(threading.Thread):
    """Inserts one heartbeat row every 1/rate seconds until stopped; remembers the ids."""

    def __init__(self, ctx: Ctx, rate: float) -> None:
        super().__init__(daemon=True)
        self.ctx, self.interval = ctx, 1.0 / rate
        self.ids: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.ctx.source.connect(SOURCE_DB) as conn:
                conn.autocommit = True
                due = time.monotonic()
                while not self.stop.is_set():
                    row = conn.execute(
                        f"INSERT INTO public.{HEARTBEAT} DEFAULT VALUES RETURNING id"
                    ).fetchone()
                    self.ids.append(int(row[0]))  # type: ignore[index]
                    due += self.interval
                    self.stop.wait(max(0.0, due - time.monotonic()))  # the load's pacing
        except BaseException as exc:  # reported by the phase
            self.error = exc


def run_load(ctx: Ctx, seconds: int, rate: float) -> tuple[float, list[int]]:
    """pgbench -c2 for ``seconds`` with the heartbeat beside it: (tps, heartbeat ids)."""
    beat = Heartbeat(ctx, rate)
    beat.start()
    try:
        out = run_checked(
            [
                ctx.bin("pgbench"),
                *ctx.conn_args(ctx.source),
                "-n",
                "-c2",
                "-j2",
                "-T",
                str(seconds),
                SOURCE_DB,
            ],
            ctx.env,
        ).stdout
    finally:
        beat.stop.set()
        beat.join()
    if beat.error is not None:
        raise BenchError(f"heartbeat failed: {beat.error}")
    found = PROCESSED_RE.search(out)
    if found is None:
        raise BenchError(f"no transaction count in pgbench's output: {out[-500:]}")
    return int(found.group(1)) / seconds, beat.ids


def backend_pid(ctx: Ctx, side: str) -> int | None:
    """The walsender's PID on the source, or the native apply worker's on the destination."""
    if side == "walsender":
        with ctx.source.connect(SOURCE_DB) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_replication ORDER BY backend_start DESC LIMIT 1"
            ).fetchone()
    else:
        with ctx.dest.connect(NATIVE_DB) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_subscription WHERE subname = %s AND relid IS NULL",
                (NATIVE,),
            ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def measured_load(
    ctx: Ctx, args: argparse.Namespace, ph: Phase, consumer_pid: int | None
) -> list[int]:
    """`run_load`, with the CPU the consumer and its walsender spent meanwhile."""
    sender = backend_pid(ctx, "walsender")
    before = proc_cpu_s(consumer_pid), proc_cpu_s(sender)
    ph.tps, ids = run_load(ctx, args.seconds, args.rate)
    ph.consumer_cpu_s = round(proc_cpu_s(consumer_pid) - before[0], 2)
    ph.walsender_cpu_s = round(proc_cpu_s(sender) - before[1], 2)
    return ids


def last_heartbeat_on(ctx: Ctx, db: str) -> int:
    with ctx.dest.connect(db) as conn:
        row = conn.execute(f"SELECT coalesce(max(id), 0) FROM public.{HEARTBEAT}").fetchone()
    return int(row[0]) if row else 0


def caught_up(ctx: Ctx, db: str, tick: Any = None) -> None:
    """Write one heartbeat row and wait until ``db`` has it: everything before is applied."""
    with ctx.source.connect(SOURCE_DB) as conn:
        row = conn.execute(f"INSERT INTO public.{HEARTBEAT} DEFAULT VALUES RETURNING id").fetchone()
    target = int(row[0])  # type: ignore[index]
    wait_for(lambda: last_heartbeat_on(ctx, db) >= target, f"{db} to catch up", tick)


def delays(ctx: Ctx, db: str, ids: list[int]) -> list[float]:
    with ctx.dest.connect(db) as conn:
        rows = conn.execute(
            f"SELECT extract(epoch FROM applied_at - sent_at) * 1000 FROM public.{HEARTBEAT} "
            "WHERE id BETWEEN %s AND %s ORDER BY id",
            (min(ids), max(ids)),
        ).fetchall()
    if len(rows) != len(ids):
        raise BenchError(f"{db}: {len(rows)} heartbeat rows arrived of {len(ids)}")
    return [float(r[0]) for r in rows]


def phase_none(ctx: Ctx, args: argparse.Namespace, ph: Phase) -> None:
    ph.tps, _ = run_load(ctx, args.seconds, args.rate)


def phase_pgmigrator(ctx: Ctx, args: argparse.Namespace, ph: Phase) -> None:
    log = ctx.work / f"follow-{ph.round}.log"
    with log.open("w") as err:
        proc = start_follow(ctx, err)
        probe = TreeProbe(proc.pid)
        try:
            caught_up(ctx, PGM_DB, probe.poll)
            ids = measured_load(ctx, args, ph, proc.pid)
            caught_up(ctx, PGM_DB, probe.poll)
            probe.poll()
            ph.peak_rss_kb = sum(probe.peaks.values())
        finally:
            stop_follow(proc, log)
    ph.delays_ms = delays(ctx, PGM_DB, ids)


def phase_native(ctx: Ctx, args: argparse.Namespace, ph: Phase) -> None:
    with ctx.dest.connect(NATIVE_DB) as dst:
        dst.execute(f"ALTER SUBSCRIPTION {NATIVE} ENABLE")
        try:
            caught_up(ctx, NATIVE_DB)
            ids = measured_load(ctx, args, ph, backend_pid(ctx, "apply worker"))
            caught_up(ctx, NATIVE_DB)
        finally:
            dst.execute(f"ALTER SUBSCRIPTION {NATIVE} DISABLE")
        wait_for(lambda: not native_state(dst)[0], "the apply worker to stop", timeout=60)
    ph.delays_ms = delays(ctx, NATIVE_DB, ids)


PHASES = {"none": phase_none, "pgmigrator": phase_pgmigrator, "native": phase_native}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(phases: list[Phase]) -> dict[str, Any]:
    def med(consumer: str, key: str) -> float | None:
        vals = [getattr(p, key) for p in phases if p.consumer == consumer and not p.error]
        return statistics.median(vals) if vals else None

    out: dict[str, Any] = {"errors": [p.error for p in phases if p.error]}
    tps_none = med("none", "tps")
    for consumer in ("pgmigrator", "native"):
        all_delays = [d for p in phases if p.consumer == consumer for d in p.delays_ms]
        tps = med(consumer, "tps")
        out[consumer] = {
            "tps": tps,
            "cost_pct": None if not tps or not tps_none else round(100 * (1 - tps / tps_none), 1),
            **{f"p{int(q * 100)}_ms": percentile(all_delays, q) for q in (0.5, 0.95, 0.99)},
            "max_ms": max(all_delays) if all_delays else None,
            "samples": len(all_delays),
            "cpu_s": med(consumer, "consumer_cpu_s"),
            "walsender_cpu_s": med(consumer, "walsender_cpu_s"),
        }
    out["tps_none"] = tps_none
    pgm, nat = out["pgmigrator"], out["native"]
    out["p99_ratio"] = (
        None if not pgm["p99_ms"] or not nat["p99_ms"] else round(pgm["p99_ms"] / nat["p99_ms"], 2)
    )
    return out


def print_report(phases: list[Phase], summary: dict[str, Any]) -> None:
    print(
        f"\n{'phase':<12}{'round':>6}{'tps':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'cpu s':>8}{'wsnd s':>8}  error"
    )
    for p in phases:
        print(
            f"{p.consumer:<12}{p.round:>6}{p.tps:>9.0f}{fmt(percentile(p.delays_ms, 0.5), '.2f'):>9}"
            f"{fmt(percentile(p.delays_ms, 0.99), '.2f'):>9}"
            f"{fmt(max(p.delays_ms) if p.delays_ms else None, '.2f'):>9}"
            f"{fmt(p.consumer_cpu_s, '.2f'):>8}{fmt(p.walsender_cpu_s, '.2f'):>8}  {p.error or ''}"
        )
    print(f"\nsource alone: {fmt(summary['tps_none'], '.0f')} tps")
    for consumer in ("pgmigrator", "native"):
        s = summary[consumer]
        print(
            f"{consumer:<11} delay p50 {fmt(s['p50_ms'], '.2f')} ms, p95 {fmt(s['p95_ms'], '.2f')}"
            f" ms, p99 {fmt(s['p99_ms'], '.2f')} ms, max {fmt(s['max_ms'], '.2f')} ms"
            f" ({s['samples']} rows); source {fmt(s['tps'], '.0f')} tps,"
            f" cost {fmt(s['cost_pct'], '.1f')}%; CPU {fmt(s['cpu_s'], '.1f')} s"
            f" (walsender {fmt(s['walsender_cpu_s'], '.1f')} s) a phase"
        )
    pgm, nat = summary["pgmigrator"], summary["native"]
    ok_p99 = summary["p99_ratio"] is not None and summary["p99_ratio"] <= TARGET_P99_RATIO
    ok_cost = (
        pgm["cost_pct"] is not None
        and nat["cost_pct"] is not None
        and pgm["cost_pct"] <= nat["cost_pct"]
    )
    print(
        f"\npgmigrator p99 / native p99 = {fmt(summary['p99_ratio'], '.2f')}"
        f"  (target <= {TARGET_P99_RATIO}: {'OK' if ok_p99 else 'MISSED'})"
    )
    print(
        f"source cost: pgmigrator {fmt(pgm['cost_pct'], '.1f')}%, native"
        f" {fmt(nat['cost_pct'], '.1f')}%  (target: no more than native's:"
        f" {'OK' if ok_cost else 'MISSED'})"
    )


def run_all(args: argparse.Namespace, work: Path) -> list[Phase]:
    with bench_clusters(work, args.scale, args.keep) as ctx:
        say("setup: source, pgmigrator clone, native dump/restore ...")
        load_source(ctx, args.scale, 10_000)
        add_heartbeat(ctx)
        setup_pgmigrator(ctx)
        setup_native(ctx)
        stamp_destinations(ctx)
        phases: list[Phase] = []
        for rnd in range(1, args.rounds + 1):
            for consumer, run in PHASES.items():
                ph = Phase(consumer, rnd)
                say(f"round {rnd}: {consumer} ({args.seconds} s) ...")
                # a timed checkpoint (every 5 min) inside one phase stalls its commits for 100 ms
                # and more: start every phase right after one, so none falls in a 20 s phase
                checkpoint(ctx.source, ctx.dest)
                try:
                    run(ctx, args, ph)
                except (BenchError, psycopg.Error, subprocess.SubprocessError) as exc:
                    ph.error = str(exc).strip().splitlines()[-1][:300]
                phases.append(ph)
        return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    precompile()
    work = Path(tempfile.mkdtemp(prefix="pgm-bench-steady-"))
    try:
        phases = run_all(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(phases)
    print_report(phases, summary)
    facts = {"seconds": args.seconds, "rate": args.rate, "rounds": args.rounds, "scale": args.scale}
    print(f"\nresults: {write_json('steady', ('phases', phases), summary, facts, stamp)}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
