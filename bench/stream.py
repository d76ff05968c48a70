"""Stream benchmark: events/s from a WAL backlog to the file sink and to a local webhook receiver,
and end-to-end latency at a steady rate.

Starts two throwaway clusters (``pgmigrator.devcluster``, only the source is used) under a fresh
directory in /tmp (or uses ``--source DSN``), creates a table ``bench(id int8 pk, account int,
amount numeric, note text, created timestamptz)``, a publication and one pgoutput slot per run,
then writes the backlog: ``--rows`` inserts in 100 transactions. Each run starts
``pgmigrator stream`` on its own slot and times it until the sink holds every event:

``file``     ``--sink file:path=...,fsync=batch`` (one write + fsync per batch of 1000 events)
``webhook``  ``--sink webhook:url=...,batch_size=1000`` to a local receiver process that counts
             events (skipped when the webhook sink is not installed)
``latency``  a fresh slot with no backlog, a writer committing ``--rate`` single-row transactions
             per second for ``--latency-s`` seconds; latency = when the event's line is read back
             from the file sink minus the source's commit time (same clock)

Throughput is events / (last event seen - process start), which includes the process start-up
and connecting; ``steady`` excludes them (first to last event). ``cpu_s`` is the stream
process's CPU time. Results go to stdout and ``bench/results/stream-<timestamp>.json``.

Run: ``.venv/bin/python bench/stream.py`` (``--rows 200000`` for a quick run)
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PGMIGRATOR = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pgmigrator"]
sys.path.insert(0, str(ROOT / "src"))

from pgmigrator import devcluster  # noqa: E402

DDL = """
CREATE TABLE bench (id int8 PRIMARY KEY, account int NOT NULL, amount numeric(12,2),
                    note text, created timestamptz DEFAULT now());
