"""``pgmigrator stream`` and ``pgmigrator listen``: the command-line edge of change-event streaming.

Sinks come from ``--sink TYPE:key=value,...`` (repeatable) or, without that flag, from the config
file's ``sinks:`` list; filters from ``--tables``/``--exclude``/``--operations``/``--drop-columns``/
``--mask-columns`` or the config's ``stream:`` section. With ``--api-addr`` the API server also
serves the endpoints of the live sinks (``sse``, ``websocket``). Events go to the sinks; the
summary at the end goes to stderr (stdout may be a sink).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from pgmigrator import config as configmod
from pgmigrator.cli import _collector, common_options, handle_errors, load_settings
from pgmigrator.cli_observe import serving_api, state_file
from pgmigrator.cli_schema import keyless_option
from pgmigrator.errors import ConfigError, PgMigratorError
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.control import PipelineControl
from pgmigrator.sinks.base import Sink, SinkContext
from pgmigrator.stream.bus import SinkPolicy
from pgmigrator.stream.filters import Filters, parse_column_rules, parse_operations
from pgmigrator.stream.reload import ReloadWatcher
from pgmigrator.stream.settings import parse_sink_spec
from pgmigrator.stream.sinkset import dead_letter_queue, dlq_attempts

SINK_HELP = (
    "sink TYPE[:key=value,...], repeatable: stdout, file:path=/tmp/events.jsonl,max_bytes=10MB,"
    "rotate_s=1h,keep=5,gzip=true,fsync=batch, webhook:url=...,secret=env:NAME, ...; "
    "bus keys: name, policy=block|drop, queue, batch"
)


def sink_options(fn: Any) -> Any:
    fn = click.option(
        "--api-token", help="bearer token for control requests (or PGMIGRATOR_API__TOKEN)"
    )(fn)
    fn = click.option("--api-addr", help="serve the API (and sse/websocket sinks) on HOST:PORT")(fn)
    return click.option("--sink", "sink_specs", multiple=True, help=SINK_HELP)(fn)


def build_sinks(
    settings: configmod.Settings,
    specs: Sequence[str],
    collector: Collector,
    max_attempts: int = 0,
) -> tuple[list[tuple[Sink, SinkPolicy]], SinkContext]:
    """The sinks and their bus policies, validated; none is started yet."""
    from pgmigrator.stream.sinkset import make_sink, sink_names

    configs = [parse_sink_spec(s) for s in specs] if specs else list(settings.sinks)
    if not configs:
        raise ConfigError(
            "no sink configured",
            hint="pass --sink stdout or --sink file:path=/tmp/events.jsonl (or `sinks:` in the config)",
        )
    ctx = SinkContext(collector=collector)
    built = [
        make_sink(cfg, name, ctx, max_attempts)
        for cfg, name in zip(configs, sink_names(configs), strict=True)
    ]
    return built, ctx


def build_filters(
    settings: configmod.Settings,
    operations: Sequence[str],
    drop_columns: Sequence[str],
    mask_columns: Sequence[str],
) -> Filters:
    ops = list(operations) or settings.stream.operations
    parse_operations(ops)  # validate early: a clear error before connecting
    drop = parse_column_rules(drop_columns) if drop_columns else settings.stream.drop_columns
    mask = parse_column_rules(mask_columns) if mask_columns else settings.stream.mask_columns
    return Filters(settings.tables, settings.exclude, ops, drop, mask)


@contextmanager
def hosting(
    settings: configmod.Settings, collector: Collector, ctx: SinkContext, target: Any = None
) -> Iterator[None]:
    """The state file, and the API server (with the sinks' routes) when ``api.addr`` is set."""
    control = PipelineControl(settings, collector)
    control.target = target  # pause / resume; switchover is for follow
    with state_file(settings, collector), serving_api(settings, collector, control, ctx.routes):
        yield


def run_async(runner: Any, collector: Collector, component: str, watcher: Any = None) -> Any:
    """Run ``runner.run()`` with SIGINT/SIGTERM asking it to stop gracefully.

    ``watcher``: a `ReloadWatcher` run alongside (SIGHUP and config file changes).
    """

    async def main_task() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.request_stop)
        if watcher is None:
            return await runner.run()
        return await watcher.alongside(runner.run(), runner.stop_event)

    collector.set_state("running")
    try:
        result = asyncio.run(main_task())
    except PgMigratorError as exc:
        collector.set_state("failed")
        collector.set_phase("failed")
        collector.record_error(exc.message, component=component)
        raise
    collector.set_state("stopped")
    collector.set_phase("stopped")
    return result


