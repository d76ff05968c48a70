"""The ``pgmigrator`` command line: a thin edge over the pipeline, config and metrics layers.

Every error raised on purpose is printed as a message and a hint, with a non-zero exit; never a
traceback (``--log-level debug`` shows one for unexpected errors).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from pgmigrator import config as configmod
from pgmigrator.cli_bidi import bidi_flags, bidi_options, run_bidi
from pgmigrator.cli_observe import api_flags, api_options, hosted_run, tui
from pgmigrator.cli_schema import keyless_option, owner_options, roles_option
from pgmigrator.errors import ConfigError, PgMigratorError
from pgmigrator.log import get_logger, setup_logging
from pgmigrator.runtime import tune_runtime

if TYPE_CHECKING:
    from pgmigrator.pipeline.control import PipelineControl

F = TypeVar("F", bound=Callable[..., Any])
log = get_logger("cli")


def common_options(fn: F) -> F:
    options = [
        click.option(
            "--config", "config_file", type=click.Path(path_type=Path), help="YAML config file"
        ),
        click.option("--name", help="pipeline name (default: default)"),
        click.option("--source", help="source connection string (or PGMIGRATOR_SOURCE)"),
        click.option("--dest", help="destination connection string (or PGMIGRATOR_DEST)"),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"]),
            help="log level",
        ),
        click.option("--log-format", type=click.Choice(["text", "json"]), help="log format"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_settings(config_file: Path | None, **flags: Any) -> configmod.Settings:
    settings = configmod.load(config_file, **flags)
    setup_logging(settings.log_level, settings.log_format)
    return settings


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgMigratorError as exc:
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            sys.exit(2 if isinstance(exc, ConfigError) else 1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: say so plainly, keep the traceback for --log-level debug
            logging.getLogger("pgmigrator").debug("unexpected error", exc_info=True)
            if _server_error(exc):
                sys.exit(1)
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            click.echo(
                "  hint: this is a bug in pgmigrator; re-run with --log-level debug for details and report it",
                err=True,
            )
            sys.exit(70)

    return wrapper  # type: ignore[return-value]


def _server_error(exc: Exception) -> bool:
    """Report a server error no step turned into one of ours (psycopg is imported lazily: if it
    is not loaded, ``exc`` is not one of its errors)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return False
    primary = exc.diag.message_primary or str(exc).strip() or type(exc).__name__
    click.echo(f"error: the server said: {primary}", err=True)
    hint = exc.diag.message_hint or "re-run with --log-level debug to see at which step"
    click.echo(f"  hint: {hint}", err=True)
    return True


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pgmigrator")
def main() -> None:
    """Move and stream PostgreSQL data without downtime."""
    tune_runtime()


