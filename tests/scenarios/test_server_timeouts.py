"""Journey: servers that set timeouts for every session (as managed PostgreSQL often does).

``statement_timeout``, ``idle_in_transaction_session_timeout`` and ``idle_session_timeout`` set
on the databases (or roles) apply to pgmigrator's sessions too: a COPY longer than the statement
timeout, an applier transaction left open while the next chunk is read, a connection idle
between batches. The clone and the follower must run regardless, without a retry loop.
"""

from __future__ import annotations

import subprocess

from tests.conftest import Pair, pgmigrator, start_pgmigrator, wait_for, wait_streaming

TIMEOUTS = (
    "statement_timeout = '150ms'",
    "idle_in_transaction_session_timeout = '150ms'",
    "idle_session_timeout = '300ms'",
)


def _set_timeouts(pair: Pair, on: bool) -> None:
    for connect in (pair.src, pair.dst):
        with connect() as conn:
            for setting in TIMEOUTS:
                name = setting.split(" ", 1)[0]
                conn.execute(
                    f"ALTER DATABASE {pair.dbname} " + (f"SET {setting}" if on else f"RESET {name}")
                )


def test_clone_and_follow_run_under_database_level_timeouts(
    pair: Pair, procs: list[subprocess.Popen[str]]
) -> None:
    with pair.src() as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO big SELECT g, repeat('x', 300) FROM generate_series(1, 300000) g")
        conn.execute("CREATE TABLE marker (v text PRIMARY KEY)")
    _set_timeouts(pair, True)
    try:
        proc = start_pgmigrator("clone", "--follow", "--source", pair.source, "--dest", pair.dest)
        procs.append(proc)
        wait_streaming(pair, proc, timeout=180)
        with pair.src() as conn:  # longer than the timeouts, in one transaction
            conn.execute("SET statement_timeout = 0")
            conn.execute(
                "INSERT INTO big SELECT g, repeat('y', 300) FROM generate_series(300001, 500000) g"
            )
            conn.execute("UPDATE big SET pad = 'updated' WHERE id % 3 = 0")
            conn.execute("INSERT INTO marker VALUES ('done')")

        def arrived() -> bool:
            with pair.dst() as conn:
                return bool(conn.execute("SELECT 1 FROM marker WHERE v = 'done'").fetchone())

        wait_for(arrived, timeout=180, interval=0.2, what="the marker on the destination")
        res = pgmigrator("verify", "--source", pair.source, "--dest", pair.dest)
        assert res.returncode == 0, res.stdout + res.stderr
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "timeout" not in err, err  # no session was cancelled and retried
    finally:
        _set_timeouts(pair, False)
