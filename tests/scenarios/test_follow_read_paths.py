"""Journey: the follower's two read loops (C row pump, Python) read one real slot the same way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pgmigrator.dsn import Target
from pgmigrator.lsn import Lsn
from pgmigrator.pipeline import reader as reader_module
from pgmigrator.pipeline.commands import BatchLimits, Changes, Command, CommitBatch
from pgmigrator.pipeline.reader import Reader
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.protocol.runs import InsertRun, expand
from pgmigrator.source import replication
from pgmigrator.source._rowpump import row_pump
from pgmigrator.source.replication import ReplicationStream
from tests.conftest import Pair, wait_for

WORKLOAD = [
    "CREATE TABLE t (id int PRIMARY KEY, v text, big text, n numeric)",
    "CREATE TABLE full_t (a int, b text)",
    "ALTER TABLE full_t REPLICA IDENTITY FULL",
    "CREATE PUBLICATION pub FOR ALL TABLES",
    "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
    # one large transaction: runs longer than the reader's chunk and the pump's limit
    "INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 500 = 0 THEN repeat('x', 20000) END,"
    " CASE WHEN g % 3 = 0 THEN NULL ELSE g / 7.0 END FROM generate_series(1, 1200) g",
    "UPDATE t SET v = 'é\t\\n' || id WHERE id % 10 = 0",  # unchanged TOAST values ride along
    "DELETE FROM t WHERE id % 11 = 0",
    "INSERT INTO full_t SELECT g, 'b' || g FROM generate_series(1, 50) g",
    "UPDATE full_t SET b = 'changed' WHERE a % 5 = 0",  # old row in full
    "DELETE FROM full_t WHERE a % 7 = 0",
    "SELECT pg_logical_emit_message(true, 'other', 'hello')",
    "ALTER TABLE t ADD COLUMN extra int DEFAULT 1",  # a fresh Relation mid-stream
    "UPDATE t SET extra = 2 WHERE id <= 40",
    "TRUNCATE full_t",
    "INSERT INTO full_t VALUES (-1, 'end')",  # the marker the readers stop at
]


class CountingReader(Reader):
    fast = 0

    def rows_added(self, count: int, txn: Any) -> None:
        self.fast += count
        super().rows_added(count, txn)


def _flat(commands: list[Command]) -> list[Any]:
    """Every change and commit, in order; runs of inserts expanded to the decoder's values."""
    out: list[Any] = []
    for cmd in commands:
        out.extend(expand(cmd.changes) if isinstance(cmd, Changes) else [cmd])
    return out


def _totals(commands: list[Command]) -> tuple[int, int, Lsn]:
    commits = [c for c in commands if isinstance(c, CommitBatch)]
    return sum(c.rows for c in commits), sum(c.transactions for c in commits), commits[-1].end_lsn


def _finished(out: list[Command]) -> bool:
    if not out or not isinstance(out[-1], CommitBatch):
        return False
    marker = (b"-1", b"end")
    return any(getattr(getattr(c, "new", None), "values", None) == marker for c in _flat(out))


async def _read(pair: Pair, start: Lsn, c_loop: bool) -> tuple[list[Command], int]:
    out: list[Command] = []
    limits = BatchLimits(max_rows=10**9, max_ms=10**9, chunk_rows=97)
    reader = CountingReader(out.append, {}, SpillStore(), limits)
    stream = ReplicationStream(Target(pair.source, "source"), "s", "pub", streaming=False)
    stream.open(start)
    try:
        while not _finished(out):
            msg = await stream.next(timeout=10)
            assert msg is not None, "the stream stopped before the end of the workload"
            reader.feed(msg.data, msg.wal_end)
            stream.pump(reader.feed, 333, reader if c_loop else None)
            reader.flush()
    finally:
        stream.close()
    return out, reader.fast


def test_c_row_pump_and_python_loop_read_the_same_changes(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    if row_pump() is None:
        pytest.skip("the C row pump is not available (pure Python or no extension)")
    with pair.src() as conn:
        conn.autocommit = True
        for statement in WORKLOAD[:5]:
            conn.execute(statement)
        start = Lsn.parse(
            conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots").fetchone()[0]  # type: ignore[index]
        )
        for statement in WORKLOAD[5:]:
            conn.execute(statement)
    with monkeypatch.context() as m:  # the reference: every change decoded in Python
        m.setattr(reader_module, "take_row", None)
        python, none_fast = asyncio.run(_read(pair, start, c_loop=False))
    c, fast = asyncio.run(_read(pair, start, c_loop=True))
    assert none_fast == 0 and fast > 1000  # the C loop took the bulk of the rows
    # how transactions group into batches depends on what each read found waiting; the rest may not
    assert [x for x in _flat(c) if not isinstance(x, CommitBatch)] == [
        x for x in _flat(python) if not isinstance(x, CommitBatch)
    ]
    assert _totals(c) == _totals(python)
    assert all(len(expand(cmd.changes)) <= 97 for cmd in c if isinstance(cmd, Changes))
    assert len(_flat(c)) > 1200 + 120 + 50
    # the C loop kept the inserts undecoded, in runs that the chunk limit cut
    runs = [x for cmd in c if isinstance(cmd, Changes) for x in cmd.changes]
    runs = [x for x in runs if isinstance(x, InsertRun)]
    assert sum(r.rows for r in runs) >= 1100 and max(r.rows for r in runs) == 97


def _table_and_slot(conn: Any) -> Lsn:
    """Table ``t``, publication ``pub`` and slot ``s`` (autocommit); returns the slot's start."""
    conn.autocommit = True
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    row = conn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot('s', 'pgoutput')"
    ).fetchone()
    return Lsn.parse(row[0])


