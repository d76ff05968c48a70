"""Settings of `stream` / `listen`: the sinks (YAML ``sinks:`` or ``--sink TYPE:OPTIONS``) and filters.

A sink entry is ``{name, type, policy, queue, batch, ...options}``: the first five belong to the
bus, everything else is validated by the sink kind's own options model. On the command line,
``--sink file:path=/tmp/x.jsonl,max_bytes=10MB,policy=block`` is the same entry; a value
``env:NAME`` is read from the environment variable ``NAME`` (for secrets: never on the command
line, never logged). This module imports nothing heavy: `pgmigrator.config` embeds it.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pgmigrator.errors import ConfigError

BUS_KEYS = ("name", "type", "policy", "queue", "batch", "queue_bytes")


class SinkConfig(BaseModel):
    """One sink: bus settings here, the kind's options as extra keys."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="sink kind: stdout, file, webhook, exec, pg_table, sse, websocket, ..."
    )
    name: str | None = Field(None, description="unique name (default: the type)")
    policy: Literal["block", "drop"] = Field(
        "block",
        description="full queue: block the stream (default) or drop (non-durable sinks only)",
    )
    queue: int = Field(20_000, ge=1, description="events queued for this sink at most")
    batch: int = Field(5_000, ge=1, description="events per send at most")
    queue_bytes: int = Field(
        64 << 20, ge=1, description="bytes of events queued for this sink at most"
    )

    @field_validator("queue_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        from pgmigrator.sinks.file import parse_size

        return parse_size(value)

    def options(self) -> dict[str, Any]:
        return {k: _resolve(k, v) for k, v in (self.model_extra or {}).items()}


class StreamSettings(BaseModel):
    """Filters and limits of `stream` / `listen` (YAML ``stream:``)."""

    model_config = ConfigDict(extra="forbid")

    operations: list[str] = Field(
        default_factory=list, description="operations to emit (c,u,d,t,r,m; default all)"
    )
    drop_columns: dict[str, list[str]] = Field(
        default_factory=dict, description="table pattern -> columns removed from events"
    )
    mask_columns: dict[str, list[str]] = Field(
        default_factory=dict, description="table pattern -> columns whose values become ***"
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="on stop, how long queued events may take to be delivered"
    )
    chunk_events: int = Field(1_000, ge=1, description="events handed to the bus at once")
    chunk_bytes: int = Field(8 << 20, ge=1, description="bytes of events handed to the bus at once")


def _resolve(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise ConfigError(
                f"sink option {key}: environment variable {var!r} is not set",
                hint=f"export {var}=... before starting, or give the value directly",
            )
        return os.environ[var]
    return value


def parse_sink_spec(text: str) -> SinkConfig:
    """``TYPE`` or ``TYPE:key=value,key=value`` (``\\,`` for a literal comma in a value)."""
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    if not kind:
        raise ConfigError(
            f"bad --sink {text!r}: no sink type",
            hint="write TYPE or TYPE:key=value,... e.g. file:path=/tmp/events.jsonl",
        )
    data: dict[str, Any] = {"type": kind}
    for part in _split(rest):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"bad --sink option {part!r} in {kind!r}",
                hint="options are key=value pairs separated by commas",
            )
        data[key.strip()] = value
    try:
        return SinkConfig.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"bad --sink {kind!r}: {_first_error(exc)}") from None


def _split(rest: str) -> list[str]:
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and rest[i + 1 : i + 2] == ",":
            current += ","
            i += 2
            continue
        if ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return [p for p in parts if p.strip()]


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc)


_SECRET_WORDS = ("secret", "token", "password", "key", "dsn")


def redact_sink(data: dict[str, Any]) -> dict[str, Any]:
    """A sink entry safe to print: secret-looking options shown as ``***`` (``env:NAME`` kept)."""
    shown: dict[str, Any] = {}
    for k, v in data.items():
        secret = any(word in k.lower() for word in _SECRET_WORDS)
        if secret and isinstance(v, str) and v and not v.startswith("env:"):
            shown[k] = "***"
        else:
            shown[k] = v
    return shown
