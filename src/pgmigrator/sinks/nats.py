"""The ``nats`` sink: publish change events to NATS JetStream, the scale-out path.

Each event goes to ``<prefix>.<schema>.<table>`` (logical messages to ``<prefix>._message``,
LISTEN/NOTIFY events to ``<prefix>._notify``) with its stable id as the ``Nats-Msg-Id`` header, so
JetStream drops a re-sent event inside the stream's duplicate window. A batch is published
asynchronously (up to ``max_in_flight`` unacknowledged messages) and `send` returns only once every
publish acknowledgement arrived: the stream has persisted the batch, so the slot may advance
(``durable = True``). While the broker is unreachable `send` raises `RetryableSinkError`; the
client keeps reconnecting in the background and the bus re-sends the batch (duplicates are
dropped by the server thanks to the message ids).

Subject tokens are the schema and table names with characters that NATS subjects cannot carry
(``.``, ``*``, ``>``, whitespace) replaced by ``_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from pydantic import BaseModel, Field, SecretStr

from pgmigrator.aio import wait_for
from pgmigrator.errors import RetryableSinkError, SinkError
from pgmigrator.log import get_logger
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.nats")

_BAD_TOKEN = re.compile(r"[.*>\s]")


class NatsOptions(BaseModel):
    """Options of a ``nats`` sink."""

    model_config = {"extra": "forbid"}

    url: str = "nats://127.0.0.1:4222"  # comma-separated list of servers
    subject_prefix: str = "pgmigrator"
    stream: str = "PGMIGRATOR"
    create_stream: bool = True  # create the stream (subjects ``<prefix>.>``) when missing
    duplicate_window_s: float = Field(default=120.0, gt=0)  # JetStream dedup window
    max_in_flight: int = Field(default=4096, ge=1)  # unacknowledged publishes at once
    ack_timeout_s: float = Field(default=10.0, gt=0)  # a batch's acks must arrive within this
    connect_timeout_s: float = Field(default=2.0, gt=0)
    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None


def subject_for(prefix: str, event: Event) -> str:
    """The subject an event is published to."""
    if event.table is None:
        return f"{prefix}._notify" if event.op == "n" else f"{prefix}._message"
    schema = _BAD_TOKEN.sub("_", event.schema or "public") or "_"
    table = _BAD_TOKEN.sub("_", event.table) or "_"
    return f"{prefix}.{schema}.{table}"


def _safe_servers(url: str) -> list[str]:
    """Server addresses without credentials, for logs and errors."""
    out = []
    for part in url.split(","):
        split = urlsplit(part.strip())
        out.append(f"{split.scheme}://{split.hostname}:{split.port or 4222}")
    return out


@dataclass(eq=False)
class _Acks:
    """Acknowledgements of one batch: all of them go to one reply subject, ``<inbox>.<batch>``."""

    batch: int
    expected: int
    received: int = 0
    duplicates: int = 0
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    window: asyncio.Event = field(default_factory=asyncio.Event)


class NatsSink:
    """Publishes each batch to JetStream and waits for every acknowledgement."""

    durable = True

    def __init__(self, name: str, opts: NatsOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.ctx = ctx
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.servers = [s.strip() for s in opts.url.split(",") if s.strip()]
        self._safe = ", ".join(_safe_servers(opts.url))
        self._stream_ready = False
        self._inbox = ""
        self._batch_no = 0
        self._acks: _Acks | None = None
        self._closing = False
        self._subjects: dict[tuple[str, str | None, str | None], str] = {}
        self.duplicates = 0  # events the server recognised as already stored (dedup window)

    async def start(self) -> None:
        await self._connect()
        await self._ensure_stream()

    async def _connect(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            return
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.opts.connect_timeout_s,
            "allow_reconnect": True,
            "max_reconnect_attempts": 1,  # the first connect gives up quickly ...
            "reconnect_time_wait": 0.5,
            "name": f"pgmigrator-{self.name}",
            "skip_subject_validation": True,  # subjects are built (and sanitised) here
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if self.opts.token is not None:
            kwargs["token"] = self.opts.token.get_secret_value()
        if self.opts.user is not None:
            kwargs["user"] = self.opts.user
            kwargs["password"] = self.opts.password.get_secret_value() if self.opts.password else ""
        try:
            self.nc = await nats.connect(**kwargs)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self.nc = None
            self._health("down", "broker unreachable")
            raise RetryableSinkError(
                f"sink {self.name!r}: cannot reach the NATS server at {self._safe}: {type(exc).__name__}",
                hint="start nats-server with JetStream (-js) or fix the sink's url; delivery resumes when it is back",
            ) from exc
        self.nc.options["max_reconnect_attempts"] = -1  # ... later reconnects never do
        self.js = self.nc.jetstream()
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=-1)
        self._health("ok")
        log.info("connected", sink=self.name, servers=self._safe)

    async def _ensure_stream(self) -> None:
        if self._stream_ready:
            return
        assert self.js is not None
        try:
            await self.js.stream_info(self.opts.stream)
        except nats.js.errors.NotFoundError:
            if not self.opts.create_stream:
                raise SinkError(
                    f"sink {self.name!r}: JetStream stream {self.opts.stream!r} does not exist",
                    hint=f"create it for subjects '{self.opts.subject_prefix}.>' or set create_stream: true",
                ) from None
            await self._create_stream()
        except nats.js.errors.ServiceUnavailableError as exc:
            raise SinkError(
                f"sink {self.name!r}: JetStream is not enabled on {self._safe}",
                hint="run nats-server with -js (JetStream) enabled",
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise RetryableSinkError(
                f"sink {self.name!r}: cannot query stream {self.opts.stream!r}: {type(exc).__name__}"
            ) from exc
        self._stream_ready = True

    async def _create_stream(self) -> None:
        assert self.js is not None
        config = StreamConfig(
            name=self.opts.stream,
            subjects=[f"{self.opts.subject_prefix}.>"],
            duplicate_window=self.opts.duplicate_window_s,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.APIError as exc:
            raise SinkError(
                f"sink {self.name!r}: cannot create stream {self.opts.stream!r}: {exc.description}",
                hint="another stream may already own these subjects: set stream to its name",
            ) from exc
        log.info("stream created", sink=self.name, stream=self.opts.stream)

    async def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        await self._ready()
        assert self.nc is not None
        acks = self._acks = _Acks(self._batch_no + 1, len(events))
        self._batch_no += 1
        reply = f"{self._inbox}.{acks.batch}"
        prefix = self.opts.subject_prefix
        subjects = self._subjects
        if len(subjects) > 10_000:
            subjects.clear()
        window = self.opts.max_in_flight
        publish = self.nc.publish
        try:
            for sent, ev in enumerate(events, 1):
                subject = subjects.get((ev.op, ev.schema, ev.table))
                if subject is None:
                    subject = subjects[(ev.op, ev.schema, ev.table)] = subject_for(prefix, ev)
                await publish(subject, ev.body, reply, {"Nats-Msg-Id": ev.id})
                if sent - acks.received >= window:  # bound what is unacknowledged
                    acks.window.clear()
                    await wait_for(acks.window.wait(), self.opts.ack_timeout_s)
            await wait_for(acks.done.wait(), self.opts.ack_timeout_s)
        except BaseException as exc:
            raise self._send_error(exc) from exc
        finally:
            self._acks = None
        if acks.error is not None:
            raise self._send_error(acks.error)
        self.duplicates += acks.duplicates

    async def _on_ack(self, msg: Msg) -> None:
        """Every JetStream publish acknowledgement (or error) of the batch in flight lands here."""
        acks = self._acks
        if acks is None or msg.subject.rpartition(".")[2] != str(acks.batch):
            return  # a late answer to a batch that already failed: it is re-sent anyway
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            acks.error = nats.js.errors.NoStreamResponseError()
        elif b'"error"' in data:
            acks.error = nats.js.errors.APIError.from_error(orjson.loads(data)["error"])
        elif b'"duplicate"' in data and orjson.loads(data).get("duplicate"):
            acks.duplicates += 1
        acks.received += 1
        acks.window.set()
        if acks.received >= acks.expected or acks.error is not None:
            acks.done.set()

    async def _ready(self) -> None:
        if self.nc is None or self.nc.is_closed:
            await self._connect()
        assert self.nc is not None
        if not self.nc.is_connected:
            raise RetryableSinkError(
                f"sink {self.name!r}: the NATS server at {self._safe} is down (reconnecting)",
                hint="events are kept in the slot and re-sent once the broker is back",
            )
        await self._ensure_stream()

    def _send_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, asyncio.CancelledError):
            return exc
        if isinstance(exc, TimeoutError):
            return RetryableSinkError(
                f"sink {self.name!r}: no JetStream acknowledgement within {self.opts.ack_timeout_s}s",
                hint="the broker is slow or down; the batch is re-sent (duplicates are dropped by Nats-Msg-Id)",
            )
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            self._stream_ready = False
            return RetryableSinkError(
                f"sink {self.name!r}: no JetStream stream answered for {self.opts.subject_prefix}.>",
                hint="the stream was deleted or JetStream is restarting; it is created again when create_stream is on",
            )
        if isinstance(exc, nats.js.errors.APIError):
            retry = exc.code is None or exc.code >= 500
            cls = RetryableSinkError if retry else SinkError
            return cls(f"sink {self.name!r}: JetStream refused a publish: {exc.description}")
        if isinstance(exc, (nats.errors.Error, OSError)):
            return RetryableSinkError(
                f"sink {self.name!r}: lost the NATS connection: {type(exc).__name__}"
            )
        return exc

    async def close(self) -> None:
        self._closing = True
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                await wait_for(nc.close(), 5)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("client error", sink=self.name, error=type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self._health("down", "disconnected, reconnecting")
        log.warning("disconnected from the broker", sink=self.name, servers=self._safe)

    async def _on_reconnected(self) -> None:
        self._health("ok")
        log.info("reconnected to the broker", sink=self.name, servers=self._safe)

    def _health(self, status: str, detail: str = "") -> None:
        collector = self.ctx.collector
        if collector is not None:
            collector.set_health(f"sink:{self.name}", status, detail)


@register("nats", NatsOptions)
def build(name: str, opts: Any, ctx: SinkContext) -> NatsSink:
    return NatsSink(name, opts, ctx)
