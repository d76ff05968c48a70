"""Journey: events a sink gave up on land in the dead-letter queue; list, show, replay, purge them."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from pgmigrator.dsn import Target
from pgmigrator.lsn import Lsn
from pgmigrator.sinks.base import Event
from pgmigrator.stream.dlq import DeadLetterQueue, Filters
from tests.conftest import Pair, pgmigrator


def event(i: int, table: str = "orders") -> Event:
    body = orjson.dumps({"id": f"0/{i:X}:0", "op": "c", "after": {"id": i}})
    return Event(f"0/{i:X}:0", Lsn(i), "c", "public", table, body)


async def test_store_list_replay_and_purge(pair: Pair, tmp_path: Path) -> None:
    queue = DeadLetterQueue(Target(pair.dest, "dlq"), "dlqtest")
    try:
        await queue.put("hook", [event(3), event(1), event(2, "items")], "HTTP 400: bad", 1)
        await queue.put("hook", [event(1)], "HTTP 400: still bad", 2)  # same event: one row
        assert await queue.count() == 3
        rows = await queue.entries(Filters(sink="hook", table="public.orders"))
        assert [r["event_id"] for r in rows] == ["0/3:0", "0/1:0"]
        again = next(r for r in rows if r["event_id"] == "0/1:0")
        assert again["attempts"] == 3 and again["error"] == "HTTP 400: still bad"
        shown = await queue.show(again["id"])
        assert shown["event"]["after"] == {"id": 1}
    finally:
        await queue.close()

    target = tmp_path / "replayed.jsonl"
    common = ["--dest", pair.dest, "--name", "dlqtest"]
    res = pgmigrator("dlq", "list", *common, "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 3
    res = pgmigrator("dlq", "replay", *common, "--sink", "hook", "--to", f"file:path={target}")
    assert res.returncode == 0 and "replayed 3 event(s)" in res.stdout, res.stderr
    replayed = [json.loads(line)["id"] for line in target.read_text().splitlines()]
    assert replayed == ["0/1:0", "0/2:0", "0/3:0"]  # source order, whatever the failure order
    res = pgmigrator("dlq", "list", *common)
    assert "empty" in res.stdout  # nothing pending any more
    res = pgmigrator("dlq", "purge", *common, "--replayed", "--yes")
    assert res.returncode == 0 and "purged 3 entries" in res.stdout


def test_bad_input(pair: Pair) -> None:
    res = pgmigrator("dlq", "show", "--dest", pair.dest, "42")
    assert res.returncode == 1 and "no dead-letter entry 42" in res.stderr
    res = pgmigrator("dlq", "list")
    assert res.returncode == 2 and "no database for the dead-letter queue" in res.stderr
    res = pgmigrator("dlq", "replay", "--dest", pair.dest, "--sink", "nope")
    assert res.returncode == 2 and "not a configured sink" in res.stderr
    assert "Traceback" not in res.stderr
