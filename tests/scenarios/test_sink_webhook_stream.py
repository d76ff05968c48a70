"""Journey: `pgmigrator stream` from a real slot to a webhook receiver that goes down, then comes back."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx

from pgmigrator.devcluster import free_port
from tests.conftest import Pair, start_pgmigrator, wait_for
from tests.scenarios.webhook_receiver import Receiver

SECRET = "stream-hook-secret"


def sink_status(api: str, proc: subprocess.Popen[str]) -> dict[str, int]:
    if proc.poll() is not None:
        raise AssertionError(f"stream exited: {proc.stderr.read() if proc.stderr else ''}")
    try:
        snap = httpx.get(f"{api}/api/v1/status", timeout=5).json()
    except httpx.HTTPError:
        return {}
    return dict(snap.get("sinks", {}).get("hook", {}))


def insert(pair: Pair, first: int, last: int) -> None:
    with pair.src() as conn:
        for start in range(first, last + 1, 10):  # several transactions
            conn.execute(
                "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(%s::int, %s::int) g",
                (start, min(start + 9, last)),
            )


def test_stream_to_a_webhook_that_is_down_for_a_while(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
    receiver = Receiver(secret=SECRET.encode()).start()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    spec = (
        f"webhook:name=hook,url={receiver.url},secret=env:HOOK_SECRET,batch_size=25,"
        "retry_initial_s=0.05,retry_max_s=0.3,retry_attempts=0,header.X-Source=orders"
    )
    proc = start_pgmigrator(
        "stream", "--source", pair.source, "--name", pair.dbname, "--create",
        "--sink", spec, "--api-addr", f"127.0.0.1:{port}",
        env={"HOOK_SECRET": SECRET},
    )  # fmt: skip
    procs.append(proc)
    try:
        wait_for(lambda: sink_status(api, proc), timeout=60, what="the stream's API")
        wait_for(lambda: _slot_active(pair), timeout=60, what="the stream to start")
        insert(pair, 1, 100)
        try:
            wait_for(lambda: len(set(receiver.ids())) >= 100, timeout=60, what="the first events")
        except AssertionError:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{proc.communicate()[1]}\n{receiver.statuses()}") from None

        receiver.stop()  # down
        insert(pair, 101, 400)
        wait_for(
            lambda: sink_status(api, proc).get("retried", 0) >= 5,
            timeout=60,
            what="the sink to retry while the receiver is down",
        )
        assert len(set(receiver.ids())) == 100
        receiver.start()  # back, on the same port

        wait_for(
            lambda: _keys(receiver) >= set(range(1, 401)),
            timeout=90,
            what="every event after the receiver came back",
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert SECRET not in err
    finally:
        receiver.stop()
    assert all(r.signature_ok for r in receiver.requests)
    assert all(r.headers.get("x-source") == "orders" for r in receiver.requests)
    # at least once, and a duplicate is the same event under the same id
    seen: dict[str, bytes] = {}
    for r in receiver.requests:
        if 200 <= r.status < 300:
            for doc in r.documents():
                assert seen.setdefault(doc["id"], repr(doc).encode()) == repr(doc).encode()


def _slot_active(pair: Pair) -> bool:
    with pair.src() as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
            (f"pgmigrator_{pair.dbname}",),
        ).fetchone()
    return bool(row and row[0])


def _keys(receiver: Receiver) -> set[int]:
    out = set()
    for r in list(receiver.requests):
        if 200 <= r.status < 300:
            out.update(d["key"]["id"] for d in r.documents() if d.get("op") == "c")
    return out


def test_kill_9_while_the_webhook_is_down_then_restart_delivers_everything(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
    receiver = Receiver(secret=SECRET.encode()).start()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    spec = (
        f"webhook:name=hook,url={receiver.url},secret=env:HOOK_SECRET,batch_size=50,"
        "retry_initial_s=0.05,retry_max_s=0.3,retry_attempts=0"
    )
    args = ("stream", "--source", pair.source, "--name", pair.dbname, "--create", "--sink", spec)
    env = {"HOOK_SECRET": SECRET}
    proc = start_pgmigrator(*args, "--api-addr", f"127.0.0.1:{port}", env=env)
    procs.append(proc)
    try:
        wait_for(lambda: sink_status(api, proc), timeout=60, what="the stream's API")
        wait_for(lambda: _slot_active(pair), timeout=60, what="the stream to start")
        insert(pair, 1, 200)
        wait_for(lambda: len(_keys(receiver)) >= 200, timeout=60, what="the first events")
        receiver.stop()
        insert(pair, 201, 500)
        wait_for(
            lambda: sink_status(api, proc).get("retried", 0) >= 3,
            timeout=60,
            what="the sink to lag (retrying) while the receiver is down",
        )
        os.killpg(proc.pid, signal.SIGKILL)  # events 201..500 were never acknowledged
        proc.wait()
        receiver.start()
        proc = start_pgmigrator(*args, env=env)
        procs.append(proc)
        wait_for(
            lambda: _keys(receiver) >= set(range(1, 501)),
            timeout=90,
            what="every event after the restart",
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        receiver.stop()
    assert all(r.signature_ok for r in receiver.requests)