CREATE PUBLICATION bench_pub FOR TABLE bench;
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="backlog size (events)")
    p.add_argument("--rate", type=int, default=500, help="latency run: transactions per second")
    p.add_argument("--latency-s", type=float, default=10.0, help="latency run duration")
    p.add_argument("--source", help="use this server (superuser DSN) instead of a throwaway one")
    p.add_argument("--keep", action="store_true", help="keep the clusters and the sinks' output")
    return p.parse_args()


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LineCounter:
    """Counts complete lines of a growing file, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0
        self.first: float | None = None

    def poll(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        if data:
            cut = data.rfind(b"\n") + 1
            self.offset += cut
            self.lines += data[:cut].count(b"\n")
            if self.first is None and self.lines:
                self.first = time.monotonic()
        return self.lines


def start_stream(source: str, slot: str, sink: str, log: Path) -> subprocess.Popen[bytes]:
    args = [*PGMIGRATOR, "stream", "--source", source, "--slot", slot]
    args += ["--publication", "bench_pub", "--name", f"bench_{slot}", "--sink", sink]
    env = {**os.environ, "PGMIGRATOR_STATE_DIR": str(log.parent)}
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def timed_drain(
    proc: subprocess.Popen[bytes], count: Any, total: int, log: Path, timeout: float = 600
) -> dict[str, float]:
    start = time.monotonic()
    first: float | None = None
    while True:
        n = count()
        now = time.monotonic()
        if n and first is None:
            first = now
        if n >= total:
            break
        if proc.poll() is not None:
            raise SystemExit(f"stream exited early:\n{log.read_text()[-2000:]}")
        if now - start > timeout:
            raise SystemExit(f"timed out with {n}/{total} events")
        time.sleep(0.02)  # a poll interval of the benchmark, not a wait on a condition in code
    cpu = proc_cpu_s(proc.pid)
    stop(proc)
    total_s = now - start
    steady_s = now - (first or start)
    return {
        "events": total,
        "seconds": round(total_s, 2),
        "events_per_s": round(total / total_s),
        "steady_events_per_s": round(total / steady_s) if steady_s > 0 else 0,
        "cpu_s": round(cpu, 2),
    }


def run_file(source: str, work: Path, rows: int) -> dict[str, float]:
    out = work / "file-run.jsonl"
    proc = start_stream(source, "s_file", f"file:path={out},fsync=batch", work / "file-run.log")
    counter = LineCounter(out)
    result = timed_drain(proc, counter.poll, rows, work / "file-run.log")
    result["bytes"] = out.stat().st_size
    return result


class _Receiver(http.server.BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with _Receiver.lock:
            _Receiver.count += body.count(b'"op":"')
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def run_webhook(source: str, work: Path, rows: int) -> dict[str, float] | None:
    if not (ROOT / "src" / "pgmigrator" / "sinks" / "webhook.py").exists():
        say("webhook sink not installed: skipping the webhook run")
        return None
    http.server.ThreadingHTTPServer.daemon_threads = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/events"
    proc = start_stream(source, "s_hook", f"webhook:url={url},batch_size=1000", work / "hook.log")
    try:
        return timed_drain(proc, lambda: _Receiver.count, rows, work / "hook.log")
    finally:
        server.shutdown()


def run_latency(source: str, work: Path, rate: int, seconds: float) -> dict[str, float]:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s_lat', 'pgoutput')")
    out = work / "latency.jsonl"
    proc = start_stream(source, "s_lat", f"file:path={out},fsync=batch", work / "latency.log")
    lat: list[float] = []
    done = threading.Event()

    def tail() -> None:
        offset = 0
        while not done.is_set() or offset < (out.stat().st_size if out.exists() else 0):
            if out.exists():
                with out.open("rb") as f:
                    f.seek(offset)
                    data = f.read()
                cut = data.rfind(b"\n") + 1
                seen = time.time()
                for line in data[:cut].splitlines():
                    doc = json.loads(line)
                    commit = datetime.fromisoformat(doc["source"]["commit_time"]).timestamp()
                    lat.append(seen - commit)
                offset += cut
            time.sleep(0.0005)

    reader = threading.Thread(target=tail)
    with psycopg.connect(source, autocommit=True) as conn:
        while not out.exists():  # the stream is up once its file sink has opened the file
            time.sleep(0.05)
        reader.start()
        start = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - start) < seconds:
            i += 1
            conn.execute(
                "INSERT INTO bench (id, account, amount, note) VALUES (%s, 1, 1.5, 'live')",
                (10_000_000 + i,),
            )
            ahead = i / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
    deadline = time.monotonic() + 30
    while len(lat) < i and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join()
    stop(proc)
    lat.sort()
    return {
        "transactions": i,
        "rate_per_s": round(i / seconds),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
        "max_ms": round(lat[-1] * 1000, 1),
    }


def setup(source: str, rows: int) -> float:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        for slot in ("s_file", "s_hook"):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        start = time.monotonic()
        step = max(1, rows // 100)
        for lo in range(1, rows + 1, step):
            hi = min(rows, lo + step - 1)
            conn.execute(
                "INSERT INTO bench (id, account, amount, note) SELECT g, g %% 1000, g * 0.01,"
                " 'note ' || g FROM generate_series(%s::int8, %s::int8) g",
                (lo, hi),
            )
        return time.monotonic() - start


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgm-bench-stream-", dir="/tmp"))
    os.chmod(work, 0o755)
    clusters: tuple[devcluster.Cluster, devcluster.Cluster] | None = None
    if args.source:
        with psycopg.connect(args.source, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_stream")
            conn.execute("CREATE DATABASE bench_stream")
        source = psycopg.conninfo.make_conninfo(args.source, dbname="bench_stream")
    else:
        say(f"starting throwaway clusters under {work}")
        clusters = devcluster.start_pair(work / "clusters")
        clusters[0].create_database("bench_stream")
        source = clusters[0].dsn("bench_stream")
    try:
        say(f"writing a backlog of {args.rows} inserts in 100 transactions")
        backlog_s = setup(source, args.rows)
        results: dict[str, Any] = {"rows": args.rows, "backlog_write_s": round(backlog_s, 1)}
        say("file sink: draining the backlog")
        results["file"] = run_file(source, work, args.rows)
        say(f"  {results['file']}")
        say("webhook sink: draining the backlog")
        results["webhook"] = run_webhook(source, work, args.rows)
        say(f"  {results['webhook']}")
        say(f"latency: {args.rate} txn/s for {args.latency_s}s to the file sink")
        results["latency"] = run_latency(source, work, args.rate, args.latency_s)
        say(f"  {results['latency']}")
    finally:
        if clusters is not None and not args.keep:
            for cluster in clusters:
                cluster.destroy()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)  # the sinks' output: hundreds of MB
    print(json.dumps(results, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS_DIR / f"stream-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
