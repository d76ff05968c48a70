"""Journey: retire a stream for good (``cleanup --stream``): its slot would hold the WAL forever.

The stream made two keyless tables REPLICA IDENTITY FULL (``--keyless-tables full``); the cleanup
gives back the one no other publication holds, and says why it leaves the other.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import Pair, pgmigrator, wait_for
from tests.scenarios.test_stream import _slot_active, read_events, start_stream, stop, wait_events


def _identities(pair: Pair) -> dict[str, str]:
    with pair.src() as conn:
        rows = conn.execute(
            "SELECT relname, relreplident::text FROM pg_class"
            " WHERE relname IN ('orders', 'logs', 'audit') AND relkind = 'r'"
        ).fetchall()
    return {str(name): str(ident) for name, ident in rows}


def test_cleanup_stream_drops_slot_and_publication_and_gives_identities_back(
    pair: Pair, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    with pair.src() as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, item text);"
            " CREATE TABLE logs (msg text); CREATE TABLE audit (msg text);"
            " INSERT INTO logs VALUES ('a'); INSERT INTO audit VALUES ('x')"
        )
    out = tmp_path / "events.jsonl"
    proc = start_stream(
        pair, procs, "--create", "--keyless-tables", "full", "--sink", f"file:path={out}"
    )
    wait_for(lambda: _slot_active(pair), what="the stream to start")
    with pair.src() as conn:
        conn.execute("UPDATE logs SET msg = 'b'")  # FULL: the source accepts it, old row included
    wait_events(out, proc, lambda ev: any(e["op"] == "u" for e in ev), "the update's event")
    assert read_events(out)[-1]["before"] == {"msg": "a"}
    assert stop(proc)[0] == 0
    assert _identities(pair) == {"orders": "d", "logs": "f", "audit": "f"}
    with pair.src() as conn:  # another consumer publishes audit: it needs FULL
        conn.execute("CREATE PUBLICATION other_pub FOR TABLE audit")

    common = ("--source", pair.source, "--name", pair.dbname)
    res = pgmigrator("cleanup", *common)  # without --stream a pipeline needs --dest
    assert res.returncode == 2 and "missing setting(s): dest" in res.stderr
    res = pgmigrator("cleanup", "--stream", *common)
    assert res.returncode == 0, res.stderr
    slot = f"pgmigrator_{pair.dbname}"
    assert f"dropped replication slot {slot} on the source" in res.stdout
    assert f"dropped publication {slot} on the source" in res.stdout
    assert "reset REPLICA IDENTITY of public.logs to DEFAULT on the source" in res.stdout
    assert (
        "left REPLICA IDENTITY FULL on public.audit on the source: publication(s) other_pub"
        in res.stdout
    )
    assert _identities(pair) == {"orders": "d", "logs": "d", "audit": "f"}
    with pair.src() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT array_agg(pubname::text) FROM pg_publication").fetchone() == (
            ["other_pub"],
        )
    res = pgmigrator("cleanup", "--stream", *common)
    assert res.returncode == 0 and res.stdout.strip() == "nothing to clean up", res.stdout
