"""The ``webhook`` sink: events POSTed to an HTTP endpoint, signed, retried, idempotent.

One ``httpx.AsyncClient`` per sink keeps connections alive between requests. With ``batch_size``
1 (the default) a request body is one event document; with ``batch_size`` N > 1 it is a JSON array
of up to N event documents (``[e1,e2,...]``, ``Content-Type: application/json``). Every request
carries ``Idempotency-Key`` (the event id, or ``first..last`` ids of a batch) and, when ``secret``
is set, ``X-Pgmigrator-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>``.

Retries, with exponential backoff and jitter (``retry`` options), on 5xx, 408, 429, timeouts and
connection errors; ``Retry-After`` (seconds or an HTTP date) is honoured, up to
``retry_after_max_s``. Any other status (3xx, 4xx) fails at once: a retry would get the same
answer. Giving up raises `RetryableSinkError` (the receiver may come back) or `SinkError`. When
the bus sends the same batch again, the requests the failed send had delivered are skipped.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pgmigrator import __version__
from pgmigrator.errors import ConfigError, RetryableSinkError, SinkError
from pgmigrator.log import get_logger
from pgmigrator.sinks._backoff import BackoffOptions, fold_flat
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.webhook")

SIGNATURE_HEADER = "X-Pgmigrator-Signature"
Outcome = Literal["ok", "retry", "fail"]


class WebhookOptions(BaseModel):
    """Options of a ``webhook`` sink."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        data = fold_flat(data, "retry_", "retry")
        data = fold_flat(data, "header.", "headers")
        return data

    url: str
    batch_size: int = Field(default=1, ge=1, le=100_000)
    batch_ms: int = Field(default=0, ge=0, le=60_000)  # how long the bus may wait to fill a batch
    timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    secret: SecretStr | None = None  # the shared HMAC key, or "env:NAME" to read it from $NAME
    headers: dict[str, str] = Field(default_factory=dict)
    retry: BackoffOptions = Field(default_factory=lambda: BackoffOptions())
    retry_after_max_s: float = Field(default=300.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("url must be an http:// or https:// URL with a host")
        return value


# -- pure helpers (unit tested) ----------------------------------------------------------------


def classify(status: int) -> Outcome:
    """What to do after an HTTP status: done, retry, or fail without retrying."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "fail"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date); None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def resolve_secret(secret: SecretStr | None) -> bytes | None:
    """The HMAC key: the configured value, or the environment variable named by ``env:NAME``."""
    if secret is None:
        return None
    raw = secret.get_secret_value()
    if raw.startswith("env:"):
        name = raw[4:]
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"webhook secret: environment variable {name!r} is not set or empty",
                hint=f"export {name}=... before starting, or put the secret in the config",
            )
        return value.encode()
    if not raw:
        raise ConfigError("webhook secret is empty", hint="set a secret or remove the option")
    return raw.encode()


def batch_body(events: Sequence[Event], batched: bool) -> bytes:
    """One event's document, or (``batched``) a JSON array of the documents, without re-encoding."""
    if not batched:
        return events[0].body
    return b"[" + b",".join(e.body for e in events) + b"]"


def idempotency_key(events: Sequence[Event]) -> str:
    first, last = events[0].id, events[-1].id
    return first if len(events) == 1 else f"{first}..{last}"


def safe_url(url: str) -> str:
    """The URL without user info or query (which may hold credentials), for logs and errors."""
    u = httpx.URL(url)
    return str(u.copy_with(username=None, password=None, query=None, fragment=None))


# -- the sink ----------------------------------------------------------------------------------


class WebhookSink:
    """POST events to one URL; see the module docstring."""

    durable = True

    def __init__(self, name: str, opts: WebhookOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.ctx = ctx
        self.max_batch = opts.batch_size  # hints to the bus: how many events per send
        self.linger_s = opts.batch_ms / 1000
        self._secret = resolve_secret(opts.secret)
        self._where = safe_url(opts.url)
        self._client: httpx.AsyncClient | None = None
        self._progress: tuple[str, int] | None = None  # (first id, delivered) of a failed send
        self._headers = {
            "User-Agent": f"pgmigrator/{__version__}",
            **opts.headers,
            "Content-Type": "application/json",
        }

    async def start(self) -> None:
        if self._client is None:
            timeout = httpx.Timeout(self.opts.timeout_s, connect=self.opts.connect_timeout_s)
            self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        log.info("webhook sink ready", sink=self.name, url=self._where)

    async def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self._client is None:
            await self.start()
        size = self.opts.batch_size
        done = self._already_delivered(events)
        try:
            for i in range(done, len(events), size):
                await self._deliver(events[i : i + size])
                done = min(len(events), i + size)
        except BaseException as exc:
            self._progress = (events[0].id, done) if done else None
            if isinstance(exc, SinkError):  # how far this batch got: the bus resends the rest
                exc.delivered, exc.failed = done, min(size, len(events) - done)
            raise
        self._progress = None

    def _already_delivered(self, events: Sequence[Event]) -> int:
        """How many leading events a failed send of the same batch delivered (skip them now)."""
        progress = self._progress
        if progress is None or events[0].id != progress[0] or len(events) < progress[1]:
            return 0
        log.info("webhook resumes a retried batch", sink=self.name, skipped=progress[1])
        return progress[1]

    async def _deliver(self, events: Sequence[Event]) -> None:
        body = batch_body(events, self.opts.batch_size > 1)
        headers = {**self._headers, "Idempotency-Key": idempotency_key(events)}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        tries = 0
        while True:
            tries += 1
            problem, wait_hint = await self._post(body, headers)
            if problem is None:
                return
            if isinstance(problem, SinkError) and not problem.retryable:
                raise problem
            if self.opts.retry.exhausted(tries):
                raise RetryableSinkError(
                    f"webhook {self.name}: gave up after {tries} attempts: {problem}",
                    hint=f"check that {self._where} is up; the events are delivered again on restart",
                )
            delay = self.opts.retry.delay(tries)
            if wait_hint is not None:
                delay = max(delay, min(wait_hint, self.opts.retry_after_max_s))
            log.warning(
                "webhook delivery failed, retrying",
                sink=self.name,
                url=self._where,
                error=str(problem),
                attempt=tries,
                retry_in_s=round(delay, 3),
            )
            if self.ctx.collector is not None:
                self.ctx.collector.sink_counter(self.name, retried=1)
            await asyncio.sleep(delay)

    async def _post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[Exception | None, float | None]:
        """One attempt: (None, None) when delivered, else the problem and a Retry-After delay."""
        assert self._client is not None
        try:
            res = await self._client.post(self.opts.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return RetryableSinkError(f"timed out ({type(exc).__name__})"), None
        except httpx.TransportError as exc:
            return RetryableSinkError(f"connection failed: {exc or type(exc).__name__}"), None
        outcome = classify(res.status_code)
        if outcome == "ok":
            return None, None
        text = f"HTTP {res.status_code} {res.reason_phrase}".strip()
        if outcome == "fail":
            return (
                SinkError(
                    f"webhook {self.name}: {self._where} answered {text}; not retried",
                    hint="a 4xx means the receiver rejects the request: fix the URL, headers "
                    "or receiver (only 408 and 429 are retried)",
                ),
                None,
            )
        return RetryableSinkError(text), parse_retry_after(res.headers.get("retry-after"))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


@register("webhook", WebhookOptions)
def make_webhook(name: str, opts: WebhookOptions, ctx: SinkContext) -> WebhookSink:
    return WebhookSink(name, opts, ctx)
