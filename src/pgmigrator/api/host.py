"""Hosting the API next to a long-running command for the duration of a block.

`serving` starts the server in a thread when ``api.addr`` is set and stops it at the end; the
bearer token is the configured one or a random one the caller prints once. The control it serves
is a `pgmigrator.pipeline.control.PipelineControl`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pgmigrator.api.app import create_app
from pgmigrator.api.server import ApiServer, resolve_token
from pgmigrator.config import Settings
from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector
from pgmigrator.pipeline.control import Hosted, PipelineControl

__all__ = ["Hosted", "PipelineControl", "serving"]

log = get_logger("api")


@contextmanager
def serving(
    settings: Settings, collector: Collector, control: Any, extra_routes: Sequence[Any] = ()
) -> Iterator[Hosted]:
    """Serve the API in a thread for the duration of the block, when ``settings.api.addr`` is set.

    ``extra_routes``: Starlette routes of live sinks (sse, websocket) served beside the API.
    """
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
        extra_routes=extra_routes,
    )
    server = ApiServer.from_addr(app, api.addr)
    server.start_in_thread()
    try:
        yield Hosted(server, token, generated)
    finally:
        server.stop_thread()
