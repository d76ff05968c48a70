"""The reader: batching across source transactions, commit boundaries, sync LSNs, streamed spill."""

from __future__ import annotations

import pytest

from pgmigrator.events import (
    Begin,
    Column,
    Commit,
    Insert,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    TupleData,
)
from pgmigrator.lsn import Lsn
from pgmigrator.pipeline.commands import BatchLimits, Changes, Command, CommitBatch, Sentinel
from pgmigrator.pipeline.origins import OriginFilter
from pgmigrator.pipeline.reader import Reader
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.protocol.runs import expand, take_row

from .pgoutput_encoder import encode

REL = Relation(16384, "public", "t", "d", (Column(1, "id", 23, -1),))
OTHER = Relation(16385, "public", "resynced", "d", (Column(1, "id", 23, -1),))


def row(i: int) -> TupleData:
    return TupleData(b"t", (str(i).encode(),))


def make(
    limits: BatchLimits | None = None,
    sync: dict[tuple[str, str], Lsn] | None = None,
    origin_filter: OriginFilter | None = None,
    track_times: bool = False,
    pipeline: str | None = None,
) -> tuple[Reader, list[Command]]:
    out: list[Command] = []
    reader = Reader(
        out.append,
        sync or {},
        SpillStore(),
        limits or BatchLimits(max_rows=1000, max_ms=10_000, chunk_rows=3),
        origin_filter=origin_filter,
        track_times=track_times,
        pipeline=pipeline,
    )
    return reader, out


def feed(reader: Reader, msg: object, wal_end: int = 10**9) -> None:
    reader.feed(memoryview(encode(msg)), Lsn(wal_end))  # type: ignore[arg-type]


def txn(reader: Reader, final: int, rows: range, rel: Relation = REL, wal_end: int = 10**9) -> None:
    feed(reader, Begin(Lsn(final), 0, final))
    for i in rows:
        feed(reader, Insert(rel.oid, row(i)))
    feed(reader, Commit(0, Lsn(final), Lsn(final + 1), 0), wal_end)


def inserted(out: list[Command]) -> list[int]:
    changes = [c for cmd in out if isinstance(cmd, Changes) for c in expand(cmd.changes)]
    return [int(c.new.values[0]) for c in changes]  # type: ignore[union-attr,arg-type]


def test_backlog_batches_many_transactions_into_one_commit() -> None:
    reader, out = make()
    feed(reader, REL)
    for n in range(5):
        txn(reader, 100 + n * 10, range(n * 2, n * 2 + 2))
    assert not any(isinstance(c, CommitBatch) for c in out)  # still behind: keep batching
    reader.flush()
    commits = [c for c in out if isinstance(c, CommitBatch)]
    assert commits == [CommitBatch(Lsn(141), 0, 5, 10)]
    assert inserted(out) == list(range(10))
    assert (
        max(len(expand(c.changes)) for c in out if isinstance(c, Changes)) <= 3
    )  # memory bounded by chunk_rows


def test_inserts_stay_undecoded_in_runs_across_transactions() -> None:
    if take_row is None:
        pytest.skip("the C accelerator is not in use")
    reader, out = make(BatchLimits(max_rows=1000, max_ms=10_000, chunk_rows=4))
    feed(reader, REL)
    txn(reader, 100, range(3))
    txn(reader, 110, range(3, 6))
    reader.flush()
    chunks = [c.changes for c in out if isinstance(c, Changes)]
    assert [[(type(x).__name__, x.rows) for x in chunk] for chunk in chunks] == [  # type: ignore[union-attr]
        [("InsertRun", 4)],  # cut by chunk_rows, not by the transactions' ends
        [("InsertRun", 2)],
    ]
    assert inserted(out) == list(range(6))


def test_batch_commits_at_its_row_limit_without_waiting_for_flush() -> None:
    reader, out = make(BatchLimits(max_rows=4, max_ms=10_000, chunk_rows=3))
    feed(reader, REL)
    txn(reader, 100, range(3))
    assert not any(isinstance(c, CommitBatch) for c in out)
    txn(reader, 110, range(3, 5))
    assert [c.end_lsn for c in out if isinstance(c, CommitBatch)] == [Lsn(111)]