@main.command()
@common_options
@click.option("--tables", multiple=True, help="include pattern schema.table (glob), repeatable")
@click.option("--exclude", multiple=True, help="exclude pattern schema.table (glob), repeatable")
@keyless_option
@owner_options
@roles_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@handle_errors
def preflight(
    config_file: Path | None,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Check both servers for everything that would block or weaken a migration."""
    from pgmigrator.pipeline import preflight as pf

    settings = load_settings(
        config_file, tables=list(tables) or None, exclude=list(exclude) or None, **flags
    )
    settings.require("source", "dest")
    checks = pf.run(
        settings.source_target,
        settings.dest_target,
        settings.tables,
        settings.exclude,
        keyless=settings.keyless_tables,
        owners=settings.owners,
        privileges=settings.privileges,
        copy_roles=settings.roles,
        tablespaces=settings.tablespaces,
        large_objects=settings.large_objects,
    )
    if as_json:
        click.echo(orjson.dumps([c.to_dict() for c in checks], option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(pf.render(checks))
    sys.exit(1 if any(c.status == pf.BLOCKER for c in checks) else 0)


@main.command()
@common_options
@click.option("--workers", type=int, help="parallel COPY workers (default: number of cores)")
@click.option("--tables", multiple=True, help="include pattern schema.table (glob), repeatable")
@click.option("--exclude", multiple=True, help="exclude pattern schema.table (glob), repeatable")
@click.option("--slot", help="replication slot name (default pgmigrator_<name>)")
@click.option("--publication", help="publication name (default pgmigrator_<name>)")
@click.option(
    "--resume", is_flag=True, help="continue an interrupted clone: copy only unfinished tables"
)
@click.option(
    "--drop-if-exists",
    is_flag=True,
    help="drop and recreate destination objects that already exist",
)
@keyless_option
@owner_options
@roles_option
@click.option(
    "--follow", "then_follow", is_flag=True, help="after the copy, stream changes until interrupted"
)
@bidi_options
@api_options
@handle_errors
def clone(
    config_file: Path | None,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    resume: bool,
    drop_if_exists: bool,
    then_follow: bool,
    tui: bool,
    **flags: Any,
) -> None:
    """Copy schema and rows under one snapshot; keep the slot for `follow` (or go on with --follow)."""
    from pgmigrator.pipeline.clone import Clone, CloneOptions
    from pgmigrator.pipeline.progress import Progress

    settings = load_settings(
        config_file,
        tables=list(tables) or None,
        exclude=list(exclude) or None,
        **bidi_flags(api_flags(flags)),
    )
    collector = _collector(settings)

    def body(control: PipelineControl) -> None:
        try:
            options = CloneOptions(resume=resume, drop_if_exists=drop_if_exists)
            result = Clone(settings, options, Progress(collector)).run()
        except PgMigratorError as exc:
            collector.set_phase("failed")
            collector.record_error(exc.message, component="clone")
            raise
        click.echo(
            f"clone complete: {len(result.tables_copied)} table(s) copied"
            + (f", {len(result.tables_skipped)} already done" if result.tables_skipped else "")
            + (
                "; following changes"
                if then_follow
                else f"; slot {result.slot} kept for `pgmigrator follow`"
            )
        )
        if then_follow:  # --bidirectional: the reverse slot starts now, after the copy
            (run_bidi if settings.bidi.enabled else _run_follow)(settings, collector, control)

    hosted_run(settings, collector, body, tui=tui)


def _collector(settings: configmod.Settings) -> Any:
    from pgmigrator.metrics import Collector
    from pgmigrator.metrics.logring import CollectorLogHandler

    collector = Collector(settings.name)
    shown = settings.redacted()
    collector.update_info({"source": shown["source"], "dest": shown["dest"]})
    logging.getLogger("pgmigrator").addHandler(CollectorLogHandler(collector, level=logging.INFO))
    return collector


def _run_follow(
    settings: configmod.Settings,
    collector: Any,
    control: PipelineControl | None = None,
    reload_from: tuple[Path, dict[str, Any]] | None = None,
) -> None:
    """Run a follower until stopped; with ``reload_from`` (config file, flags) it reloads live."""
    import asyncio
    import signal
    import threading

    from pgmigrator.pipeline.follow import Follow

    follow = Follow(settings, collector)
    if control is not None:
        control.target = follow

    async def main_task() -> Any:
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, follow.request_stop)
            loop.add_signal_handler(signal.SIGUSR1, _toggle_pause, follow)
        if reload_from is None:
            return await follow.run()
        from pgmigrator.stream.reload import ReloadWatcher

        watcher = ReloadWatcher(
            reload_from[0], reload_from[1], lambda: follow.settings, follow.reload, collector
        )
        return await watcher.alongside(follow.run(), follow.stop_event)

    try:
        stats = asyncio.run(main_task())
    except PgMigratorError as exc:
        collector.set_phase("failed")
        collector.record_error(exc.message, component="follow")
        raise
    click.echo(
        f"stopped: {stats.transactions} transaction(s), {stats.rows} row(s) applied up to"
        f" {follow.applied_lsn} in {stats.batches} destination transaction(s)"
    )


@main.command()
@common_options
@click.option("--slot", help="replication slot name (default pgmigrator_<name>)")
@click.option("--publication", help="publication name (default pgmigrator_<name>)")
@bidi_options
@api_options
@handle_errors
def follow(config_file: Path | None, tui: bool, **flags: Any) -> None:
    """Stream changes from the slot to the destination until interrupted (resumes where it stopped).

    SIGUSR1 pauses and resumes (as do the API and the TUI); SIGINT/SIGTERM stop cleanly.
    """
    flags = bidi_flags(api_flags(flags))
    settings = load_settings(config_file, **flags)
    collector = _collector(settings)
    if settings.bidi.enabled:  # both ways: pipeline/bidi.py
        hosted_run(settings, collector, lambda c: run_bidi(settings, collector, c), tui=tui)
        return
    reload_from = (config_file, flags) if config_file is not None else None
    hosted_run(
        settings, collector, lambda c: _run_follow(settings, collector, c, reload_from), tui=tui
    )


def _toggle_pause(follow: Any) -> None:
    """SIGUSR1: pause a running follower, resume a paused one."""
    try:
        follow.resume() if follow.lifecycle.paused else follow.pause()
    except PgMigratorError as exc:
        log.warning("pause/resume refused", reason=exc.message)


@main.command()
@click.option("--name", default="default", show_default=True, help="pipeline name")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    envvar="PGMIGRATOR_STATE_DIR",
    help="where state files live",
)
@click.option("--json", "as_json", is_flag=True, help="print the raw snapshot")
@click.option("--watch", is_flag=True, help="refresh every 2 s until interrupted")
@handle_errors
def status(name: str, state_dir: Path | None, as_json: bool, watch: bool) -> None:
    """Show a pipeline's state from its state file (works while it runs and after it stopped)."""
    import time

    from pgmigrator.metrics.format import render_status
    from pgmigrator.metrics.persist import read_state, state_path

    path = state_path(name, state_dir)
    while True:
        state = read_state(path)
        if as_json:
            click.echo(orjson.dumps(state.snapshot, option=orjson.OPT_INDENT_2).decode())
        else:
            if watch:
                click.clear()
            click.echo(render_status(state.snapshot, time.time()))
        if not watch:
            return
        time.sleep(2)  # a display refresh, not a wait for a condition


@main.command()
@common_options
@click.option("--slot", help="replication slot name (default pgmigrator_<name>)")
@click.option("--publication", help="publication name (default pgmigrator_<name>)")
@click.option(
    "--stream",
    "stream",
    is_flag=True,
    help="retire a stream (`stream`, `lake`): only --source; drop its slot and publication,"
    " give back the replica identities it made FULL, remove its marker file",
)
@click.option(
    "--lake",
    "lake",
    is_flag=True,
    help="retire a `lake`: --stream with the lake's names (slot and publication"
    " pgmigrator_lake_<name> unless --slot / --publication); its tables stay in the warehouse",
)
@handle_errors
def cleanup(config_file: Path | None, stream: bool, lake: bool, **flags: Any) -> None:
    """Drop the slot, publication, replication origin and state of a pipeline (never your tables)."""
    from pgmigrator.pipeline.cleanup import cleanup as do_cleanup
    from pgmigrator.pipeline.cleanup import cleanup_stream

    settings = load_settings(config_file, **flags)
    if lake:
        default = f"pgmigrator_lake_{settings.name}"
        settings = settings.model_copy(
            update={
                "slot": settings.slot or default,
                "publication": settings.publication or default,
            }
        )
    done = (cleanup_stream if stream or lake else do_cleanup)(settings)
    click.echo("\n".join(done) if done else "nothing to clean up")


@main.command()
@click.option(
    "--dir",
    "base",
    type=click.Path(path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="where the throwaway clusters live",
)
@click.option(
    "--scale", type=int, default=10, show_default=True, help="pgbench scale of the sample data"
)
@click.option("--keep", is_flag=True, help="leave the clusters running at the end")
@handle_errors
def demo(base: Path, scale: int, keep: bool) -> None:
    """Start two throwaway clusters, load sample data and migrate it while you watch."""
    from pgmigrator.demo import run_demo

    setup_logging("info", "text")
    run_demo(base.resolve(), scale, keep)


@main.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@handle_errors
def config_check(file: Path) -> None:
    """Validate a config file without running anything."""
    settings = configmod.load(file)
    click.echo(orjson.dumps(settings.redacted(), option=orjson.OPT_INDENT_2).decode())
    click.echo(f"{file}: valid", err=True)


if __name__ == "__main__":
    main()

main.add_command(tui)

from pgmigrator.cli_ops import resync, verify  # noqa: E402  (`resync` and `verify`)

main.add_command(resync)
main.add_command(verify)

from pgmigrator.cli_stream import listen, stream  # noqa: E402  (registers `stream` and `listen`)

main.add_command(stream)
main.add_command(listen)

from pgmigrator.cli_dlq import dlq  # noqa: E402  (registers `pgmigrator dlq ...`)

main.add_command(dlq)

from pgmigrator.cli_lake import lake  # noqa: E402  (registers `pgmigrator lake`)

main.add_command(lake)

from pgmigrator.cli_switchover import switchover, unfence  # noqa: E402

main.add_command(switchover)
main.add_command(unfence)
