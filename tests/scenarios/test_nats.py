"""Journey: change events published to NATS JetStream and consumed by durable consumers.

A real ``nats-server -js`` is started per test on a free port with its own store directory.
Covers delivery (every event on its table's subject, read back with a durable pull consumer),
server-side deduplication of a re-sent batch (same ``Nats-Msg-Id``), and the broker going down and
coming back (sends fail as retryable while it is down and succeed once it is back, nothing lost).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.api import ConsumerConfig

from pgmigrator.errors import RetryableSinkError, SinkError
from pgmigrator.lsn import Lsn
from pgmigrator.sinks import Event, SinkContext, build_sink
from pgmigrator.sinks.nats import NatsSink
from tests.conftest import Pair, start_pgmigrator

NATS_SERVER = shutil.which("nats-server")
pytestmark = pytest.mark.skipif(
    NATS_SERVER is None,
    reason="nats-server is not installed (Debian package nats-server; .ci/run installs it as root)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, store: Path) -> None:
        self.port = _free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NATS_SERVER is not None
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("nats-server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "js")
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


def make_events(n: int, start: int = 0) -> list[Event]:
    out = []
    for i in range(start, start + n):
        table = ("orders", "customers", "odd.name")[i % 3]
        body = orjson.dumps({"id": f"{i:08d}", "op": "c", "table": table, "after": {"n": i}})
        out.append(Event(f"0/{i:X}:0", Lsn(i + 1), "c", "public", table, body))
    out.append(Event(f"0/{start + n:X}:m", Lsn(start + n), "m", None, None, b'{"prefix":"x"}'))
    return out


@pytest.fixture
async def sink(server: NatsServer) -> AsyncIterator[NatsSink]:
    built = build_sink("nats", "bus", {"url": server.url, "ack_timeout_s": 2.0}, SinkContext())
    assert isinstance(built, NatsSink)
    await built.start()
    try:
        yield built
    finally:
        await built.close()


async def consume_all(url: str, durable: str, expect: int) -> list[tuple[str, str, bytes]]:
    """Read the stream with a durable pull consumer: (subject, msg id, body) in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            "pgmigrator.>", durable=durable, stream="PGMIGRATOR", config=ConsumerConfig()
        )
        got: list[tuple[str, str, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < expect and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(min(500, expect - len(got)), timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                got.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), m.data))
                await m.ack()
        try:  # nothing more than expected
            extra = await sub.fetch(1, timeout=0.5)
        except nats.errors.TimeoutError:
            extra = []
        assert not extra, f"unexpected extra message on {extra[0].subject}"
        return got
    finally:
        await nc.close()


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("PGMIGRATOR")
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_delivers_every_event_to_its_table_subject(
    server: NatsServer, sink: NatsSink
) -> None:
    events = make_events(3000)
    for i in range(0, len(events), 1000):
        await sink.send(events[i : i + 1000])
    got = await consume_all(server.url, "reader", len(events))
    assert [g[1] for g in got] == [e.id for e in events]
    assert [g[2] for g in got] == [e.body for e in events]
    subjects = {g[0] for g in got}
    assert subjects == {
        "pgmigrator.public.orders",
        "pgmigrator.public.customers",
        "pgmigrator.public.odd_name",
        "pgmigrator._message",
    }
    # a second durable consumer reads the same stream independently
    again = await consume_all(server.url, "audit", len(events))
    assert len(again) == len(events)


async def test_resent_batch_is_deduplicated_by_message_id(
    server: NatsServer, sink: NatsSink
) -> None:
    events = make_events(500)
    await sink.send(events)
    assert await stream_messages(server.url) == len(events)
    assert sink.duplicates == 0
    await sink.send(events)  # what the bus does after a restart: the same ids again
    assert sink.duplicates == len(events)
    assert await stream_messages(server.url) == len(events)
    fresh = make_events(100, start=500)
    await sink.send(fresh)
    assert await stream_messages(server.url) == len(events) + len(fresh)


