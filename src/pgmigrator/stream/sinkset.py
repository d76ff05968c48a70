"""Building sinks with their bus policies from configuration entries (at start and on reload).

One place decides a sink's name (its ``name``, else its type, numbered when repeated), validates
its options through the kind's model, refuses ``policy: drop`` for a durable sink, and gives the
bus its retry limit: with a dead-letter queue a batch is dead-lettered after ``dlq.max_attempts``
sends; without one the bus retries retryable errors for ever and stops on the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.errors import ConfigError
from pgmigrator.sinks.base import Sink, SinkContext, build_sink
from pgmigrator.stream.bus import SinkPolicy
from pgmigrator.stream.dlq import DeadLetterQueue
from pgmigrator.stream.settings import SinkConfig


def sink_names(configs: Sequence[SinkConfig]) -> list[str]:
    """The name of each entry: its ``name``, else its type (``file``, ``file-2``, ...)."""
    names: list[str] = []
    for cfg in configs:
        if cfg.name:
            if cfg.name in names:
                raise ConfigError(
                    f"two sinks are named {cfg.name!r}", hint="give each sink its own name="
                )
            names.append(cfg.name)
            continue
        name, n = cfg.type, 1
        while name in names:
            n += 1
            name = f"{cfg.type}-{n}"
        names.append(name)
    return names


def make_sink(
    cfg: SinkConfig, name: str, ctx: SinkContext, max_attempts: int = 0
) -> tuple[Sink, SinkPolicy]:
    sink = build_sink(cfg.type, name, cfg.options(), ctx)
    if cfg.policy == "drop" and sink.durable:
        raise ConfigError(
            f"sink {name!r} ({cfg.type}) is durable: policy drop would lose events it promises to deliver",
            hint="use policy=block (the default) for durable sinks; drop is for live sinks (sse, websocket)",
        )
    policy = SinkPolicy(cfg.policy, cfg.queue, cfg.queue_bytes, cfg.batch)
    policy.max_attempts = max_attempts if sink.durable else 0
    return sink, policy


def dead_letter_queue(settings: Settings) -> DeadLetterQueue | None:
    """The pipeline's DLQ: ``dlq.dsn``, else the destination; None when disabled or nowhere."""
    dsn = settings.dlq.dsn or settings.dest
    if not settings.dlq.enabled or not dsn:
        return None
    return DeadLetterQueue(Target(dsn, "dead-letter queue"), settings.name)


def dlq_attempts(settings: Settings, dlq: DeadLetterQueue | None) -> int:
    return settings.dlq.max_attempts if dlq is not None else 0