def test_one_pump_takes_everything_the_kernel_holds(pair: Pair) -> None:
    """A pump reads past libpq's first buffer (16 KB): a backlog goes in a few turns, not one per
    16 KB, each of which would be a destination commit."""
    with pair.src() as conn:
        start = _table_and_slot(conn)
        conn.execute("INSERT INTO t SELECT generate_series(1, 2000)")  # ~100 KB of Insert messages
        end = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]

    async def read() -> int:
        reader = Reader([].append, {}, SpillStore(), BatchLimits())
        stream = ReplicationStream(Target(pair.source, "source"), "s", "pub", streaming=False)
        stream.open(start)
        try:
            with pair.src() as conn:  # everything sent: it is in our socket's receive queue
                wait_for(
                    lambda: conn.execute(
                        "SELECT sent_lsn >= %s FROM pg_stat_replication WHERE pid ="
                        " (SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's')",
                        (end,),
                    ).fetchone()[0],  # type: ignore[index]
                    what="the walsender to send the transaction",
                )
            msg = await stream.next(timeout=10)
            assert msg is not None
            reader.feed(msg.data, msg.wal_end)
            return 1 + stream.pump(reader.feed, 10**6, None)  # the Python loop: one per message
        finally:
            stream.close()

    fed = asyncio.run(read())
    # Begin, Relation, 2000 Inserts, Commit: a single 16 KB read holds about 350 of them
    assert fed >= 2000


def test_a_flush_position_that_moved_is_acknowledged_without_waiting_for_the_interval(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot's restart point follows only acknowledged positions: they go out within
    FLUSH_REPORT_S (0 here), not every status_interval (10 s) or when the walsender asks."""
    monkeypatch.setattr(replication, "FLUSH_REPORT_S", 0.0)
    with pair.src() as conn:
        start = _table_and_slot(conn)
        conn.execute("INSERT INTO t SELECT generate_series(1, 10)")

        async def read_then_flush() -> Lsn:
            stream = ReplicationStream(Target(pair.source, "source"), "s", "pub", streaming=False)
            stream.open(start)
            try:
                while stream.received <= start:  # the Begin alone may still sit at start
                    assert await stream.next(timeout=10) is not None
                    stream.pump(lambda data, lsn: None, 10**6)
                stream.send_status()  # a status update just went out...
                stream.flushed = stream.received  # ...then the destination commits
                stream.tick()
                received = stream.received
                wait_for(
                    lambda: (
                        Lsn.parse(
                            conn.execute(
                                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                " WHERE slot_name = 's'"
                            ).fetchone()[0]  # type: ignore[index]
                        )
                        >= received
                    ),
                    timeout=5,
                    what="the slot to confirm the new flush position",
                )
                return received
            finally:
                stream.close()

        assert asyncio.run(read_then_flush()) > start


def test_settle_acknowledges_the_walsenders_position_when_nothing_is_unapplied(
    pair: Pair,
) -> None:
    """A clean stop with nothing unapplied acknowledges everything the walsender decoded, not
    just the last commit applied: the slot's restart point can only move to a running-
    transactions record below an acknowledged position, and the last one (a checkpoint's here)
    lies after the last commit, so without it the next start decodes the applied WAL again."""
    with pair.src() as conn:
        conn.autocommit = True
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE t")
        for slot in ("plain", "settled"):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

        def lsn(query: str, *params: object) -> Lsn:
            return Lsn.parse(conn.execute(query, params).fetchone()[0])  # type: ignore[index]

        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        conn.execute("INSERT INTO other VALUES (1)")  # WAL after it the stream never shows
        conn.execute("CHECKPOINT")
        end = lsn("SELECT pg_current_wal_lsn()::text")

        async def apply_then_stop(slot: str) -> Lsn:
            stream = ReplicationStream(Target(pair.source, "source"), slot, "pub", streaming=False)
            stream.open(Lsn(0))  # from the slot's confirmed position
            applied = [Lsn(0)]

            def feed(data: object, wal_end: Lsn) -> None:
                applied[0] = max(applied[0], wal_end)

            try:  # read the transaction (as if applied) until nothing more comes for a second
                while (msg := await stream.next(timeout=1.0)) is not None:
                    feed(msg.data, msg.wal_end)
                    stream.pump(feed, 10**6)
                assert applied[0] > Lsn(0)
                stream.flushed, stream.idle = applied[0], True
                wait_for(
                    lambda: (
                        lsn(
                            "SELECT sent_lsn::text FROM pg_stat_replication r"
                            " JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE slot_name = %s",
                            slot,
                        )
                        >= end
                    ),
                    what="the walsender to decode past the checkpoint",
                )
                if slot == "settled":
                    await stream.settle()
                stream.send_status()  # the final status update of every stop
            finally:
                stream.close()
            return applied[0]

        last = asyncio.run(apply_then_stop("plain"))
        asyncio.run(apply_then_stop("settled"))
        wait_for(
            lambda: (
                not conn.execute(
                    "SELECT bool_or(active) FROM pg_replication_slots"
                    " WHERE slot_name IN ('plain', 'settled')"
                ).fetchone()[0]
            ),  # type: ignore[index]
            what="the walsenders to exit",
        )
        slots = {
            r[0]: (Lsn.parse(r[1]), Lsn.parse(r[2]))
            for r in conn.execute(
                "SELECT slot_name, confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots"
                " WHERE slot_name IN ('plain', 'settled')"
            )
        }
    assert slots["plain"][0] == last  # what was applied
    assert slots["settled"][0] >= end  # past the checkpoint: nothing unapplied lies before it
    assert slots["settled"][1] >= slots["plain"][1]
