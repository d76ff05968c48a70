"""Command-line edges of observability: the API options of long-running commands, ``--tui``, ``tui``.

`api_options` adds ``--api-addr``, ``--api-token`` and ``--tui`` to a command; `hosted_run` runs
the command's body with the state file, the API server and, with ``--tui``, the terminal UI in
the foreground (the body then runs in a worker thread, console logging is muted so the screen
stays clean, and quitting the UI stops the pipeline gracefully).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click

from pgmigrator import config as configmod
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.control import Hosted, PipelineControl

F = TypeVar("F", bound=Callable[..., Any])


def api_options(fn: F) -> F:
    options = [
        click.option(
            "--api-addr",
            help="serve the HTTP API, dashboard, /metrics and probes on HOST:PORT (e.g. 127.0.0.1:8080)",
        ),
        click.option(
            "--api-token",
            help="bearer token for control endpoints (default: random, printed once; or PGMIGRATOR_API__TOKEN)",
        ),
        click.option(
            "--tui", is_flag=True, help="show the terminal UI while running (q stops the pipeline)"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def api_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Move ``api_addr``/``api_token`` out of ``flags`` into the nested ``api`` setting."""
    api = {"addr": flags.pop("api_addr", None), "token": flags.pop("api_token", None)}
    api = {k: v for k, v in api.items() if v is not None}
    if api:
        flags["api"] = api
    return flags


Body = Callable[["PipelineControl"], None]


def state_file(settings: configmod.Settings, collector: Collector) -> Any:
    """The thread writing the collector's snapshot to the pipeline's state file (a context)."""
    from pgmigrator.metrics.filewriter import StateFileThread
    from pgmigrator.metrics.persist import state_path

    return StateFileThread(collector, state_path(settings.name, settings.state_dir))


@contextlib.contextmanager
def serving_api(
    settings: configmod.Settings,
    collector: Collector,
    control: PipelineControl,
    extra_routes: Sequence[Any] = (),
    *,
    announce: bool = True,
) -> Iterator[Hosted]:
    """The API for the block when ``api.addr`` is set (the web stack is imported only then);
    its URL, and a generated token once, go to stderr."""
    if not settings.api.addr:
        yield Hosted(None)
        return
    from pgmigrator.api.host import serving

    with serving(settings, collector, control, extra_routes) as hosted:
        if announce and hosted.server is not None:
            click.echo(f"API and dashboard: {hosted.server.url}/", err=True)
            if hosted.token_generated:
                click.echo(f"API token (for control requests): {hosted.token}", err=True)
        yield hosted


def hosted_run(
    settings: configmod.Settings, collector: Collector, body: Body, *, tui: bool = False
) -> None:
    """Run ``body`` with the state file and, when configured, the API (and the TUI)."""
    if tui and not settings.api.addr:
        settings.api.addr = "127.0.0.1:0"  # the TUI reads the API: serve it on a free local port
    control = PipelineControl(settings, collector)
    with (
        state_file(settings, collector),
        serving_api(settings, collector, control, announce=not tui) as hosted,
    ):
        if tui and hosted.server is not None:
            _with_tui(hosted.server.url, hosted.token, control, body)
        else:
            body(control)


def _with_tui(url: str, token: str | None, control: PipelineControl, body: Body) -> None:
    from pgmigrator.tui import run_tui

    errors: list[BaseException] = []

    def work() -> None:
        try:
            body(control)
        except BaseException as exc:  # re-raised in the main thread once the UI is gone
            errors.append(exc)

    root = logging.getLogger("pgmigrator")
    console = [h for h in root.handlers if getattr(h, "_pgmigrator_console", False)]
    for handler in console:
        root.removeHandler(handler)  # the log still reaches the collector (and the TUI's log view)
    worker = threading.Thread(target=work, name="pipeline", daemon=True)
    worker.start()
    try:
        run_tui(url, token)
    finally:
        stop = getattr(control.target, "request_stop", None)
        if stop is not None:
            stop()
        for handler in console:
            root.addHandler(handler)
        if worker.is_alive():
            click.echo("waiting for the pipeline to stop (Ctrl-C to abort) ...", err=True)
        worker.join()
    if errors:
        raise errors[0]


@click.command()
@click.option(
    "--api",
    "api_url",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="URL of a running pipeline's API",
)
@click.option("--token", envvar="PGMIGRATOR_API__TOKEN", help="bearer token for control keys")
@click.option("--interval", type=float, default=1.0, show_default=True, help="refresh seconds")
def tui(api_url: str, token: str | None, interval: float) -> None:
    """Terminal UI over a running pipeline's API (keys: p pause, r resume, s switchover, q quit)."""
    from pgmigrator.tui import run_tui

    run_tui(api_url, token, interval=interval)
