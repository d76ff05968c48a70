"""``pgmigrator lake``: copy tables into Apache Iceberg and keep them current (`pgmigrator.lake`)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from pgmigrator.cli import _collector, common_options, handle_errors, load_settings
from pgmigrator.cli_observe import state_file
from pgmigrator.cli_schema import keyless_option
from pgmigrator.errors import PgMigratorError
from pgmigrator.lake.settings import LakeSettings

if TYPE_CHECKING:  # pyiceberg and pyarrow load only when the command runs
    from pgmigrator.lake.runner import LakePipeline, LakeResult
    from pgmigrator.lake.stream import StreamStats


@click.command()
@common_options
@click.option(
    "--warehouse",
    type=click.Path(path_type=Path),
    help="warehouse folder for Iceberg data and metadata",
)
@click.option(
    "--catalog",
    "catalog_url",
    help="SQLAlchemy URL of the Iceberg SQL catalog (default: sqlite file in the warehouse)",
)
@click.option("--tables", multiple=True, help="include pattern schema.table (glob), repeatable")
@click.option("--exclude", multiple=True, help="exclude pattern schema.table (glob), repeatable")
@click.option("--slot", help="replication slot name (default pgmigrator_lake_<name>)")
@click.option("--publication", help="publication name (default pgmigrator_lake_<name>)")
@click.option("--follow", is_flag=True, help="after the copy, stream changes until interrupted")
@click.option("--flush-interval", type=float, help="seconds between lake commits (default 5)")
@click.option("--max-rows", type=int, help="rows buffered before a lake commit (default 100000)")
@click.option("--reset", is_flag=True, help="drop the lake tables, slot and publication first")
@keyless_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@handle_errors
def lake(
    config_file: Path | None,
    warehouse: Path | None,
    catalog_url: str | None,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    slot: str | None,
    publication: str | None,
    follow: bool,
    flush_interval: float | None,
    max_rows: int | None,
    reset: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Copy source tables into Iceberg tables under one snapshot, then (--follow) stream changes."""

    settings = load_settings(
        config_file, tables=list(tables) or None, exclude=list(exclude) or None, **flags
    )
    settings.require("source")
    base = getattr(settings, "lake", None)  # the config file's `lake:` section
    values: dict[str, Any] = base.model_dump() if isinstance(base, LakeSettings) else {}
    overrides = {
        "warehouse": warehouse,
        "catalog": catalog_url,
        "flush_interval_s": flush_interval,
        "max_rows": max_rows,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    from pgmigrator.lake.runner import LakePipeline

    collector = _collector(settings)
    pipeline = LakePipeline(
        settings.source or "",
        LakeSettings.model_validate(values),
        name=settings.name,
        include=settings.tables,
        exclude=settings.exclude,
        slot=slot or settings.slot,
        publication=publication or settings.publication,
        collector=collector,
        keyless=settings.keyless_tables,
    )
    with state_file(settings, collector):  # `pgmigrator status --name NAME` reads it
        try:
            result = _run(pipeline, reset=reset, follow=follow)
        except PgMigratorError as exc:
            collector.set_phase("failed")
            collector.record_error(exc.message, component="lake")
            raise
        collector.set_phase("stopped")
    summary = result.to_dict()
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in summary.items() if k != "tables"))


def _run(pipeline: LakePipeline, *, reset: bool, follow: bool) -> LakeResult:
    result = pipeline.prepare(reset=reset)
    if result.copied is not None:
        click.echo(
            f"copied {result.copied.rows} rows of {result.copied.tables} tables at LSN {result.consistent_lsn}",
            err=True,
        )
    if follow:

        async def run() -> StreamStats:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, pipeline.request_stop)
            return await pipeline.follow()

        result.stream = asyncio.run(run())
    return result
