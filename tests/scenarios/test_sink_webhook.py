"""Webhook sink against a real HTTP receiver: signatures, retries, 4xx, Retry-After, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from pgmigrator.errors import RetryableSinkError, SinkError
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.webhook import WebhookSink
from tests.scenarios.webhook_receiver import Receiver

SECRET = b"shared-s3cret"
FAST_RETRY = {"initial_s": 0.05, "max_s": 0.2, "jitter": 0.1, "attempts": 0}


def events(n: int, start: int = 0) -> list[Event]:
    out = []
    for i in range(start, start + n):
        eid = f"0/{i + 1:X}:0"
        body = orjson.dumps({"id": eid, "op": "c", "after": {"n": i, "s": 'é\\"x'}})
        out.append(Event(eid, Lsn(i + 1), "c", "public", "t", body))
    return out


async def until(condition: Callable[[], object], timeout: float = 20, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(secret=SECRET).start()
    yield r
    r.stop()


def make(receiver: Receiver, collector: Collector | None = None, **opts: object) -> WebhookSink:
    options = {"url": receiver.url, "secret": SECRET.decode(), "retry": FAST_RETRY, **opts}
    sink = build_sink("webhook", "hook", options, SinkContext(collector=collector))
    assert isinstance(sink, WebhookSink)
    return sink


async def test_signed_single_events_with_idempotency_keys(receiver: Receiver) -> None:
    sink = make(receiver, headers={"X-Tenant": "acme"})
    await sink.start()
    batch = events(20)
    await sink.send(batch)
    await sink.close()
    assert receiver.ids() == [e.id for e in batch]
    for req, e in zip(receiver.requests, batch, strict=True):
        assert req.signature_ok is True
        assert req.headers["idempotency-key"] == e.id
        assert req.headers["x-tenant"] == "acme"
        assert req.headers["content-type"] == "application/json"
        assert req.body == e.body  # forwarded as is, never re-encoded


async def test_batches_are_json_arrays_keyed_first_to_last(receiver: Receiver) -> None:
    sink = make(receiver, batch_size=10)
    await sink.start()
    batch = events(25)
    await sink.send(batch)
    await sink.close()
    assert receiver.ids() == [e.id for e in batch]
    assert [len(r.documents()) for r in receiver.requests] == [10, 10, 5]
    first = receiver.requests[0]
    assert first.headers["idempotency-key"] == f"{batch[0].id}..{batch[9].id}"
    assert all(r.signature_ok for r in receiver.requests)


async def test_server_errors_are_retried_and_counted(receiver: Receiver) -> None:
    receiver.plan.extend([503, 500, 502, 408])
    collector = Collector()
    sink = make(receiver, collector)
    await sink.start()
    await sink.send(events(1))
    await sink.close()
    assert receiver.statuses() == [503, 500, 502, 408, 200]
    assert receiver.ids() == [events(1)[0].id]
    assert collector.snapshot()["sinks"]["hook"]["retried"] == 4
    keys = {r.headers["idempotency-key"] for r in receiver.requests}
    assert keys == {events(1)[0].id}  # the same key on every attempt


async def test_429_honours_retry_after(receiver: Receiver) -> None:
    receiver.plan.append((429, {"Retry-After": "1"}))
    sink = make(receiver)
    await sink.start()
    started = time.monotonic()
    await sink.send(events(1))
    elapsed = time.monotonic() - started
    await sink.close()
    assert receiver.statuses() == [429, 200]
    assert elapsed >= 0.95  # the backoff alone would have waited about 0.05 s


async def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.plan.append(400)
    sink = make(receiver)
    await sink.start()
    with pytest.raises(SinkError) as info:
        await sink.send(events(3))
    await sink.close()
    assert not info.value.retryable
    assert "400" in info.value.message and info.value.hint
    assert receiver.statuses() == [400]


async def test_gives_up_after_the_attempts(receiver: Receiver) -> None:
    receiver.plan.extend([503] * 10)
    sink = make(receiver, retry={**FAST_RETRY, "attempts": 3})
    await sink.start()
    with pytest.raises(RetryableSinkError, match="gave up after 3 attempts"):
        await sink.send(events(1))
    await sink.close()
    assert receiver.statuses() == [503, 503, 503]


async def test_timeouts_are_retried(receiver: Receiver) -> None:
    receiver.delay_first_s = 1.0
    sink = make(receiver, timeout_s=0.3)
    await sink.start()
    await sink.send(events(1))
    await sink.close()
    assert receiver.ids() == [events(1)[0].id]  # the retry; the slow answer came too late
    assert receiver.arrivals == 2


async def test_secret_from_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGM_TEST_HOOK_SECRET", SECRET.decode())
    sink = make(receiver, secret="env:PGM_TEST_HOOK_SECRET")
    await sink.start()
    await sink.send(events(2))
    await sink.close()
    assert [r.signature_ok for r in receiver.requests] == [True, True]


async def test_receiver_down_for_a_while_then_back_loses_nothing(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector()
    sink = make(receiver, collector, batch_size=7)
    await sink.start()
    first, rest = events(30), events(70, start=30)
    await sink.send(first)
    receiver.stop()  # down: connection refused, open connections cut
    sending = asyncio.ensure_future(sink.send(rest))
    retried = lambda: collector.snapshot()["sinks"].get("hook", {}).get("retried", 0)  # noqa: E731
    await until(lambda: retried() >= 3, what="retries while the receiver is down")
    assert not sending.done()
    receiver.start()  # back on the same port
    await asyncio.wait_for(sending, 30)
    await sink.close()
    ids = receiver.ids()
    assert set(ids) == {e.id for e in first + rest}  # nothing lost
    assert ids[-1] == rest[-1].id
    assert all(r.signature_ok for r in receiver.requests)
    assert SECRET.decode() not in caplog.text


async def test_a_retried_batch_skips_what_was_already_delivered(receiver: Receiver) -> None:
    receiver.plan.extend([200, 200, 503, 503])
    sink = make(receiver, batch_size=5, retry={**FAST_RETRY, "attempts": 2})
    await sink.start()
    batch = events(20)
    with pytest.raises(RetryableSinkError):
        await sink.send(batch)  # 10 delivered, then the receiver fails twice: gave up
    await sink.send(batch)  # the bus sends the same batch again
    await sink.close()
    assert receiver.ids() == [e.id for e in batch]  # each event exactly once
    assert receiver.statuses() == [200, 200, 503, 503, 200, 200]
