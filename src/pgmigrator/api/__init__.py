"""The HTTP API of a running pipeline: REST, WebSocket, control, Prometheus metrics, probes, dashboard.

Wiring it into a command::

    token, generated = resolve_token(configured_token)
    app = create_app(collector, settings, control, token, protect_reads=False)
    server = ApiServer.from_addr(app, "127.0.0.1:8080")
    await server.start()          # or server.start_in_thread() in synchronous commands
    ...
    await server.stop()           # or server.stop_thread()
"""

from pgmigrator.api.app import Control, NoControl, create_app, readiness
from pgmigrator.api.openapi import openapi_document
from pgmigrator.api.prometheus import SnapshotMetrics, make_registry
from pgmigrator.api.server import ApiServer, is_loopback, parse_api_addr, resolve_token

__all__ = [
    "ApiServer",
    "Control",
    "NoControl",
    "SnapshotMetrics",
    "create_app",
    "is_loopback",
    "make_registry",
    "openapi_document",
    "parse_api_addr",
    "readiness",
    "resolve_token",
]
