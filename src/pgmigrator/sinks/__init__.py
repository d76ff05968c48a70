"""Sinks: where `pgmigrator stream` / `listen` deliver change events (see `base` for the contract).

Sink kinds register themselves when their module is imported; `base.load_kinds` imports them all
on first use (building a sink, listing the kinds), so commands that need no sink do not pay for
their client libraries. A sink whose module cannot be imported (a missing client library) is
simply not registered.
"""

from pgmigrator.sinks.base import Event, Sink, SinkContext, build_sink, kinds, load_kinds, register

__all__ = ["Event", "Sink", "SinkContext", "build_sink", "kinds", "load_kinds", "register"]
