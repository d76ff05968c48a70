"""Sinks: where `pgmigrator stream` / `listen` deliver change events (see `base` for the contract)."""

from pgmigrator.sinks.base import Event, Sink, SinkContext, build_sink, kinds, register

__all__ = ["Event", "Sink", "SinkContext", "build_sink", "kinds", "register"]
