"""Operations commands on a running or finished pipeline: ``pgmigrator resync TABLE...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from pgmigrator.cli import common_options, handle_errors, load_settings
from pgmigrator.cli_schema import keyless_option


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
