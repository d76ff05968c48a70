"""Sinks: where `pgmigrator stream` / `listen` deliver change events (see `base` for the contract).

Importing this package registers every sink kind that exists; sinks whose optional module is
missing or cannot be imported (a missing client library) are simply not registered.
"""

import importlib

from pgmigrator.log import get_logger
from pgmigrator.sinks import file, stdout  # noqa: F401  (registers the kinds)
from pgmigrator.sinks.base import Event, Sink, SinkContext, build_sink, kinds, register

__all__ = ["Event", "Sink", "SinkContext", "build_sink", "kinds", "register"]

for _module in ("webhook", "exec", "pg_table", "sse", "websocket", "nats"):
    try:
        importlib.import_module(f"pgmigrator.sinks.{_module}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"pgmigrator.sinks.{_module}":
            get_logger("sinks").warning("sink kind unavailable", kind=_module, error=str(_exc))
    except ImportError as _exc:  # a broken optional sink must not take the others down
        get_logger("sinks").warning("sink kind unavailable", kind=_module, error=str(_exc))
