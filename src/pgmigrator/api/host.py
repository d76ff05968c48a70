"""Hosting the API next to a long-running command: its `Control` and the server's lifetime.

`PipelineControl` is what ``POST /api/v1/pause|resume|switchover`` reach. Pause and resume go to
the running follower's lifecycle (they are refused, with HTTP 409, while there is no follower yet,
e.g. during the copy of ``clone --follow``); switchover starts `pgmigrator switchover`'s logic in
a background thread and answers at once (its progress shows in the phase: ``switchover``, then
``switchover-complete``). `serving` starts the server in a thread when ``api.addr`` is set and
stops it at the end; the bearer token is the configured one or a random one the caller prints once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pgmigrator.api.app import create_app
from pgmigrator.api.server import ApiServer, resolve_token
from pgmigrator.config import Settings
from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.lifecycle import IllegalTransition

log = get_logger("api")


class Pausable(Protocol):
    def pause(self) -> str: ...

    def resume(self) -> str: ...


class PipelineControl:
    """Control requests for the pipeline of this process (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target: Pausable | None = None  # the follower, once streaming starts
        self._switchover: threading.Thread | None = None

    def _require_target(self, action: str) -> Pausable:
        if self.target is None:
            raise IllegalTransition(
                f"cannot {action}: nothing is streaming yet",
                hint="pause and resume apply to the streaming phase (follow, clone --follow, stream)",
            )
        return self.target

    async def pause(self) -> str:
        return self._require_target("pause").pause()

    async def resume(self) -> str:
        return self._require_target("resume").resume()

    async def switchover(self) -> str:
        if self._switchover is not None and self._switchover.is_alive():
            raise PgMigratorError("a switchover is already running")
        if self.settings.dest is None or self.target is None:
            raise PgMigratorError(
                "switchover needs a running follower",
                hint="start `follow` (or `clone --follow`) and wait until it streams",
            )
        self._switchover = threading.Thread(target=self._run_switchover, daemon=True)
        self._switchover.start()
        await asyncio.sleep(0)
        return "switchover started: watch the phase go to switchover-complete"

    def _run_switchover(self) -> None:
        from pgmigrator.pipeline.switchover import Switchover, SwitchoverOptions

        try:
            report = Switchover(self.settings, SwitchoverOptions()).run()
            log.info("switchover finished", status=report.status)
        except PgMigratorError as exc:
            log.error("switchover failed", error=exc.message)


@dataclass
class Hosted:
    """What `serving` started: the server (None without ``api.addr``) and the token to print."""

    server: ApiServer | None
    token: str | None = None
    token_generated: bool = False


@contextmanager
def serving(settings: Settings, collector: Collector, control: Any) -> Iterator[Hosted]:
    """Serve the API in a thread for the duration of the block, when ``settings.api.addr`` is set."""
    api = settings.api
    if not api.addr:
        yield Hosted(None)
        return
    token, generated = resolve_token(api.token)
    app = create_app(
        collector,
        settings,
        control,
        token,
        api.protect_reads,
        ready_max_lag_s=api.ready_max_lag_s,
        ready_max_lag_bytes=api.ready_max_lag_mb * 1024 * 1024,
    )
    server = ApiServer.from_addr(app, api.addr)
    server.start_in_thread()
    try:
        yield Hosted(server, token, generated)
    finally:
        server.stop_thread()