def test_never_commits_inside_an_open_transaction() -> None:
    reader, out = make()
    feed(reader, REL)
    txn(reader, 100, range(1))
    feed(reader, Begin(Lsn(200), 0, 7))
    for i in range(5):
        feed(reader, Insert(REL.oid, row(i)))
    reader.flush()  # an idle timeout in the middle of a transaction
    assert not any(isinstance(c, CommitBatch) for c in out)
    feed(reader, Commit(0, Lsn(200), Lsn(201), 0))
    reader.flush()
    assert [c.end_lsn for c in out if isinstance(c, CommitBatch)] == [Lsn(201)]


def test_changes_before_a_tables_sync_lsn_are_skipped() -> None:
    reader, out = make(sync={("public", "resynced"): Lsn(150)})
    feed(reader, REL)
    feed(reader, OTHER)
    txn(reader, 100, range(3), rel=OTHER)  # committed before the table's snapshot: already copied
    txn(reader, 110, range(3, 4), rel=REL)  # other tables are not affected
    txn(reader, 150, range(10, 12), rel=OTHER)  # at or after the sync LSN: applied
    reader.flush()
    assert inserted(out) == [3, 10, 11]
    assert reader.skipped_rows == 3


def test_streamed_transaction_spills_and_drops_aborted_subtransaction() -> None:
    reader, out = make()
    feed(reader, REL)
    feed(reader, StreamStart(900, True))
    feed(reader, Insert(REL.oid, row(1), xid=900))
    feed(reader, Insert(REL.oid, row(2), xid=901))  # subtransaction 901
    feed(reader, StreamStop())
    txn(reader, 100, range(50, 51))  # an ordinary transaction interleaved
    feed(reader, StreamStart(900, False))
    feed(reader, Insert(REL.oid, row(3), xid=902))
    feed(reader, StreamStop())
    feed(reader, StreamAbort(900, 902))  # only subtransaction 902 rolled back
    assert reader.spill.open_transactions() == 1 and not reader.idle
    feed(reader, StreamCommit(900, 0, Lsn(300), Lsn(301), 0))
    reader.flush()
    assert inserted(out) == [50, 1, 2]
    assert [c.end_lsn for c in out if isinstance(c, CommitBatch)] == [Lsn(301)]
    assert reader.spill.open_transactions() == 0 and reader.idle


def test_whole_streamed_transaction_abort_leaves_nothing() -> None:
    reader, out = make()
    feed(reader, REL)
    feed(reader, StreamStart(900, True))
    feed(reader, Insert(REL.oid, row(1), xid=900))
    feed(reader, StreamStop())
    feed(reader, StreamAbort(900, 900))
    reader.flush()
    assert inserted(out) == [] and reader.spill.open_transactions() == 0


# -- bidirectional replication: the origin filter -------------------------------------------------

OURS = "pgmigrator_x_rev"


def looped_txn(reader: Reader, final: int, rows: range, origin: str = OURS) -> None:
    feed(reader, Begin(Lsn(final), 0, final))
    feed(reader, Origin(Lsn(5), origin))
    feed(reader, REL)  # pgoutput may send a relation's layout inside any transaction
    for i in rows:
        feed(reader, Insert(REL.oid, row(i)))
    feed(reader, Message(True, Lsn(final - 1), "pgmigrator", b'{"id": "s1"}'))
    feed(reader, Commit(0, Lsn(final), Lsn(final + 1), 0))


def test_origin_filter_drops_our_own_transactions_whole() -> None:
    f = OriginFilter(frozenset({OURS, "pgmigrator_x"}))
    reader, out = make(origin_filter=f)
    txn(reader, 100, range(2))
    looped_txn(reader, 200, range(10, 15))
    txn(reader, 300, range(2, 3))
    reader.flush()
    assert inserted(out) == [0, 1, 2]
    assert [c.end_lsn for c in out if isinstance(c, CommitBatch)] == [Lsn(301)]
    assert not any(type(c).__name__ == "Sentinel" for c in out)  # its messages go too
    assert (f.transactions, f.rows, reader.dropped_lsn) == (1, 5, Lsn(201))
    assert any(isinstance(c, Relation) for c in out)  # layouts still pass: later txns need them


