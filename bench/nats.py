"""NATS benchmark: events/s into a real JetStream stream, through the ``nats`` sink.

Two runs, each against a fresh ``nats-server -js`` (free port, fresh store under /tmp):

``backlog``  the real path: a throwaway PostgreSQL cluster (``pgmigrator.devcluster``, or
             ``--source DSN``) gets a table ``bench(id int8 pk, account int, amount numeric, note
             text, created timestamptz)`` and a backlog of ``--rows`` inserts in 100 transactions
             behind a pgoutput slot; ``pgmigrator stream --sink nats:url=...`` drains it, timed
             from process start until the JetStream stream holds every event (polled every 0.1 s).
``sink``     the sink alone: ``--events`` pre-encoded events (about 200-byte documents over 4
             tables) sent through `NatsSink.send` in batches of ``--batch``, each batch waiting for
             every acknowledgement; then the first batch is re-sent to time the dedup path.

Run: ``.venv/bin/python bench/nats.py [--rows 1000000] [--events 1000000] [--runs backlog,sink]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

import nats  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402

from pgmigrator import devcluster  # noqa: E402
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


DDL = """
CREATE TABLE bench (id int8 PRIMARY KEY, account int NOT NULL, amount numeric(12,2),
                    note text, created timestamptz DEFAULT now());
CREATE PUBLICATION bench_pub FOR TABLE bench;
"""


def write_backlog(source: str, rows: int) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute("SELECT pg_create_logical_replication_slot('bench_nats', 'pgoutput')")
        step = max(1, rows // 100)
        for lo in range(1, rows + 1, step):
            conn.execute(
                "INSERT INTO bench (id, account, amount, note) SELECT g, g %% 1000, g * 0.01,"
                " 'note ' || g FROM generate_series(%s::int8, %s::int8) g",
                (lo, min(rows, lo + step - 1)),
            )


async def stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("PGMIGRATOR")).state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def run_backlog(args: argparse.Namespace, work: Path) -> None:
    clusters = None
    source = args.source
    if source is None:
        clusters = devcluster.start_pair(work / "clusters")
        clusters[0].create_database("bench_nats")
        source = clusters[0].dsn("bench_nats")
    port = free_port()
    proc = start_server(work / "js-backlog", port)
    try:
        t0 = time.perf_counter()
        write_backlog(source, args.rows)
        print(
            f"backlog: {args.rows:,} inserts in 100 transactions written in {time.perf_counter() - t0:.1f}s"
        )
        url = f"nats://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "pgmigrator",
            "stream",
            "--source",
            source,
            "--slot",
            "bench_nats",
        ]
        cmd += [
            "--publication",
            "bench_pub",
            "--name",
            "bench_nats",
            "--sink",
            f"nats:url={url},batch={args.stream_batch}",
        ]
        env = {**os.environ, "PGMIGRATOR_STATE_DIR": str(work)}
        log = (work / "stream.log").open("wb")
        t0 = time.perf_counter()
        stream = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        first = None
        n = 0
        while n < args.rows:
            if stream.poll() is not None:
                sys.exit(f"stream exited: {(work / 'stream.log').read_text()[-2000:]}")
            n = await stored(url)
            if n and first is None:
                first = time.perf_counter()
            await asyncio.sleep(0.1)  # the benchmark's poll interval
        elapsed = time.perf_counter() - t0
        steady = time.perf_counter() - (first or t0)
        stream.terminate()
        stream.wait(60)
        print(
            f"backlog -> pgmigrator stream -> JetStream: {args.rows:,} events in {elapsed:.1f}s = "
            f"{args.rows / elapsed:,.0f} events/s (steady, first to last event: {args.rows / steady:,.0f}/s)"
        )
        if n != args.rows:
            sys.exit(f"FAILED: stream holds {n} messages, expected {args.rows}")
    finally:
        proc.kill()
        proc.wait(10)
        if clusters is not None:
            for cluster in clusters:
                cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="backlog,sink", help="backlog, sink or both")
    parser.add_argument("--rows", type=int, default=1_000_000, help="backlog run: inserts")
    parser.add_argument(
        "--source", help="backlog run: a superuser DSN instead of a throwaway cluster"
    )
    parser.add_argument(
        "--stream-batch",
        type=int,
        default=1000,
        help="backlog run: events per sink send (bus batch)",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="sink run: events")
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=4096)
    args = parser.parse_args()
    runs = set(args.runs.split(","))
    if "backlog" in runs:
        work = Path(tempfile.mkdtemp(prefix="pgm-bench-nats-", dir="/tmp"))
        os.chmod(work, 0o755)
        try:
            asyncio.run(run_backlog(args, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "sink" in runs:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
