"""Exec sink against real child processes: JSON lines, stdout acks, restarts, stderr logging."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from pgmigrator.errors import ConfigError, RetryableSinkError
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.exec import ExecSink

FAST_RESTART = {"initial_s": 0.05, "max_s": 0.3, "jitter": 0.1, "attempts": 0}

# The consumer: appends every line to OUT (flushed), answers each with the event id on stdout,
# records its pid, optionally exits after N lines, and says hello on stderr.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    out, pids, exit_after, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    print(f"consumer {os.getpid()} ready", file=sys.stderr, flush=True)
    n = 0
    with open(out, "a") as f:
        for line in sys.stdin:
            doc = json.loads(line)
            f.write(line)
            f.flush()
            if delay:
                time.sleep(delay)
            print(doc["id"], flush=True)
            n += 1
            if exit_after and n >= exit_after:
                sys.exit(3)
    """
)


def events(n: int) -> list[Event]:
    out = []
    for i in range(n):
        eid = f"0/{i + 1:X}:0"
        body = orjson.dumps({"id": eid, "op": "u", "after": {"n": i}})
        out.append(Event(eid, Lsn(i + 1), "u", "public", "t", body))
    return out


async def until(condition: Callable[[], object], timeout: float = 30, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [orjson.loads(x)["id"] for x in path.read_text().splitlines() if x]


def consumer(tmp_path: Path, exit_after: int = 0, delay: float = 0.0) -> list[str]:
    script = tmp_path / "consumer.py"
    script.write_text(CHILD)
    out, pids = tmp_path / "out.jsonl", tmp_path / "pids"
    return [sys.executable, str(script), str(out), str(pids), str(exit_after), str(delay)]


def make(command: list[str] | str, collector: Collector | None = None, **opts: object) -> ExecSink:
    options = {"command": command, "restart": FAST_RESTART, **opts}
    sink = build_sink("exec", "consumer", options, SinkContext(collector=collector))
    assert isinstance(sink, ExecSink)
    return sink


async def test_json_lines_to_stdin_and_stderr_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pgmigrator")
    sink = make(consumer(tmp_path))
    await sink.start()
    batch = events(50)
    await sink.send(batch)
    await sink.close()  # stdin closed: the child reads to the end and exits
    assert lines(tmp_path / "out.jsonl") == [e.id for e in batch]
    logged = [r for r in caplog.records if r.getMessage() == "exec sink child output"]
    assert any("ready" in r.fields["line"] for r in logged)  # type: ignore[attr-defined]
    assert all(r.fields["stream"] == "stderr" for r in logged[:1])  # type: ignore[attr-defined]


async def test_stdout_acks_and_a_killed_child_is_restarted(tmp_path: Path) -> None:
    collector = Collector()
    sink = make(consumer(tmp_path, delay=0.002), collector, ack="stdout")
    await sink.start()
    batch = events(400)
    out = tmp_path / "out.jsonl"

    async def feed() -> None:
        for i in range(0, len(batch), 20):
            await sink.send(batch[i : i + 20])

    feeding = asyncio.ensure_future(feed())
    await until(lambda: len(lines(out)) >= 100, what="the first events to arrive")
    first_pid = sink.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)  # mid-stream
    await asyncio.wait_for(feeding, 60)
    await sink.close()
    got = lines(out)
    assert set(got) == {e.id for e in batch}  # every event arrived, at least once
    assert len(got) < len(batch) + 40  # only the unacknowledged rest was sent again
    pids = (tmp_path / "pids").read_text().split()
    assert len(pids) >= 2 and pids[0] == str(first_pid)
    assert sink.restarts >= 1
    assert collector.snapshot()["sinks"]["consumer"]["retried"] >= 1


async def test_child_exiting_on_its_own_is_restarted_with_backoff(tmp_path: Path) -> None:
    sink = make(consumer(tmp_path, exit_after=7), ack="stdout")
    await sink.start()
    batch = events(30)
    started = time.monotonic()
    await sink.send(batch)
    elapsed = time.monotonic() - started
    await sink.close()
    got = lines(tmp_path / "out.jsonl")
    assert set(got) == {e.id for e in batch}
    assert len((tmp_path / "pids").read_text().split()) >= 5  # 30 events, 7 per child
    assert sink.restarts >= 4
    assert elapsed >= 0.05 * 4 * 0.9  # each restart waited for its backoff delay


async def test_shell_command_in_write_mode(tmp_path: Path) -> None:
    out = tmp_path / "shell.jsonl"
    sink = make(f"cat >> '{out}'")
    await sink.start()
    batch = events(10)
    await sink.send(batch)
    await sink.close()
    assert lines(out) == [e.id for e in batch]


async def test_a_child_that_keeps_failing_gives_up(tmp_path: Path) -> None:
    sink = make([sys.executable, "-c", "import sys; sys.exit(1)"], ack="stdout",
                restart={**FAST_RESTART, "attempts": 3})  # fmt: skip
    await sink.start()
    with pytest.raises(RetryableSinkError, match="failed 3 times"):
        await sink.send(events(5))
    await sink.close()


async def test_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    sink = make([str(tmp_path / "no-such-program")])
    with pytest.raises(ConfigError, match="cannot start") as info:
        await sink.start()
    assert info.value.hint
