"""Command-line pieces of bidirectional replication: ``follow --bidirectional [--conflict ...]``.

`bidi_options` adds the two flags to ``follow``; `bidi_flags` folds them into the ``bidi``
settings block; `run_bidi` runs both directions in this process until SIGINT/SIGTERM or a
non-retryable error (a conflict under the ``error`` policy, for instance) in either.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pgmigrator import config as configmod
from pgmigrator.errors import PgMigratorError

F = TypeVar("F", bound=Callable[..., Any])


def bidi_options(fn: F) -> F:
    fn = click.option(
        "--conflict",
        type=click.Choice(["error", "last-writer-wins"]),
        help="bidirectional: when the same row changed on both sides (default error)",
    )(fn)
    fn = click.option(
        "--bidirectional",
        is_flag=True,
        default=None,
        help="also replicate destination writes back to the source, without loops",
    )(fn)
    return fn


def bidi_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """``flags`` with ``--bidirectional`` / ``--conflict`` moved into the ``bidi`` block."""
    flags = dict(flags)
    block: dict[str, Any] = {}
    if flags.pop("bidirectional", None):
        block["enabled"] = True
    conflict = flags.pop("conflict", None)
    if conflict is not None:
        block["conflict"] = conflict
    if block:
        flags["bidi"] = block
    return flags


def run_bidi(settings: configmod.Settings, collector: Any, control: Any = None) -> None:
    """Run the forward and the reverse follower until stopped; print what each applied."""
    from pgmigrator.pipeline.bidi import Bidirectional

    pipeline = Bidirectional(settings, collector)
    if control is not None:
        control.target = pipeline  # pause / resume from the API act on both directions

    async def main_task() -> Any:
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, pipeline.request_stop)
        return await pipeline.run()

    try:
        forward, reverse = asyncio.run(main_task())
    except PgMigratorError as exc:
        collector.set_phase("failed")
        collector.record_error(exc.message, component="bidi")
        raise
    click.echo(
        f"stopped: forward {forward.transactions} transaction(s), {forward.rows} row(s); "
        f"reverse {reverse.transactions} transaction(s), {reverse.rows} row(s); "
        f"{pipeline.conflicts} conflict(s)"
    )