async def test_broker_down_then_back(server: NatsServer, sink: NatsSink) -> None:
    before = make_events(200)
    await sink.send(before)
    server.kill()
    during = make_events(200, start=1000)
    with pytest.raises(RetryableSinkError):
        await sink.send(during)
    server.start()  # same port, same store: JetStream recovers what it had acknowledged
    deadline = time.monotonic() + 30
    while True:  # what the bus does with a retryable error: back off and re-send the batch
        try:
            await sink.send(during)
            break
        except RetryableSinkError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    got = await consume_all(server.url, "after-restart", len(before) + len(during))
    assert sorted(g[1] for g in got) == sorted(e.id for e in before + during)


async def test_unreachable_broker_is_a_retryable_error_with_hint(tmp_path: Path) -> None:
    url = f"nats://user:s3cret@127.0.0.1:{_free_port()}"
    built = build_sink("nats", "down", {"url": url, "connect_timeout_s": 0.5}, SinkContext())
    with pytest.raises(RetryableSinkError) as info:
        await built.start()
    assert info.value.hint and "nats-server" in info.value.hint
    assert "s3cret" not in str(info.value)
    await built.close()


async def until(condition: Any, timeout: float, what: str) -> Any:
    """Await ``condition()`` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


async def test_stream_command_kill_9_and_restart_is_deduplicated(
    pair: Pair, server: NatsServer
) -> None:
    """`pgmigrator stream --sink nats`: a kill -9 mid-backlog, a restart, every event once."""
    last = 60_000
    total = last + 1  # rows 0..last
    with pair.src() as conn:
        conn.execute("CREATE TABLE q (id int PRIMARY KEY, v text)")
    args = (
        "stream", "--source", pair.source, "--name", pair.dbname, "--create",
        "--sink", f"nats:url={server.url},batch=500",
    )  # fmt: skip
    proc = start_pgmigrator(*args)
    try:

        async def first() -> bool:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "stream exited")
            try:
                return await stream_messages(server.url) > 0
            except nats.js.errors.NotFoundError:
                return False

        async def slot_active() -> bool:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "stream exited")
            with pair.src() as conn:
                sql = "SELECT count(*) FROM pg_replication_slots WHERE active AND database = current_database()"
                return bool(conn.execute(sql).fetchone()[0])  # type: ignore[index]

        await until(slot_active, 60, "the stream to start")
        with pair.src() as conn:
            conn.execute("INSERT INTO q VALUES (0, 'first')")
        await until(first, 60, "the stream to publish")
        with pair.src() as conn:  # a backlog of small transactions
            for start in range(1, last + 1, 100):
                conn.execute(
                    "INSERT INTO q SELECT g, 'v' || g FROM generate_series(%s::int, %s::int) g",
                    (start, start + 99),
                )

        async def some() -> bool:
            return await stream_messages(server.url) > 5000

        await until(some, 60, "part of the backlog")
        kill_group(proc)
        at_kill = await stream_messages(server.url)
        assert at_kill < total, "the kill should land in the middle of the backlog"
        proc = start_pgmigrator(*args)

        async def everything() -> bool:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "stream exited")
            return await stream_messages(server.url) >= total

        await until(everything, 120, "every event after the restart")
        got = await consume_all(server.url, "check", total)
        ids = [g[1] for g in got]
        assert len(set(ids)) == len(ids) == total, "JetStream holds every event exactly once"
        rows = sorted(orjson.loads(g[2])["after"]["id"] for g in got)
        assert rows == list(range(last + 1))
        assert {g[0] for g in got} == {"pgmigrator.public.q"}
    finally:
        kill_group(proc)


async def test_missing_stream_and_missing_jetstream_are_clear_errors(
    server: NatsServer, tmp_path: Path
) -> None:
    opts = {"url": server.url, "create_stream": False, "stream": "ABSENT"}
    built = build_sink("nats", "strict", opts, SinkContext())
    with pytest.raises(SinkError) as info:
        await built.start()
    assert not info.value.retryable and "'ABSENT' does not exist" in info.value.message
    assert info.value.hint and "create_stream" in info.value.hint
    await built.close()
    assert NATS_SERVER is not None
    plain_port = _free_port()  # a server without JetStream
    plain = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(plain_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", plain_port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                await asyncio.sleep(0.05)
        url = f"nats://127.0.0.1:{plain_port}"
        built = build_sink("nats", "nojs", {"url": url}, SinkContext())
        with pytest.raises(SinkError) as info:
            await built.start()
        assert "JetStream" in info.value.message
        await built.close()
    finally:
        plain.kill()
        plain.wait(10)
