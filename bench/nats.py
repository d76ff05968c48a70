"""NATS benchmark: events/s through the ``nats`` sink into a real JetStream stream.

Starts ``nats-server -js`` on a free port with a fresh store under /tmp, builds ``--events``
pre-encoded change events (about 200-byte JSON documents spread over 4 tables, ids as the bus makes
them), and sends them through `NatsSink.send` in batches of ``--batch`` events, each batch waiting
for every JetStream acknowledgement (what the bus waits for before the slot may advance). It then
checks the stream holds exactly ``--events`` messages and re-sends the first batch to time the
dedup path. Prints events/s and MB/s.

Run: ``.venv/bin/python bench/nats.py [--events 1000000] [--batch 5000] [--in-flight 4096]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the client library: keep its folder off the import path
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import orjson  # noqa: E402

from pgmigrator.lsn import Lsn  # noqa: E402
from pgmigrator.sinks import Event, SinkContext  # noqa: E402
from pgmigrator.sinks.nats import NatsOptions, NatsSink  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("nats-server")
    if exe is None:
        sys.exit("nats-server is not installed: apt-get install -y nats-server")
    proc = subprocess.Popen(
        [exe, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("nats-server did not start")
            time.sleep(0.05)


def build_events(n: int) -> list[Event]:
    tables = ("orders", "customers", "items", "payments")
    out = []
    for i in range(n):
        table = tables[i % 4]
        lsn = 0x1000000 + (i // 10) * 64
        body = orjson.dumps(
            {
                "id": f"{lsn:X}:{i % 10}",
                "op": "c",
                "source": {"schema": "public", "table": table, "lsn": f"0/{lsn:X}"},
                "after": {"aid": i, "bid": i % 50, "abalance": i * 7, "filler": "x" * 60},
            }
        )
        out.append(Event(f"0/{lsn:X}:{i % 10}", Lsn(lsn), "c", "public", table, body))
    return out


async def run(args: argparse.Namespace) -> None:
    store = Path(tempfile.mkdtemp(prefix="pgm-bench-nats-", dir="/tmp"))
    port = free_port()
    proc = start_server(store, port)
    try:
        t0 = time.perf_counter()
        events = build_events(args.events)
        built = time.perf_counter() - t0
        opts = NatsOptions(url=f"nats://127.0.0.1:{port}", max_in_flight=args.in_flight)
        sink = NatsSink("bench", opts, SinkContext())
        await sink.start()
        nbytes = sum(len(e.body) for e in events)
        t0 = time.perf_counter()
        for i in range(0, len(events), args.batch):
            await sink.send(events[i : i + args.batch])
        elapsed = time.perf_counter() - t0
        assert sink.js is not None
        info = await sink.js.stream_info(opts.stream)
        stored = int(info.state.messages)
        t1 = time.perf_counter()
        await sink.send(events[: args.batch])
        dedup = time.perf_counter() - t1
        info = await sink.js.stream_info(opts.stream)
        await sink.close()
        print(f"events built: {len(events):,} in {built:.1f}s (not timed)")
        print(
            f"published + acknowledged: {len(events):,} events, {nbytes / 1e6:.0f} MB in "
            f"{elapsed:.1f}s = {len(events) / elapsed:,.0f} events/s, {nbytes / 1e6 / elapsed:.1f} MB/s"
            f" (batch {args.batch}, in flight {args.in_flight})"
        )
        print(f"stream messages: {stored:,} (expected {len(events):,})")
        print(
            f"re-sent batch of {args.batch}: {sink.duplicates} duplicates dropped by the server in "
            f"{dedup:.2f}s; stream still {int(info.state.messages):,}"
        )
        if stored != len(events) or int(info.state.messages) != len(events):
            sys.exit("FAILED: stream message count differs from events sent")
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=4096)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
