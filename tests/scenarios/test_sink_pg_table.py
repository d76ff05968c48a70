"""pg_table sink into a real PostgreSQL database: created table, batches, replays, reconnects."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from pgmigrator.errors import SinkError
from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector
from pgmigrator.sinks import SinkContext, build_sink
from pgmigrator.sinks.base import Event
from pgmigrator.sinks.pg_table import PgTableSink
from tests.conftest import Pair

FAST_RETRY = {"initial_s": 0.05, "max_s": 0.2, "jitter": 0.1, "attempts": 5}
TRICKY = 'back\\slash\ttab "quote"\nnewline é ✓'


def events(n: int, start: int = 0) -> list[Event]:
    out = []
    for i in range(start, start + n):
        eid = f"0/{i + 1:X}:{i % 3}"
        doc = {"id": eid, "op": "u", "after": {"n": i, "text": TRICKY}}
        out.append(Event(eid, Lsn(i + 1), "u", "app", "or\\ders", orjson.dumps(doc)))
    return out


def make(pair: Pair, collector: Collector | None = None, **opts: object) -> PgTableSink:
    options = {"dsn": pair.dest, "table": "sink.events", "retry": FAST_RETRY, **opts}
    sink = build_sink("pg_table", "table", options, SinkContext(collector=collector))
    assert isinstance(sink, PgTableSink)
    return sink


async def test_batches_land_once_and_replays_are_ignored(pair: Pair) -> None:
    sink = make(pair)
    await sink.start()
    await sink.send(events(100))
    await sink.send(events(60, start=50))  # 50 replayed (same ids) and 10 new
    await sink.send(events(5, start=3) * 2)  # duplicates inside one batch too
    await sink.close()
    with pair.dst() as conn:
        rows = conn.execute(
            "SELECT id, lsn::text AS lsn_text, op, schema_name, table_name, event, received_at IS NOT NULL"
            " FROM sink.events ORDER BY lsn"
        ).fetchall()
    assert [r[0] for r in rows] == [e.id for e in events(110)]
    first = rows[0]
    assert first[1:5] == ("0/1", "u", "app", "or\\ders")
    assert first[5] == {"id": "0/1:0", "op": "u", "after": {"n": 0, "text": TRICKY}}
    assert first[6] is True


async def test_reconnects_after_the_connection_is_killed(pair: Pair) -> None:
    collector = Collector()
    sink = make(pair, collector)
    await sink.start()
    await sink.send(events(10))
    with pair.dst() as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'pgmigrator sink table'"
        ).fetchone()
    assert killed == (1,)
    await sink.send(events(10, start=10))
    await sink.close()
    with pair.dst() as conn:
        assert conn.execute("SELECT count(*) FROM sink.events").fetchone() == (20,)
    assert collector.snapshot()["sinks"]["table"]["retried"] >= 1


async def test_existing_table_without_the_columns_is_refused(pair: Pair) -> None:
    with pair.dst() as conn:
        conn.execute("CREATE TABLE wrong (id text PRIMARY KEY, payload jsonb)")
    sink = make(pair, table="wrong")
    with pytest.raises(SinkError, match="lacks the column") as info:
        await sink.start()
    assert info.value.hint and "event" in info.value.message


async def test_missing_table_with_create_off_and_a_bad_password(pair: Pair) -> None:
    sink = make(pair, table="public.absent", create=False)
    with pytest.raises(SinkError, match="does not exist"):
        await sink.start()
    with pair.dst() as conn:
        conn.execute("CREATE ROLE sink_user LOGIN PASSWORD 'right-password'")
    try:
        bad = psycopg.conninfo.make_conninfo(pair.dest, user="sink_user", password="wr0ng-pw")
        sink = make(pair, dsn=bad)
        with pytest.raises(SinkError) as info:
            await sink.start()
        assert "wr0ng-pw" not in str(info.value)
    finally:
        with pair.dst() as conn:
            conn.execute("DROP ROLE sink_user")
