"""The replication stream's C loop feeding the reader, against the reader fed in Python.

``_speedups.take_frames`` is ``pump_rows``' loop over a list of XLogData frames instead of libpq's
buffer. Driven the way `ReplicationStream.pump` drives ``pump_rows`` (`Reader.fast_rows`, then
`Reader.rows_added`, the reader's ``feed`` for every frame the loop leaves), it must make the
reader emit exactly what the reader emits when it decodes every frame itself: the same changes in
the same chunks (runs of inserts expanded), the same commits at the same row limits, relations
and sentinels in their places.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.events import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    TupleData,
    Update,
)
from pgmigrator.lsn import Lsn
from pgmigrator.pipeline import reader as reader_module
from pgmigrator.pipeline.commands import BatchLimits, Changes, Command
from pgmigrator.pipeline.reader import Reader
from pgmigrator.pipeline.spill import SpillStore
from pgmigrator.protocol import pgoutput
from pgmigrator.protocol.runs import expand

from .pgoutput_encoder import encode, encode_xlog_data

if not pgoutput.ACCELERATED:  # pragma: no cover - a build without the C extension
    pytest.skip("the C accelerator is not in use", allow_module_level=True)
from pgmigrator.protocol._speedups import TxnState, take_frames

RELS = [
    Relation(16384, "public", "t", "d", (Column(1, "id", 23, -1), Column(0, "v", 25, -1))),
    Relation(16385, "public", "u", "f", (Column(1, "a", 23, -1),)),
]
value = st.one_of(
    st.tuples(st.just("t"), st.binary(max_size=6)),
    st.tuples(st.just("n"), st.none()),
    st.tuples(st.just("b"), st.binary(max_size=3)),  # binary: left to the decoder
)


def tuple_of(width: int) -> st.SearchStrategy[TupleData]:
    cols = st.lists(value, min_size=width, max_size=width)
    return cols.map(
        lambda cs: TupleData("".join(k for k, _ in cs).encode(), tuple(v for _, v in cs))
    )


def change(rel: Relation) -> st.SearchStrategy[PgOutputMessage]:
    row = tuple_of(len(rel.columns))
    return st.one_of(
        st.builds(Insert, st.just(rel.oid), row),
        st.builds(Insert, st.just(rel.oid), row),
        st.builds(Update, st.just(rel.oid), st.none(), st.none(), row),
        st.builds(Update, st.just(rel.oid), row, st.just("O"), row),
        st.builds(Delete, st.just(rel.oid), row, st.just("K")),
    )


inside = st.one_of(
    change(RELS[0]),
    change(RELS[0]),
    change(RELS[1]),
    st.just(RELS[1]),  # a Relation message mid-transaction
    st.builds(Message, st.just(True), st.just(Lsn(1)), st.just("app"), st.just(b"x")),
    st.just(Message(True, Lsn(1), "pgmigrator", b'{"id": "s1"}')),  # a switchover sentinel
)
transactions = st.lists(
    st.tuples(st.booleans(), st.lists(inside, max_size=12)), min_size=1, max_size=12
)


def frames_of(txns: list[tuple[bool, list[PgOutputMessage]]]) -> list[bytes]:
    """XLogData frames: the relations, then each transaction (with an Origin when asked)."""
    messages: list[PgOutputMessage] = list(RELS)
    for n, (origin, body) in enumerate(txns):
        lsn = Lsn(1000 + 100 * n)
        messages.append(Begin(lsn, 5000 + n, 700 + n))
        if origin:
            messages.append(Origin(Lsn(1), "elsewhere"))
        messages += body
        messages.append(Commit(0, lsn, Lsn(lsn + 1), 5000 + n))
    return [encode_xlog_data(0, 10 + i, 0, encode(m)) for i, m in enumerate(messages)]


def feed(reader: Reader, frame: bytes) -> None:
    reader.feed(frame[25:], Lsn(int.from_bytes(frame[9:17], "big")))


def in_python(frames: list[bytes], limits: BatchLimits) -> list[Command]:
    out: list[Command] = []
    reader = Reader(out.append, {}, SpillStore(), limits)
    for frame in frames:
        feed(reader, frame)
    reader.flush()
    return out


def in_c(frames: list[bytes], limits: BatchLimits) -> tuple[list[Command], int]:
    """As `ReplicationStream.pump` does with ``pump_rows``; also returns the frames C took."""
    out: list[Command] = []
    reader = Reader(out.append, {}, SpillStore(), limits)
    txn, i, taken = TxnState(), 0, 0
    while i < len(frames):
        target = reader.fast_rows(txn)
        if target is not None:
            _, wal_end, nxt = take_frames(target[0], frames, i, target[1], txn)
            reader.rows_added(_, txn)
            if nxt > i:
                assert wal_end == 10 + nxt - 1  # the last frame taken
                taken, i = taken + nxt - i, nxt
                continue
        feed(reader, frames[i])
        i += 1
    reader.flush()
    return out, taken


def comparable(commands: list[Command]) -> list[Any]:
    return [expand(c.changes) if isinstance(c, Changes) else c for c in commands]


@settings(max_examples=300, deadline=None)
@given(transactions, st.integers(1, 25), st.integers(1, 8))
def test_same_commands_as_the_python_reader(
    txns: list[tuple[bool, list[PgOutputMessage]]], max_rows: int, chunk_rows: int
) -> None:
    frames = frames_of(txns)
    limits = BatchLimits(max_rows=max_rows, max_ms=10**9, chunk_rows=chunk_rows)
    with pytest.MonkeyPatch.context() as m:  # the reference decodes every change itself
        m.setattr(reader_module, "take_row", None)
        expected = in_python(frames, limits)
    got, _ = in_c(frames, limits)
    assert comparable(got) == comparable(expected)


def test_the_loop_takes_boundaries_and_stops_at_the_row_limit() -> None:
    rows = [Insert(16384, TupleData(b"tt", (b"%d" % i, b"v"))) for i in range(3)]
    frames = frames_of([(False, list(rows))] * 4)
    limits = BatchLimits(max_rows=5, max_ms=10**9, chunk_rows=100)
    got, taken = in_c(frames, limits)
    assert taken == len(frames) - len(RELS)  # every Begin, Insert and Commit went through C
    commits = [c for c in got if not isinstance(c, (Changes, Relation))]
    assert [(c.transactions, c.rows) for c in commits] == [(2, 6), (2, 6)]  # type: ignore[attr-defined]
