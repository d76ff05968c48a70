"""The contract between the event bus and every sink: `Event`, the `Sink` protocol, the registry.

An `Event` is one change already encoded as a JSON document (orjson bytes, no trailing newline):
sinks forward bytes and never re-encode. ``lsn`` is the acknowledgement position of the event (the
commit LSN of its source transaction; 0 for LISTEN/NOTIFY events, which have no WAL position).
``id`` is stable across replays (commit LSN plus the change's index in its transaction), so a
consumer can deduplicate what an at-least-once sink delivers twice after a restart.

A sink's ``send`` returns only once the batch is delivered as far as that sink promises (written,
fsynced when configured, acknowledged by the receiver). It raises `SinkError` (or its retryable
subclass) when it gives up; the bus decides what happens next. Sinks with ``durable = True`` hold
the slot's flush LSN back until they acknowledge (DESIGN.md rule 4); live-only sinks (SSE,
WebSocket) set ``durable = False`` and are at-most-once.

Sink modules register themselves with `register`, naming their kind (``"webhook"``), a pydantic
model of their options and a factory; the configuration layer builds sinks through `build_sink`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from pgmigrator.errors import ConfigError
from pgmigrator.lsn import Lsn


@dataclass(frozen=True, slots=True)
class Event:
    """One encoded change event, as every sink receives it."""

    id: str
    lsn: Lsn
    op: str  # 'c' insert, 'u' update, 'd' delete, 't' truncate, 'r' snapshot row, 'm' message, 'n' notify
    schema: str | None
    table: str | None
    body: bytes  # the JSON document, UTF-8, without a trailing newline


@dataclass
class SinkContext:
    """What a sink may use from its host: the metrics collector and HTTP routes to mount."""

    collector: Any = None  # pgmigrator.metrics.Collector (typed loosely: sinks never need more)
    routes: list[Any] = field(
        default_factory=list
    )  # starlette routes a sink wants served by the API


@runtime_checkable
class Sink(Protocol):
    name: str
    durable: bool

    async def start(self) -> None:
        """Open connections, files or processes; raise `SinkError` with a hint when it cannot."""

    async def send(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` in order; return once delivered, raise `SinkError` on failure."""

    async def close(self) -> None:
        """Flush and release everything; safe to call twice."""


SinkFactory = Callable[[str, Any, SinkContext], Sink]

_REGISTRY: dict[str, tuple[type[BaseModel], SinkFactory]] = {}

#: Sink modules, imported on first use (not at startup: some pull in heavy client libraries).
KIND_MODULES = ("stdout", "file", "webhook", "exec", "pg_table", "sse", "websocket", "nats")
_loaded = False


def load_kinds() -> None:
    """Import every sink module once; one that cannot be imported is simply not registered."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from pgmigrator.log import get_logger

    for module in KIND_MODULES:
        name = f"pgmigrator.sinks.{module}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                get_logger("sinks").warning("sink kind unavailable", kind=module, error=str(exc))
        except ImportError as exc:  # a broken optional sink must not take the others down
            get_logger("sinks").warning("sink kind unavailable", kind=module, error=str(exc))


def register(kind: str, options: type[BaseModel]) -> Callable[[SinkFactory], SinkFactory]:
    """Class or function decorator: ``@register("file", FileOptions)`` on ``(name, opts, ctx)``."""

    def decorate(factory: SinkFactory) -> SinkFactory:
        _REGISTRY[kind] = (options, factory)
        return factory

    return decorate


def kinds() -> list[str]:
    load_kinds()
    return sorted(_REGISTRY)


def options_model(kind: str) -> type[BaseModel]:
    load_kinds()
    try:
        return _REGISTRY[kind][0]
    except KeyError:
        raise ConfigError(
            f"unknown sink type {kind!r}", hint=f"use one of: {', '.join(kinds())}"
        ) from None


def build_sink(
    kind: str, name: str, options: Mapping[str, Any] | BaseModel, ctx: SinkContext
) -> Sink:
    """Validate ``options`` against the kind's model and build the sink (not started yet)."""
    model = options_model(kind)
    try:
        opts = options if isinstance(options, model) else model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or kind}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"sink {name!r} ({kind}): {problems}") from exc
    return _REGISTRY[kind][1](name, opts, ctx)
