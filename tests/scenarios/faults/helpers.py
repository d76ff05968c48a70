"""Shared steps of the fault-injection scenarios: a small workload, markers and the final check.

Every fault test ends the same way: write a marker row on the source, wait for it on the
destination (everything before it has been applied), then compare both sides with
``pgmigrator verify`` (row counts and order-independent checksums of every table).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming


def load(pair: Pair, rows: int = 2000) -> None:
    """Three small tables: keyed, keyless, and a marker table."""
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL, note text);"
            "CREATE TABLE hist (id bigserial PRIMARY KEY, acct int, delta int, at timestamptz DEFAULT now());"
            "CREATE TABLE no_key (a int, b text); ALTER TABLE no_key REPLICA IDENTITY FULL;"
            "CREATE TABLE marker (v text PRIMARY KEY)"
        )
        conn.execute(
            "INSERT INTO acct SELECT g, 0, md5(g::text) FROM generate_series(1, %s) g", (rows,)
        )
        conn.execute("INSERT INTO no_key SELECT g, 'seed' FROM generate_series(1, 200) g")


def clone_and_follow(
    pair: Pair, procs: list[subprocess.Popen[str]], streaming: bool = True
) -> subprocess.Popen[str]:
    """`load`, clone, then start ``follow`` (registered in ``procs``; awaited streaming)."""
    load(pair)
    assert pgmigrator("clone", "--source", pair.source, "--dest", pair.dest).returncode == 0
    proc = start_pgmigrator("follow", "--source", pair.source, "--dest", pair.dest)
    procs.append(proc)
    if streaming:
        wait_streaming(pair, proc)
    return proc


def write_some(pair: Pair, n: int, tag: str) -> None:
    """``n`` small transactions touching every table."""
    with pair.src() as conn:
        for i in range(n):
            with conn.transaction():
                conn.execute("UPDATE acct SET bal = bal + 1 WHERE id = %s", (i % 2000 + 1,))
                conn.execute("INSERT INTO hist (acct, delta) VALUES (%s, 1)", (i % 2000 + 1,))
                conn.execute("INSERT INTO no_key VALUES (%s, %s)", (i, tag))


@contextmanager
def workload(
    pair: Pair, acct_inserts: bool = False, tolerate_disconnects: bool = False
) -> Iterator[threading.Event]:
    """Writes small transactions in a thread until the block ends (errors are re-raised).

    With ``acct_inserts`` every transaction also inserts a new ``acct`` row: applying one of
    them twice fails (duplicate key), unlike re-applying an update's full image. With
    ``tolerate_disconnects`` (the source is restarted on purpose) the thread reconnects.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    counter = itertools.count(1)

    def run() -> None:
        while not stop.is_set():
            try:
                _write()
            except psycopg.OperationalError as exc:
                if not tolerate_disconnects or exc.sqlstate not in (None, "57P01", "57P03"):
                    failure.append(exc)
                    return
                stop.wait(0.05)  # the source is down on purpose: reconnect shortly
            except psycopg.Error as exc:
                failure.append(exc)
                return

    def _write() -> None:
        with pair.src() as conn:
            while not stop.is_set():
                i = next(counter)
                with conn.transaction():
                    conn.execute(
                        "UPDATE acct SET bal = bal + 1, note = %s WHERE id = %s",
                        (f"w{i}", i * 7 % 2000 + 1),
                    )
                    conn.execute("INSERT INTO hist (acct, delta) VALUES (%s, 1)", (i,))
                    if acct_inserts:
                        conn.execute("INSERT INTO acct VALUES (%s, 1, 'new')", (100000 + i,))
                    if i % 5 == 0:
                        conn.execute("DELETE FROM no_key WHERE a = %s", (i % 200,))
                        conn.execute("INSERT INTO no_key VALUES (%s, 'w')", (i % 200,))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
    if failure:
        raise failure[0]


def marker(pair: Pair, value: str) -> None:
    with pair.src() as conn:
        conn.execute("INSERT INTO marker VALUES (%s)", (value,))


def wait_marker(pair: Pair, value: str, timeout: float = 60) -> None:
    def seen() -> bool:
        try:
            with pair.dst() as conn:
                if conn.execute("SELECT to_regclass('public.marker')").fetchone()[0] is None:
                    return False
                return bool(conn.execute("SELECT 1 FROM marker WHERE v = %s", (value,)).fetchone())
        except psycopg.OperationalError:  # the destination may be restarting
            return False

    wait_for(seen, timeout=timeout, interval=0.05, what=f"marker {value} on the destination")


def converge(pair: Pair, tag: str, timeout: float = 60) -> None:
    """Marker through, then both sides equal (row counts and checksums of every table)."""
    marker(pair, tag)
    wait_marker(pair, tag, timeout)
    res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all equal" in res.stdout, res.stdout


def kill9(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
