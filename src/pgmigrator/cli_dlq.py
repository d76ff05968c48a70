"""``pgmigrator dlq list|show|replay|purge``: inspect and recover events a sink gave up on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from pgmigrator import config as configmod
from pgmigrator.cli import common_options, handle_errors, load_settings
from pgmigrator.dsn import Target
from pgmigrator.errors import ConfigError
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.stream.dlq import DeadLetterQueue, Filters
from pgmigrator.stream.settings import SinkConfig, parse_sink_spec

F = TypeVar("F", bound=Callable[..., Any])


def _filter_options(fn: F) -> F:
    options = [
        click.option("--sink", "sink_name", help="only entries of this sink"),
        click.option("--table", help="only entries of this table (schema.table)"),
        click.option(
            "--since", type=click.DateTime(), help="only entries that failed at or after this time"
        ),
        click.option("--id", "ids", type=int, multiple=True, help="only these entry ids"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _queue(settings: configmod.Settings) -> DeadLetterQueue:
    dsn = settings.dlq.dsn or settings.dest
    if not dsn:
        raise ConfigError(
            "no database for the dead-letter queue",
            hint="pass --dest (or set dlq.dsn / PGMIGRATOR_DLQ__DSN) to the database holding it",
        )
    return DeadLetterQueue(Target(dsn, "dead-letter queue"), settings.name)


def _filters(
    sink_name: str | None,
    table: str | None,
    since: datetime | None,
    ids: tuple[int, ...],
    replayed: bool | None = None,
) -> Filters:
    return Filters(sink_name, table, since, tuple(ids), replayed)


async def _with_queue(settings: configmod.Settings, work: Callable[[DeadLetterQueue], Any]) -> Any:
    queue = _queue(settings)
    try:
        return await work(queue)
    finally:
        await queue.close()


@click.group("dlq")
def dlq() -> None:
    """The dead-letter queue of stream/listen sinks: list, show, replay, purge."""


@dlq.command("list")
@common_options
@_filter_options
@click.option("--all", "show_all", is_flag=True, help="include entries already replayed")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def list_entries(
    config_file: Path | None,
    sink_name: str | None,
    table: str | None,
    since: datetime | None,
    ids: tuple[int, ...],
    show_all: bool,
    limit: int,
    as_json: bool,
    **flags: Any,
) -> None:
    """List dead-lettered events (pending ones unless --all)."""
    settings = load_settings(config_file, **flags)
    filters = _filters(sink_name, table, since, ids, None if show_all else False)
    rows = asyncio.run(_with_queue(settings, lambda q: q.entries(filters, limit)))
    if as_json:
        click.echo(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("the dead-letter queue is empty" + ("" if show_all else " (pending entries)"))
        return
    click.echo(
        f"{'id':>6}  {'sink':<12} {'table':<28} {'op':<2} {'lsn':<12} {'attempts':>8}  error"
    )
    for r in rows:
        table_name = f"{r['schema_name']}.{r['table_name']}" if r["table_name"] else "-"
        flag = " (replayed)" if r["replayed_at"] else ""
        click.echo(
            f"{r['id']:>6}  {r['sink']:<12} {table_name:<28} {r['op']:<2} {r['lsn']:<12} "
            f"{r['attempts']:>8}  {r['error'][:80]}{flag}"
        )


@dlq.command("show")
@common_options
@click.argument("entry_id", type=int)
@handle_errors
def show(config_file: Path | None, entry_id: int, **flags: Any) -> None:
    """Show one entry with its full event."""
    settings = load_settings(config_file, **flags)
    row = asyncio.run(_with_queue(settings, lambda q: q.show(entry_id)))
    click.echo(orjson.dumps(row, default=str, option=orjson.OPT_INDENT_2).decode())


def _replay_sink(settings: configmod.Settings, name: str | None, to: str | None) -> SinkConfig:
    if to:
        return parse_sink_spec(to)
    for entry in settings.sinks:
        if (entry.name or entry.type) == name:
            return entry
    known = ", ".join(e.name or e.type for e in settings.sinks) or "none configured"
    raise ConfigError(
        f"no sink to replay to: {name!r} is not a configured sink ({known})",
        hint="pass --config with the pipeline's sinks and --sink NAME, or --to TYPE:OPTIONS",
    )


@dlq.command("replay")
@common_options
@_filter_options
@click.option("--to", help="replay into this sink instead (TYPE:OPTIONS, as --sink of stream)")
@handle_errors
def replay(
    config_file: Path | None,
    sink_name: str | None,
    table: str | None,
    since: datetime | None,
    ids: tuple[int, ...],
    to: str | None,
    **flags: Any,
) -> None:
    """Re-send pending entries (in LSN order) to their sink, or to --to; mark them replayed."""
    settings = load_settings(config_file, **flags)
    if not sink_name and not to:
        raise ConfigError("say which entries to replay", hint="pass --sink NAME (and/or --to)")
    entry = _replay_sink(settings, sink_name, to)
    sink = build_sink(entry.type, entry.name or entry.type, entry.options(), SinkContext())
    filters = _filters(sink_name, table, since, ids)

    async def run(queue: DeadLetterQueue) -> int:
        await sink.start()
        try:
            return await queue.replay(filters, sink)
        finally:
            await sink.close()

    sent = asyncio.run(_with_queue(settings, run))
    click.echo(f"replayed {sent} event(s) to {entry.name or entry.type}")


@dlq.command("purge")
@common_options
@_filter_options
@click.option("--replayed", "only_replayed", is_flag=True, help="only entries already replayed")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@handle_errors
def purge(
    config_file: Path | None,
    sink_name: str | None,
    table: str | None,
    since: datetime | None,
    ids: tuple[int, ...],
    only_replayed: bool,
    yes: bool,
    **flags: Any,
) -> None:
    """Delete entries (those matching the filters; all of the pipeline's without any)."""
    settings = load_settings(config_file, **flags)
    filters = _filters(sink_name, table, since, ids, True if only_replayed else None)
    if not yes:
        click.confirm("delete the matching dead-letter entries for good?", abort=True)
    removed = asyncio.run(_with_queue(settings, lambda q: q.purge(filters)))
    click.echo(f"purged {removed} entr{'y' if removed == 1 else 'ies'}")
