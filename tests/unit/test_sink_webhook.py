"""Pure parts of the webhook sink: retry classification, Retry-After, signature, bodies, options."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import random

import orjson
import pytest
from pydantic import SecretStr

from pgmigrator.errors import ConfigError
from pgmigrator.lsn import Lsn
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks._backoff import BackoffOptions
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.webhook import (
    WebhookSink,
    batch_body,
    classify,
    idempotency_key,
    parse_retry_after,
    resolve_secret,
    safe_url,
    sign,
)


def ev(i: int) -> Event:
    body = orjson.dumps({"id": f"0/1:{i}", "op": "c", "after": {"n": i}})
    return Event(f"0/1:{i}", Lsn(1), "c", "public", "t", body)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (301, "fail"),
        (400, "fail"),
        (401, "fail"),
        (404, "fail"),
        (408, "retry"),
        (409, "fail"),
        (422, "fail"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (599, "retry"),
    ],
)
def test_classify(status: int, outcome: str) -> None:
    assert classify(status) == outcome


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(42, abs=1)
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert sign(b"k3y", body) == "sha256=" + expected
    assert sign(b"other", body) != sign(b"k3y", body)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t")
    assert resolve_secret(SecretStr("env:HOOK_SECRET")) == b"s3cr3t"
    assert resolve_secret(SecretStr("plain")) == b"plain"
    assert resolve_secret(None) is None
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError, match="HOOK_SECRET") as info:
        resolve_secret(SecretStr("env:HOOK_SECRET"))
    assert info.value.hint


def test_bodies_and_idempotency_keys() -> None:
    events = [ev(1), ev(2), ev(3)]
    assert batch_body(events[:1], False) == events[0].body
    array = orjson.loads(batch_body(events, True))
    assert [d["id"] for d in array] == ["0/1:1", "0/1:2", "0/1:3"]
    assert idempotency_key(events[:1]) == "0/1:1"
    assert idempotency_key(events) == "0/1:1..0/1:3"


def test_safe_url_hides_credentials() -> None:
    shown = safe_url("https://user:pw@example.com/hook?token=abc")
    assert "pw" not in shown and "abc" not in shown
    assert shown.startswith("https://example.com/hook")


def test_backoff_grows_caps_and_jitters() -> None:
    b = BackoffOptions(initial_s=1, max_s=10, multiplier=2, jitter=0, attempts=3)
    assert [b.delay(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert not b.exhausted(2) and b.exhausted(3)
    assert not BackoffOptions(attempts=0).exhausted(10**6)
    j = BackoffOptions(initial_s=1, jitter=0.5)
    rng = random.Random(1)
    delays = {round(j.delay(1, rng), 6) for _ in range(50)}
    assert len(delays) > 10 and all(0.5 <= d <= 1.5 for d in delays)


def test_options_are_validated() -> None:
    ctx = SinkContext()
    with pytest.raises(ConfigError, match="url"):
        build_sink("webhook", "w", {"url": "ftp://x/y"}, ctx)
    with pytest.raises(ConfigError, match="batch_size"):
        build_sink("webhook", "w", {"url": "http://x/y", "batch_size": 0}, ctx)
    with pytest.raises(ConfigError, match="bogus"):
        build_sink("webhook", "w", {"url": "http://x/y", "bogus": 1}, ctx)
    sink = build_sink("webhook", "w", {"url": "http://x/y", "batch_size": 50}, ctx)
    assert isinstance(sink, WebhookSink) and sink.durable and sink.max_batch == 50


def test_secret_never_in_repr() -> None:
    sink = build_sink("webhook", "w", {"url": "http://x/y", "secret": "hunter2"}, SinkContext())
    assert isinstance(sink, WebhookSink)
    assert "hunter2" not in repr(sink.opts) and "hunter2" not in str(sink.opts.model_dump())


def test_flat_command_line_keys_fold_into_nested_options() -> None:
    from pgmigrator.sinks._backoff import fold_flat

    raw = {"url": "http://x/y", "retry_attempts": "3", "retry_initial_s": "0.1"}
    assert fold_flat(raw, "retry_", "retry") == {
        "url": "http://x/y",
        "retry": {"attempts": "3", "initial_s": "0.1"},
    }
    assert fold_flat({"url": "u"}, "retry_", "retry") == {"url": "u"}
    sink = build_sink(
        "webhook",
        "w",
        {"url": "http://x/y", "retry_attempts": "4", "header.X-Tenant": "acme"},
        SinkContext(),
    )
    assert isinstance(sink, WebhookSink)
    assert sink.opts.retry.attempts == 4 and sink.opts.headers == {"X-Tenant": "acme"}
    with pytest.raises(ConfigError, match="retry"):
        build_sink("webhook", "w", {"url": "http://x/y", "retry_bogus": "1"}, SinkContext())
