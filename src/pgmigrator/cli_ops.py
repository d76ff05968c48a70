"""Operations commands on a running or finished pipeline: ``pgmigrator verify`` and ``resync``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from pgmigrator.cli import common_options, handle_errors, load_settings
from pgmigrator.cli_schema import keyless_option, owner_options


@click.command()
@common_options
@click.argument("tables", nargs=-1, required=True)
@click.option(
    "--follower-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="seconds to wait for a running follower to reconnect",
)
@click.option(
    "--add",
    is_flag=True,
    help="also take tables the pipeline does not hold yet (created on both sides since the clone)",
)
@keyless_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def resync(
    config_file: Path | None,
    tables: tuple[str, ...],
    follower_timeout: float,
    add: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Copy TABLE(s) again under a fresh snapshot while the pipeline keeps streaming.

    TABLE is schema.table (globs allowed). A running follower reconnects once and skips the
    table's changes up to the new copy; an errored table is retried this way. With --add, a
    table created since the clone (on the destination too) joins the publication and is copied.
    """
    from pgmigrator.pipeline.resync import Resync

    settings = load_settings(config_file, **flags)
    done = Resync(settings, tables, follower_timeout, add=add).run()
    if as_json:
        rows = [
            {
                "table": r.table,
                "rows": r.rows,
                "bytes": r.bytes,
                "sync_lsn": str(r.sync_lsn),
                "follower_reconnected": r.follower_reconnected,
            }
            for r in done
        ]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for r in done:
        follower = ", follower reconnected" if r.follower_reconnected else ""
        click.echo(f"resynced {r.table}: {r.rows} row(s), sync LSN {r.sync_lsn}{follower}")


@click.command()
@common_options
@click.option("--tables", multiple=True, help="include pattern schema.table (glob), repeatable")
@click.option("--exclude", multiple=True, help="exclude pattern schema.table (glob), repeatable")
@click.option("--workers", type=int, help="tables checked in parallel")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--live",
    is_flag=True,
    help="check while the source is written to: line both sides up through the running "
    "follower (writes to the checked tables wait milliseconds)",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="--live: seconds to wait for the source's SHARE lock (3 attempts), and then, under "
    "it, for the follower (writers wait that long at most)",
)
@click.option(
    "--follower-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="--live: seconds the follower may take to apply a sentinel",
)
@click.option(
    "--schema",
    "with_schema",
    is_flag=True,
    help="also compare the schemas, object by object (pg_dump --schema-only of both sides)",
)
@owner_options
@handle_errors
def verify(
    config_file: Path | None,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    live: bool,
    lock_timeout: float,
    follower_timeout: float,
    with_schema: bool,
    **flags: Any,
) -> None:
    """Compare row counts and checksums of every table on both sides (and their schemas)."""
    from pgmigrator.pipeline import verify as vf
    from pgmigrator.pipeline.verify_live import LiveOptions

    settings = load_settings(
        config_file, tables=list(tables) or None, exclude=list(exclude) or None, **flags
    )
    settings.require("source", "dest")
    source, dest = (
        settings.source_target,
        settings.dest_target,
    )
    args = (settings.tables, settings.exclude, settings.workers)
    doc: dict[str, Any] = {}  # what --json prints besides the tables, with --live or --schema
    if live:
        options = LiveOptions(settings.name, lock_timeout, 3, follower_timeout)
        checks, point = vf.verify_live(source, dest, options, *args)
        doc["live"] = {
            "lsn": str(point.lsn),
            "writes_paused_s": round(point.paused_s, 4),
            "line_ups": point.groups,
        }
        if not as_json:
            groups = f", {point.groups} line-ups of up to 256 tables" if point.groups > 1 else ""
            click.echo(
                f"both sides as of source LSN {point.lsn} (writes to the checked tables "
                f"waited {point.paused_s:.3f} s{groups})"
            )
    else:
        checks = vf.verify(source, dest, *args, large_objects=settings.large_objects)
    failed = any(c.status != "ok" for c in checks)
    if with_schema:
        from pgmigrator.schema import compare

        result = compare.compare(
            source, dest, settings.tables, settings.exclude, settings.dump_options
        )
        doc["schema"] = result.to_dict()
        failed = failed or bool(result.differences)
    if as_json:
        found = [c.to_dict() for c in checks]
        out = {"tables": found, **doc} if doc else found
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(vf.render(checks))
        if with_schema:
            click.echo(compare.render(result))
    sys.exit(1 if failed else 0)