def test_dropped_transaction_alone_commits_nothing_but_is_acknowledgeable() -> None:
    f = OriginFilter(frozenset({OURS}))
    reader, out = make(origin_filter=f)
    looped_txn(reader, 200, range(3))
    reader.flush()
    assert not any(isinstance(c, (Changes, CommitBatch)) for c in out)
    assert reader.idle and reader.dropped_lsn == Lsn(201)


def test_other_origins_and_plain_transactions_still_flow() -> None:
    reader, out = make(origin_filter=OriginFilter(frozenset({OURS})))
    looped_txn(reader, 200, range(3), origin="pg_16400")  # a native subscription's writes
    txn(reader, 300, range(3, 4))  # the next transaction starts unfiltered
    reader.flush()
    assert inserted(out) == [0, 1, 2, 3]
    assert reader.dropped_lsn == Lsn(0)


def test_without_a_filter_nothing_is_dropped() -> None:
    reader, out = make()
    looped_txn(reader, 200, range(2))
    reader.flush()
    assert inserted(out) == [0, 1] and reader.dropped_lsn == Lsn(0)


def test_streamed_transaction_with_our_origin_is_dropped_without_spilling() -> None:
    f = OriginFilter(frozenset({OURS}))
    reader, out = make(origin_filter=f)
    feed(reader, REL)
    feed(reader, StreamStart(900, True))
    feed(reader, Origin(Lsn(5), OURS))
    feed(reader, Insert(REL.oid, row(1), xid=900))
    feed(reader, StreamStop())
    feed(reader, StreamStart(900, False))
    feed(reader, Insert(REL.oid, row(2), xid=900))
    feed(reader, StreamStop())
    assert reader.spill.open_transactions() == 0
    feed(reader, StreamCommit(900, 0, Lsn(300), Lsn(301), 0))
    txn(reader, 400, range(7, 8))
    reader.flush()
    assert inserted(out) == [7]
    assert (f.transactions, f.rows, f.streams, reader.dropped_lsn) == (1, 2, set(), Lsn(301))


def test_times_mark_each_source_transactions_run_of_changes() -> None:
    reader, out = make(BatchLimits(max_rows=1000, max_ms=10_000, chunk_rows=100), track_times=True)
    feed(reader, REL)
    for n, t in enumerate((1_000, 2_000, 2_000, 5_000)):
        feed(reader, Begin(Lsn(100 + n * 10), t, n))
        for i in range(n + 1):
            feed(reader, Insert(REL.oid, row(i)))
        feed(reader, Commit(0, Lsn(100 + n * 10), Lsn(101 + n * 10), t))
    reader.flush()
    (changes,) = [c for c in out if isinstance(c, Changes)]
    # equal commit times merge into one run: the applier only needs each change's time
    assert changes.times == ((0, 1_000), (1, 2_000), (6, 5_000))
    plain, plain_out = make()
    txn(plain, 100, range(2))
    plain.flush()
    assert all(c.times is None for c in plain_out if isinstance(c, Changes))


def test_sentinels_are_taken_in_place_and_only_for_their_pipeline() -> None:
    """A follower records the sentinels naming its pipeline (or none): another pipeline's
    follower on the same source recording it would let that one's wait end too early."""
    reader, out = make(pipeline="mine")
    feed(reader, Begin(Lsn(100), 0, 1))
    feed(reader, Insert(REL.oid, row(1)))
    for owner in ("mine", "theirs", None):
        doc = b'{"type": "verify", "id": "%s"' % (owner or "old").encode()
        doc += b', "pipeline": "%s"}' % owner.encode() if owner else b"}"
        feed(reader, Message(True, Lsn(100), "pgmigrator", doc))
    feed(reader, Message(True, Lsn(100), "other-prefix", b'{"id": "x"}'))
    feed(reader, Message(True, Lsn(100), "pgmigrator", b"not json"))
    feed(reader, Commit(0, Lsn(100), Lsn(101), 0))
    reader.flush()
    kinds = [type(c).__name__ for c in out if not isinstance(c, Relation)]
    assert kinds == ["Changes", "Sentinel", "Sentinel", "CommitBatch"]  # after the row before them
    sentinels = [c for c in out if isinstance(c, Sentinel)]
    assert [(s.id, s.kind) for s in sentinels] == [("mine", "verify"), ("old", "verify")]
