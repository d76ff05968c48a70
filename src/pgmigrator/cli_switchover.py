"""``pgmigrator switchover`` and ``pgmigrator unfence``: the command-line side of the cutover."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pgmigrator.cli import common_options, handle_errors, load_settings
from pgmigrator.cli_schema import owner_options
from pgmigrator.errors import ConfigError


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise click.BadParameter(f"{text!r} is not a duration (examples: 90, 60s, 2m)")


def _size(text: str) -> int:
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "b": 1}
    low = text.lower().replace("i", "")
    for unit in ("kb", "mb", "gb", "b"):
        if low.endswith(unit) and low[: -len(unit)].isdigit():
            return int(low[: -len(unit)]) * units[unit]
    if low.isdigit():
        return int(low)
    raise click.BadParameter(f"{text!r} is not a size (examples: 67108864, 64MB, 1GB)")


@click.command()
@common_options
@click.option("--timeout", help="how long to wait for the sentinel (default 60s)")
@click.option(
    "--fence",
    is_flag=True,
    default=None,
    help="stop new writes on the source first (reversible: `pgmigrator unfence`)",
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation before fencing")
@click.option(
    "--verify",
    "verify_mode",
    type=click.Choice(["full", "sample", "none", "live"]),
    help="default full; live: full, before the fence, while the application still writes "
    "(see verify --live)",
)
@click.option(
    "--schema",
    "compare_schema",
    is_flag=True,
    default=None,
    help="first compare the schemas object by object (as verify --schema); a difference stops "
    "the switchover before the fence",
)
@owner_options
@click.option(
    "--sequence-margin",
    type=int,
    help="added to every synced sequence (default 1000)",
)
@click.option(
    "--max-lag",
    help="refuse when the follower is further behind (default 64MB)",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="cutover report file (JSON)"
)
@click.option(
    "--keep-fence-on-failure",
    is_flag=True,
    help="leave the source fenced when the switchover fails",
)
@handle_errors
def switchover(
    config_file: Path | None,
    timeout: str | None,
    fence: bool | None,
    yes: bool,
    verify_mode: str | None,
    compare_schema: bool | None,
    sequence_margin: int | None,
    max_lag: str | None,
    report_path: Path | None,
    keep_fence_on_failure: bool,
    **flags: Any,
) -> None:
    """Prove the destination has every source transaction (sentinel), sync sequences, verify, report."""
    from pgmigrator.pipeline import switchover as sw

    settings = load_settings(config_file, **flags)
    if (settings.switchover.fence if fence is None else fence) and not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                "--fence stops writes on the source: confirm with --yes when not on a terminal"
            )
        click.confirm(
            "Fence the source (new sessions read-only, open sessions terminated)?", abort=True
        )
    options = sw.SwitchoverOptions.from_settings(  # flags over the config's `switchover:`
        settings,
        timeout_s=None if timeout is None else _duration(timeout),
        fence=fence,
        keep_fence_on_failure=keep_fence_on_failure,
        verify=verify_mode,
        schema=compare_schema,
        sequence_margin=sequence_margin,
        max_lag_bytes=None if max_lag is None else _size(max_lag),
        report_path=report_path,
    )
    job = sw.Switchover(settings, options)
    try:
        report = job.run()
    finally:
        if job.report.sentinel_id or job.report.status != "running":
            click.echo(sw.render(job.report))
            if getattr(job, "report_file", None):
                click.echo(f"report written to {job.report_file}")
    if report.fenced:
        click.echo(
            "the source is still fenced (read-only for new sessions): undo with `pgmigrator unfence`"
        )


@click.command()
@common_options
@handle_errors
def unfence(config_file: Path | None, **flags: Any) -> None:
    """Undo `switchover --fence`: the source database accepts writes again."""
    from pgmigrator.pg import connect
    from pgmigrator.pipeline.switchover import unfence as do_unfence

    settings = load_settings(config_file, **flags)
    settings.require("source")
    with connect(settings.source_target) as src:
        for action in do_unfence(src):
            click.echo(action)