def _flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--tables", multiple=True, help="include pattern schema.table (glob), repeatable"
        ),
        click.option(
            "--exclude", multiple=True, help="exclude pattern schema.table (glob), repeatable"
        ),
        click.option(
            "--operations",
            multiple=True,
            help="emit only these: c,u,d,t,r,m (or insert,update,...)",
        ),
        click.option(
            "--drop-columns", multiple=True, help="TABLE=COL[,COL]: remove columns from events"
        ),
        click.option(
            "--mask-columns", multiple=True, help="TABLE=COL[,COL]: replace values with ***"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command()
@common_options
@click.option("--slot", help="replication slot (default pgmigrator_<name>)")
@click.option("--publication", help="publication (default pgmigrator_<name>)")
@click.option("--create", is_flag=True, help="create the publication and slot when missing")
@keyless_option
@click.option(
    "--snapshot", is_flag=True, help="with a new slot: existing rows first, as op r events"
)
@_flags
@sink_options
@handle_errors
def stream(
    config_file: Path | None,
    create: bool,
    snapshot: bool,
    tables: tuple[str, ...],
    exclude: tuple[str, ...],
    operations: tuple[str, ...],
    drop_columns: tuple[str, ...],
    mask_columns: tuple[str, ...],
    sink_specs: tuple[str, ...],
    api_addr: str | None,
    api_token: str | None,
    **flags: Any,
) -> None:
    """Stream WAL changes from a slot to sinks as JSON events (at-least-once, stable ids)."""
    from pgmigrator.stream.wal import WalStream

    if api_addr or api_token:
        flags["api"] = {k: v for k, v in (("addr", api_addr), ("token", api_token)) if v}
    reload_flags = {"tables": list(tables) or None, "exclude": list(exclude) or None, **flags}
    settings = load_settings(config_file, **reload_flags)
    settings.require("source")
    collector = _collector(settings)
    filters = build_filters(settings, operations, drop_columns, mask_columns)
    dlq = dead_letter_queue(settings)
    sinks, ctx = build_sinks(settings, sink_specs, collector, dlq_attempts(settings, dlq))
    runner = WalStream(
        settings, sinks, filters, collector, create=create, snapshot=snapshot, dlq=dlq, ctx=ctx
    )
    watcher = None
    if config_file is not None and not sink_specs:  # sinks from the file: reloadable
        watcher = ReloadWatcher(config_file, reload_flags, lambda: runner.settings,
                                runner.reloads.submit, collector)  # fmt: skip
    with hosting(settings, collector, ctx, runner):
        stats = run_async(runner, collector, "stream", watcher)
    click.echo(
        f"stopped: {stats.events} event(s) read ({stats.snapshot_rows} snapshot row(s)), "
        f"slot flushed to {stats.flushed}"
        + (
            "" if stats.drained else "; some queued events were not delivered (replayed on restart)"
        ),
        err=True,
    )


@click.command()
@common_options
@click.option(
    "--channel", "channels", multiple=True, required=True, help="channel to LISTEN on, repeatable"
)
@sink_options
@handle_errors
def listen(
    config_file: Path | None,
    channels: tuple[str, ...],
    sink_specs: tuple[str, ...],
    api_addr: str | None,
    api_token: str | None,
    **flags: Any,
) -> None:
    """Forward LISTEN/NOTIFY notifications to sinks as JSON events (at-most-once)."""
    from pgmigrator.stream.listen import ListenStream

    if api_addr or api_token:
        flags["api"] = {k: v for k, v in (("addr", api_addr), ("token", api_token)) if v}
    settings = load_settings(config_file, **flags)
    settings.require("source")
    collector = _collector(settings)
    dlq = dead_letter_queue(settings)
    sinks, ctx = build_sinks(settings, sink_specs, collector, dlq_attempts(settings, dlq))
    runner = ListenStream(
        settings.source_target,
        channels,
        sinks,
        collector,
        drain_timeout_s=settings.stream.drain_timeout_s,
        dlq=dlq,
    )
    with hosting(settings, collector, ctx):
        stats = run_async(runner, collector, "listen")
    click.echo(
        f"stopped: {stats.notifications} notification(s), {stats.reconnects} reconnect(s)", err=True
    )
