"""``pgmigrator demo`` (``make demo``): a real migration between two throwaway local clusters.

Starts a source and a destination cluster under a project-local folder, loads pgbench tables plus
the sample schema with varied types, runs preflight and clone (with live progress), then streams
live changes with ``follow`` while pgbench writes to the source (the API and web dashboard are
served on a local port the whole time), waits until the destination has caught up, switches over
with a fence and a sentinel, and verifies both sides are equal.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import click

from pgmigrator import devcluster, sample
from pgmigrator.api.host import serving
from pgmigrator.config import Settings, load
from pgmigrator.dsn import Target
from pgmigrator.metrics import Collector
from pgmigrator.pipeline import preflight, verify
from pgmigrator.pipeline.clone import Clone, CloneOptions
from pgmigrator.pipeline.control import PipelineControl
from pgmigrator.pipeline.follow import Follow
from pgmigrator.pipeline.progress import Progress
from pgmigrator.pipeline.switchover import Switchover, SwitchoverOptions, render, unfence
from pgmigrator.pipeline.verify_live import LiveOptions


def run_demo(base: Path, scale: int, keep: bool, live_seconds: int = 10) -> None:
    if base.exists():
        for name in ("source", "dest"):
            if (base / name / "data").exists():
                devcluster.Cluster(name, base).stop("immediate")
        shutil.rmtree(base)
    click.echo(f"starting two throwaway PostgreSQL clusters in {base} ...")
    src_cluster, dst_cluster = devcluster.start_pair(base)
    try:
        source, dest = src_cluster.create_database("app"), dst_cluster.create_database("app")
        click.echo(
            f"loading sample data: pgbench scale {scale} plus a schema with varied types ..."
        )
        src_cluster.pgbench("app", "-i", "-q", "-s", str(scale))
        with src_cluster.connect("app") as conn:
            sample.load(conn, rows=20000)
            conn.execute("CREATE TABLE demo_marker (id int PRIMARY KEY)")
        click.echo("\n== preflight ==")
        click.echo(
            preflight.render(
                preflight.run(Target(source, "source"), Target(dest, "destination"), keyless="full")
            )
        )
        click.echo("\n== clone ==")
        settings = load(
            None,
            source=source,
            dest=dest,
            name="demo",
            keyless_tables="full",  # the sample's no_key table: REPLICA IDENTITY FULL, not refused
            state_dir=base / "state",
            api={"addr": "127.0.0.1:0", "token": "demo"},
        )
        collector = Collector("demo")
        control = PipelineControl(settings, collector)
        with serving(settings, collector, control) as hosted:
            if hosted.server is not None:
                click.echo(f"dashboard: {hosted.server.url}/  (API token: demo)")
            _clone_and_follow(
                settings, collector, control, (src_cluster, dst_cluster), live_seconds, base
            )
        click.echo("\n== verify ==")
        click.echo(
            verify.render(
                verify.verify(
                    Target(source, "source"), Target(dest, "destination"), large_objects=True
                )
            )
        )
        if keep:
            click.echo(
                f"\nclusters left running: source port {src_cluster.port}, destination port {dst_cluster.port}, "
                f"user postgres, database app (password: see pgmigrator.devcluster.PASSWORD)"
            )
    finally:
        if not keep:
            src_cluster.destroy()
            dst_cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)


def _clone_and_follow(
    settings: Settings,
    collector: Collector,
    control: PipelineControl,
    clusters: tuple[devcluster.Cluster, devcluster.Cluster],
    live_seconds: int,
    base: Path,
) -> None:
    result = Clone(settings, CloneOptions(), Progress(collector)).run()
    click.echo(
        f"copied {len(result.tables_copied)} tables, {result.rows:,} rows; slot {result.slot} at {result.consistent_lsn}"
    )
    click.echo(f"\n== follow: streaming live changes while pgbench writes for {live_seconds} s ==")
    follow = Follow(settings, collector)
    control.target = follow
    asyncio.run(_follow_live(follow, settings, collector, clusters, live_seconds, base))


async def _follow_live(
    follow: Follow,
    settings: Settings,
    collector: Collector,
    clusters: tuple[devcluster.Cluster, devcluster.Cluster],
    seconds: int,
    base: Path,
) -> None:
    src, dst = clusters
    task = asyncio.create_task(follow.run())
    bench = await asyncio.to_thread(
        subprocess.Popen,
        _pgbench_cmd(src, seconds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PGPASSWORD": devcluster.PASSWORD},
    )
    started, checked = time.monotonic(), False
    while bench.poll() is None:
        await asyncio.sleep(1)
        snap = collector.snapshot()
        click.echo(
            f"  applied {snap['applied_lsn']}  lag {snap['lag_formatted']}  {snap['rows_per_s']:.0f} rows/s"
        )
        if not checked and time.monotonic() - started > seconds / 2:
            checked = True
            click.echo(await asyncio.to_thread(_live_verify, settings))
    with src.connect("app") as conn:  # not streamed: the switchover copies it
        conn.execute("SELECT lo_put(body, 0, 'HELLO') FROM documents WHERE id = 1")
        conn.execute("INSERT INTO demo_marker VALUES (1)")
    started = time.monotonic()
    while not await asyncio.to_thread(_marker_seen, dst):
        if task.done():
            task.result()
        await asyncio.sleep(0.2)
    click.echo(
        f"  caught up {time.monotonic() - started:.1f} s after the writes stopped: "
        f"{follow.stats.transactions:,} transactions, {follow.stats.rows:,} rows applied"
    )
    click.echo("\n== switchover: fence the source, sentinel, sequences, large objects ==")
    options = SwitchoverOptions(fence=True, verify="none", report_path=base / "cutover.json")
    report = await asyncio.to_thread(Switchover(settings, options).run)
    click.echo(render(report))
    with src.connect("app") as conn:  # a demo: give the source its writes back
        unfence(conn)
    follow.request_stop()
    await task


def _live_verify(settings: Settings) -> str:
    """`verify --live` while pgbench writes: one line saying what it found."""
    checks, point = verify.verify_live(
        settings.source_target,
        settings.dest_target,
        LiveOptions(settings.name),
        workers=settings.workers,
    )
    return (
        f"  verify --live while pgbench writes: {verify.summary(checks)}, as of "
        f"{point.lsn} (writes to them waited {point.paused_s * 1000:.0f} ms)"
    )


def _pgbench_cmd(src: devcluster.Cluster, seconds: int) -> list[str]:
    return [
        str(src.bindir / "pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(src.port),
        "-U",
        devcluster.SUPERUSER,
        "-c",
        "2",
        "-T",
        str(seconds),
        "-n",
        "app",
    ]


def _marker_seen(dst: devcluster.Cluster) -> bool:
    with dst.connect("app") as conn:
        return bool(conn.execute("SELECT 1 FROM demo_marker").fetchone())
