"""``pgmigrator demo`` (``make demo``): a real migration between two throwaway local clusters.

Starts a source and a destination cluster under a project-local folder, loads pgbench tables plus
the sample schema with varied types, then runs preflight, clone (with live progress) and verify.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from pgmigrator import devcluster, sample
from pgmigrator.config import load
from pgmigrator.dsn import Target
from pgmigrator.pipeline import preflight, verify
from pgmigrator.pipeline.clone import Clone, CloneOptions
from pgmigrator.pipeline.progress import Progress


def run_demo(base: Path, scale: int, keep: bool) -> None:
    if base.exists():
        for name in ("source", "dest"):
            devcluster.Cluster(name, base).stop("immediate") if (
                base / name / "data"
            ).exists() else None
        shutil.rmtree(base)
    click.echo(f"starting two throwaway PostgreSQL clusters in {base} ...")
    src_cluster, dst_cluster = devcluster.start_pair(base)
    try:
        source = src_cluster.create_database("app")
        dest = dst_cluster.create_database("app")
        click.echo(
            f"loading sample data: pgbench scale {scale} plus a schema with varied types ..."
        )
        src_cluster.pgbench("app", "-i", "-q", "-s", str(scale))
        with src_cluster.connect("app") as conn:
            sample.load(conn, rows=20000)
        click.echo("\n== preflight ==")
        click.echo(
            preflight.render(preflight.run(Target(source, "source"), Target(dest, "destination")))
        )
        click.echo("\n== clone ==")
        settings = load(None, source=source, dest=dest, name="demo")
        result = Clone(settings, CloneOptions(), Progress()).run()
        click.echo(
            f"copied {len(result.tables_copied)} tables, {result.rows:,} rows; slot {result.slot} at {result.consistent_lsn}"
        )
        click.echo("\n== verify ==")
        click.echo(
            verify.render(verify.verify(Target(source, "source"), Target(dest, "destination")))
        )
        if keep:
            click.echo(
                f"\nclusters left running:\n  source: {devcluster.Cluster('source', base, port=src_cluster.port).dsn('app', password=None)}"
                f"\n  dest:   {devcluster.Cluster('dest', base, port=dst_cluster.port).dsn('app', password=None)}"
                f"\n  (password in {__name__}: devcluster.PASSWORD; stop with `pg_ctl -D {base}/source/data stop`)"
            )
    finally:
        if not keep:
            src_cluster.destroy()
            dst_cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)
