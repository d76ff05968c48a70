"""Journey: the applier writes decoded changes to a real destination, exactly once.

Events are built by hand to match tables created on the destination, so these tests exercise
the applier alone (no source, no decoder): set-based and row-by-row paths, the ordered fallback,
unchanged TOAST, whole-row identity, identity columns, origin progress and failure modes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pgmigrator.destination import PostgresApplier
from pgmigrator.destination.postgres import SMALL_BATCH
from pgmigrator.destination.progress import OriginProgress
from pgmigrator.dsn import Target
from pgmigrator.errors import ApplyError, RetryableApplyError
from pgmigrator.events import Column, Delete, Insert, Relation, Truncate, TupleData, Update
from pgmigrator.lsn import Lsn
from pgmigrator.protocol.runs import InsertRun, take_row
from tests.conftest import Pair
from tests.unit.pgoutput_encoder import encode

U = object()  # an unchanged-TOAST column in `row(...)`
LARGE = SMALL_BATCH * 3  # enough rows for the COPY + set-based path


def row(*values: Any) -> TupleData:
    """Text values (str or int); None is NULL, `U` an unchanged-TOAST column."""
    kinds = bytes(ord("n") if v is None else ord("u") if v is U else ord("t") for v in values)
    vals = tuple(None if v is None or v is U else str(v).encode() for v in values)
    return TupleData(kinds, vals)


def relation(oid: int, name: str, cols: str, key: str = "id", identity: str = "d") -> Relation:
    columns = tuple(
        Column(1 if identity == "f" or c in key.split(",") else 0, c, 25, -1)
        for c in cols.split(",")
    )
    return Relation(oid, "public", name, identity, columns)


def rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


@pytest.fixture
def applier(pair: Pair) -> Iterator[PostgresApplier]:
    ap = PostgresApplier(Target(pair.dest, "destination"), "pgm_" + uuid.uuid4().hex[:8])
    try:
        yield ap
    finally:
        ap.close()


def durable(pair: Pair, ap: PostgresApplier) -> Lsn:
    """The origin's progress as the follow loop reads it for feedback (flushed first)."""
    progress = OriginProgress(Target(pair.dest, "destination"), ap.origin)
    try:
        return progress.durable_lsn()
    finally:
        progress.close()


def apply_txn(ap: PostgresApplier, changes: list[Any], lsn: int = 100, form: str = "") -> None:
    ap.begin()
    ap.apply(shaped(changes, form))
    ap.commit(Lsn(lsn), 0)


@pytest.fixture(params=["decoded", "runs"])
def form(request: pytest.FixtureRequest) -> str:
    """How the reader hands changes over: all decoded, or (C accelerator) inserts in runs."""
    if request.param == "runs" and take_row is None:
        pytest.skip("the C accelerator is not in use")
    return str(request.param)


def shaped(changes: list[Any], form: str) -> list[Any]:
    """``changes`` as the reader hands them over in ``form`` (see the `form` fixture)."""
    if form != "runs":
        return changes
    out: list[Any] = []
    for change in changes:
        if isinstance(change, Truncate) or not take_row(out, encode(change)):  # type: ignore[misc]
            out.append(change)
    assert any(isinstance(c, InsertRun) for c in out) or not any(
        isinstance(c, Insert) for c in changes
    )
    return out


T = relation(1, "t", "id,a,b")
OTHER = relation(2, "other", "id,a,b")


def two_tables(dst: psycopg.Connection[Any], ap: PostgresApplier, t_check: str = "") -> None:
    """Tables ``t`` (``b`` under ``t_check``, when given) and ``other`` on the destination, the
    applier started and both relations registered."""
    dst.execute(f"CREATE TABLE t (id int PRIMARY KEY, a text, b int {t_check})")
    dst.execute("CREATE TABLE other (id int PRIMARY KEY, a text, b int)")
    ap.start()
    ap.relation(T)
    ap.relation(OTHER)


ODD = "tab\there, back\\slash, new\nline, cr\r, \\N, ünïcode"


def test_inserts_updates_deletes_and_truncate(
    pair: Pair, applier: PostgresApplier, form: str
) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int)")
        dst.execute("CREATE TABLE other (id int PRIMARY KEY, a text, b int)")
        assert applier.start() == Lsn(0)
        applier.relation(T)
        applier.relation(relation(2, "other", "id,a,b"))
        big = [Insert(1, row(i, ODD if i % 2 else None, i)) for i in range(LARGE)]
        small = [Insert(2, row(i, "x", i)) for i in range(3)]
        apply_txn(applier, big + small, form=form)
        assert rows(dst, "SELECT count(*), count(a) FROM t") == [(LARGE, LARGE // 2)]
        assert rows(dst, "SELECT a FROM t WHERE id = 1") == [(ODD,)]

        changes: list[Any] = [
            Update(1, None, None, row(i, f"u{i}", -i)) for i in range(0, LARGE, 2)
        ]
        changes += [Delete(1, row(i, None, None), "K") for i in range(1, LARGE, 4)]
        changes += [Insert(1, row(1000 + i, ODD, i)) for i in range(LARGE)]
        changes += [Update(2, None, None, row(0, "y", 0)), Delete(2, row(1, None, None), "K")]
        apply_txn(applier, changes, 200)
        assert rows(dst, "SELECT a, b FROM t WHERE id = 4") == [("u4", -4)]
        assert rows(dst, "SELECT count(*) FROM t WHERE id = 5") == [(0,)]
        assert rows(dst, "SELECT count(*) FROM t") == [(LARGE * 2 - LARGE // 4,)]
        assert rows(dst, "SELECT id, a FROM other ORDER BY id") == [(0, "y"), (2, "x")]

        truncate = Truncate((1, 2), cascade=False, restart_identity=False)
        apply_txn(applier, [Insert(1, row(5000, "a", 1)), truncate, Insert(1, row(7, "b", 2))], 300)
        assert rows(dst, "SELECT id, a FROM t") == [(7, "b")]
        assert rows(dst, "SELECT count(*) FROM other") == [(0,)]
        assert applier.rows_applied == len(big) + len(small) + len(changes) + 2


def test_key_change_and_folding(pair: Pair, applier: PostgresApplier, form: str) -> None:
    applier.start()
    for n in (1, LARGE):  # row by row, then COPY + set-based
        key_change_and_folding(pair, applier, n, form)


def key_change_and_folding(pair: Pair, applier: PostgresApplier, n: int, form: str) -> None:
    with pair.dst() as dst:
        dst.execute("DROP TABLE IF EXISTS t; CREATE TABLE t (id int PRIMARY KEY, a text, b int)")
        dst.execute("INSERT INTO t SELECT g, 'old', g FROM generate_series(0, %s) g", (n - 1,))
        applier.relation(relation(1 + n, "t", "id,a,b"))
        changes: list[Any] = []
        for i in range(n):
            changes += [
                Update(1 + n, row(i, None, None), "K", row(10_000 + i, "moved", i)),
                Update(1 + n, None, None, row(10_000 + i, "moved again", i)),
                Insert(1 + n, row(20_000 + i, "new", i)),
                Update(1 + n, None, None, row(20_000 + i, "new, updated", i)),
                Insert(1 + n, row(30_000 + i, "gone", i)),
                Delete(1 + n, row(30_000 + i, None, None), "K"),
                Insert(1 + n, row(i, "reinserted", i)),
            ]
        apply_txn(applier, changes, form=form)
        assert rows(dst, "SELECT a, count(*) FROM t GROUP BY a ORDER BY a") == [
            ("moved again", n),
            ("new, updated", n),
            ("reinserted", n),
        ]


def test_unique_key_swap_falls_back_to_ordered_replay(
    pair: Pair, applier: PostgresApplier, caplog: pytest.LogCaptureFixture
) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text UNIQUE, b int)")
        dst.execute("INSERT INTO t SELECT g, 'v' || g, 0 FROM generate_series(0, %s) g", (LARGE,))
        applier.start()
        applier.relation(T)
        # rows 0 and 1 swap their unique values through a temporary value, as the source did
        swap = [
            Update(1, None, None, row(0, "tmp", 1)),
            Update(1, None, None, row(1, "v0", 1)),
            Update(1, None, None, row(0, "v1", 1)),
        ]
        bulk = [Update(1, None, None, row(i, f"v{i}", 2)) for i in range(2, LARGE)]
        apply_txn(applier, swap + bulk)
        assert rows(dst, "SELECT id, a, b FROM t WHERE id < 3 ORDER BY id") == [
            (0, "v1", 1),
            (1, "v0", 1),
            (2, "v2", 2),
        ]
        assert "replaying in source order" in caplog.text


def test_unchanged_toast_columns_stay_untouched(pair: Pair, applier: PostgresApplier) -> None:
    applier.start()
    for n in (1, LARGE):
        unchanged_toast(pair, applier, n)


def unchanged_toast(pair: Pair, applier: PostgresApplier, n: int) -> None:
    with pair.dst() as dst:
        dst.execute(
            "DROP TABLE IF EXISTS doc; "
            "CREATE TABLE doc (id int PRIMARY KEY, title text, body text, note text)"
        )
        dst.execute(
            "INSERT INTO doc SELECT g, 't', repeat(md5(g::text), 5000), 'n' "
            "FROM generate_series(0, %s) g",
            (n - 1,),
        )
        oid = 100 + n
        applier.relation(relation(oid, "doc", "id,title,body,note"))
        changes: list[Any] = [Update(oid, None, None, row(i, "new", U, U)) for i in range(n)]
        changes += [Update(oid, None, None, row(i, "newer", U, "set")) for i in range(0, n, 2)]
        changes.append(Insert(oid, row(n + 1, "fresh", "short", None)))
        changes.append(Update(oid, None, None, row(n + 1, "fresh", U, "later")))
        apply_txn(applier, changes)
        kept = "SELECT count(*) FROM doc WHERE id < %s AND body = repeat(md5(id::text), 5000)"
        assert rows(dst, kept, n) == [(n,)]
        assert rows(dst, "SELECT title, note FROM doc WHERE id = 0") == [("newer", "set")]
        if n > 1:
            assert rows(dst, "SELECT title, note FROM doc WHERE id = 1") == [("new", "n")]
        assert rows(dst, f"SELECT body, note FROM doc WHERE id = {n + 1}") == [("short", "later")]


def test_full_identity_touches_exactly_one_duplicate(pair: Pair, applier: PostgresApplier) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE log (n int, msg text, doc json)")
        dst.execute("""INSERT INTO log VALUES (1, 'dup', '{"a": 1}'), (1, 'dup', '{"a": 1}'),
                       (1, 'dup', '{"a": 1}'), (2, NULL, NULL)""")
        applier.start()
        applier.relation(relation(4, "log", "n,msg,doc", identity="f"))
        dup = row(1, "dup", '{"a": 1}')
        apply_txn(
            applier,
            [
                Delete(4, dup, "O"),
                Update(4, dup, "O", row(1, "changed", '{"a": 2}')),
                Update(4, row(2, None, None), "O", row(2, "was null", None)),
                Insert(4, row(3, "new", "[]")),
            ],
        )
        assert rows(dst, "SELECT n, msg, doc::text FROM log ORDER BY n, msg") == [
            (1, "changed", '{"a": 2}'),
            (1, "dup", '{"a": 1}'),
            (2, "was null", None),
            (3, "new", "[]"),
        ]


def test_identity_generated_always(pair: Pair, applier: PostgresApplier) -> None:
    applier.start()
    for n in (2, LARGE):
        identity_always(pair, applier, n)


def identity_always(pair: Pair, applier: PostgresApplier, n: int) -> None:
    with pair.dst() as dst:
        dst.execute(
            "DROP TABLE IF EXISTS ev; "
            "CREATE TABLE ev (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)"
        )
        oid = 200 + n
        applier.relation(relation(oid, "ev", "id,v"))
        changes: list[Any] = [Insert(oid, row(100 + i, "v")) for i in range(n)]
        changes.append(Update(oid, None, None, row(100, "updated")))
        changes.append(Update(oid, row(101, None), "K", row(99, "moved")))
        apply_txn(applier, changes)
        ids = sorted({99, *range(100, 100 + n)} - {101})
        assert rows(dst, "SELECT id FROM ev ORDER BY id") == [(i,) for i in ids]
        assert rows(dst, "SELECT id, v FROM ev WHERE v <> 'v' ORDER BY id") == [
            (99, "moved"),
            (100, "updated"),
        ]


def test_exactly_once_origin_progress(pair: Pair, applier: PostgresApplier) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int)")
        assert applier.start() == Lsn(0)
        applier.relation(T)
        apply_txn(applier, [Insert(1, row(1, "a", 1))], lsn=Lsn.parse("1/A0"))
        assert durable(pair, applier) == Lsn.parse("1/A0")
        applier.begin()
        applier.apply([Insert(1, row(2, "b", 2))])
        applier.rollback()  # neither the row nor the origin's progress stays
        applier.close()
        again = PostgresApplier(applier._target, applier._origin)
        try:
            assert again.start() == Lsn.parse("1/A0")
            again.relation(T)
            apply_txn(again, [Insert(1, row(3, "c", 3))], lsn=Lsn.parse("1/B0"))
        finally:
            again.close()
        assert rows(dst, "SELECT id FROM t ORDER BY id") == [(1,), (3,)]
        assert applier.start() == Lsn.parse("1/B0")


def test_inserts_stream_across_chunks_and_fail_whole(
    pair: Pair, applier: PostgresApplier, form: str
) -> None:
    """A run of inserts stays in one open COPY across apply() calls; its error fails the batch."""
    with pair.dst() as dst:
        two_tables(dst, applier)
        applier.begin()
        for chunk in range(3):  # three chunks into t, one into other, t again: ordered and whole
            applier.apply(
                shaped([Insert(1, row(chunk * LARGE + i, ODD, i)) for i in range(LARGE)], form)
            )
        applier.apply(shaped([Insert(2, row(i, "o", i)) for i in range(LARGE)], form))
        applier.apply(shaped([Insert(1, row(10 * LARGE + i, "x", i)) for i in range(LARGE)], form))
        applier.apply([Update(1, None, None, row(0, "after the copies", 0))])
        applier.commit(Lsn(100), 0)
        assert rows(dst, "SELECT count(*) FROM t") == [(LARGE * 4,)]
        assert rows(dst, "SELECT count(*) FROM other") == [(LARGE,)]
        assert rows(dst, "SELECT a FROM t WHERE id = 0") == [("after the copies",)]

        applier.begin()  # the second chunk repeats a key: the whole batch fails, nothing stays
        applier.apply(shaped([Insert(1, row(20 * LARGE + i, "y", i)) for i in range(LARGE)], form))
        with pytest.raises(ApplyError, match=r"COPY of \d+ inserted row\(s\) into public\.t"):
            applier.apply(shaped([Insert(1, row(i, "dup", i)) for i in range(LARGE)], form))
            applier.commit(Lsn(200), 0)
        applier.rollback()
        assert rows(dst, "SELECT count(*) FROM t") == [(LARGE * 4,)]
        assert durable(pair, applier) == Lsn(100)


def test_missing_table_and_missing_column(pair: Pair, applier: PostgresApplier) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        dst.execute("CREATE TABLE strict (id int PRIMARY KEY, need int NOT NULL)")
        applier.start()
        with pytest.raises(ApplyError, match=r"public\.absent does not exist") as missing:
            applier.relation(relation(6, "absent", "id"))
        assert not missing.value.retryable and missing.value.hint
        with pytest.raises(ApplyError, match=r"schema drift: public\.t: column\(s\) b missing"):
            applier.relation(T)
        with pytest.raises(ApplyError, match=r"public\.strict: destination-only column\(s\) need"):
            applier.relation(relation(7, "strict", "id"))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_column_retyped_on_one_side_is_named(pair: Pair, applier: PostgresApplier) -> None:
    """The source sends `a` as text and `n` as integer; the destination has numeric and bigint:
    a warning names both before a value fails its cast; a type the sides agree on is not named."""
    with pair.dst() as dst:
        dst.execute("CREATE TABLE r (id int PRIMARY KEY, a numeric, n bigint)")
        applier.start()
        cols = (Column(1, "id", 23, -1), Column(0, "a", 25, -1), Column(0, "n", 23, -1))
        logger, seen = logging.getLogger("pgmigrator.apply"), Records()
        logger.addHandler(seen)  # (whether or not the tree propagates to the root)
        try:
            applier.relation(Relation(8, "public", "r", "d", cols))
        finally:
            logger.removeHandler(seen)
        apply_txn(applier, [Insert(8, row(1, "1.5", 7))], lsn=100)  # a widened column applies
        assert rows(dst, "SELECT a, n FROM r") == [(Decimal("1.5"), 7)]
    warned = [r.fields for r in seen.records]  # type: ignore[attr-defined]
    assert len(warned) == 1 and warned[0]["table"] == "public.r", warned
    assert warned[0]["columns"] == "a (text -> numeric), n (integer -> bigint)"


def test_small_writes_go_with_the_commit_and_fail_clearly(
    pair: Pair, applier: PostgresApplier
) -> None:
    """A small transaction's writes wait for its commit (one round trip); an error names the table."""
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int CHECK (b < 100))")
        applier.start()
        applier.relation(T)
        apply_txn(applier, [Insert(1, row(1, "it's \\ 'quoted'", 1))], lsn=100)
        assert rows(dst, "SELECT a FROM t") == [("it's \\ 'quoted'",)]
        applier.begin()
        applier.apply([Update(1, None, None, row(1, "x", 1)), Insert(1, row(2, "y", 500))])
        with pytest.raises(ApplyError, match=r"applying changes to public\.t .*t_b_check"):
            applier.commit(Lsn(200), 0)
        assert rows(dst, "SELECT id, a FROM t") == [(1, "it's \\ 'quoted'")]  # nothing of it
        assert durable(pair, applier) == Lsn(100)


def test_statement_shapes_are_prepared_once_a_session(pair: Pair, applier: PostgresApplier) -> None:
    """Small writes run as EXECUTE of a statement prepared once per shape; a prepared statement
    outlives a failed transaction, and a PREPARE that failed leaves no name behind for a later
    batch to EXECUTE."""
    with pair.dst() as dst:
        two_tables(dst, applier, "CHECK (b < 100)")
        for i in range(3):
            apply_txn(applier, [Insert(1, row(i, "a", i))], lsn=100 + i)
        session = applier._conn  # the applier's own session: prepared statements are per session
        assert session is not None
        query = "SELECT name, parameter_types::text FROM pg_prepared_statements ORDER BY name"
        assert rows(session, query) == [
            ("pgm_1", "{integer,text,integer}"),  # the insert
            ("pgm_2", '{pg_lsn,"timestamp with time zone"}'),  # the origin's advance
        ]
        kept = rows(session, "SELECT statement FROM pg_prepared_statements WHERE name = 'pgm_1'")
        assert "EXECUTE" not in kept[0][0]  # the server keeps the PREPARE's query, not a batch

        applier.begin()  # the insert breaks t's check: the transaction fails after its PREPAREs
        applier.apply([Insert(1, row(10, "x", 500))])
        with pytest.raises(ApplyError, match="t_b_check"):
            applier.commit(Lsn(200), 0)
        applier.rollback()
        dst.execute("ALTER TABLE other RENAME TO other_away")  # the delete's PREPARE will fail
        applier.begin()
        applier.apply([Delete(2, row(5, None, None), "K")])
        with pytest.raises(ApplyError, match="other"):
            applier.commit(Lsn(200), 0)
        applier.rollback()
        dst.execute("ALTER TABLE other_away RENAME TO other")
        dst.execute("INSERT INTO other VALUES (5, 'o', 5)")

        apply_txn(applier, [Insert(1, row(20, "z", 1)), Delete(2, row(5, None, None), "K")], 300)
        assert rows(dst, "SELECT id FROM t ORDER BY id") == [(0,), (1,), (2,), (20,)]
        assert rows(dst, "SELECT count(*) FROM other") == [(0,)]
        assert durable(pair, applier) == Lsn(300)


def test_terminated_backend_is_retryable(pair: Pair, applier: PostgresApplier) -> None:
    with pair.dst() as dst:
        dst.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int)")
        applier.start()
        applier.relation(T)
        applier.begin()
        applier.apply([Insert(1, row(1, "a", 1))])
        dst.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with pytest.raises(RetryableApplyError):
            applier.apply([Insert(1, row(i, "a", 1)) for i in range(2, LARGE)])
        applier.rollback()
        assert applier.start() == Lsn(0)  # reconnect and replay from the origin
        other = PostgresApplier(applier._target, applier._origin)
        with pytest.raises(RetryableApplyError, match="in use by another session"):
            other.start()
        applier.relation(T)
        apply_txn(applier, [Insert(1, row(1, "a", 1))])
        assert rows(dst, "SELECT id FROM t") == [(1,)]


def test_odd_names_and_types(pair: Pair, applier: PostgresApplier) -> None:
    with pair.dst() as dst:
        dst.execute("""
            CREATE TYPE mood AS ENUM ('ok', 'sad');
            CREATE DOMAIN positive AS int NOT NULL CHECK (VALUE > 0);
            CREATE TABLE "Odd %s Table" (
                "id%d" int PRIMARY KEY, "we""ird" positive, m mood, tags text[], c char(5),
                amount numeric(10, 2), at timestamptz, doc jsonb, extra text DEFAULT 'dest-only')
        """)
        applier.start()
        cols = 'id%d,we"ird,m,tags,c,amount,at,doc'
        rel = Relation(
            9,
            "public",
            "Odd %s Table",
            "d",
            tuple(Column(int(i == 0), c, 25, -1) for i, c in enumerate(cols.split(","))),
        )
        applier.relation(rel)

        def image(i: int, mood: str) -> TupleData:
            return row(
                i, i + 1, mood, '{a,"b c"}', "ab", "1.50", "2024-01-02 03:04:05+00", '{"k": [1]}'
            )

        for n in (2, LARGE):  # VALUES lists, then COPY + staging
            base = 1000 * n
            changes: list[Any] = [Insert(9, image(base + i, "ok")) for i in range(n)]
            apply_txn(applier, changes)
            changes = [Update(9, None, None, image(base + i, "sad")) for i in range(n)]
            changes.append(Delete(9, row(base, None, None, None, None, None, None, None), "K"))
            apply_txn(applier, changes)
        assert rows(dst, 'SELECT count(*), min(m::text), min(extra) FROM "Odd %s Table"') == [
            (LARGE, "sad", "dest-only")  # 2 + LARGE inserted, one deleted per round
        ]
        assert rows(dst, 'SELECT tags, c, amount::text, doc::text FROM "Odd %s Table" LIMIT 1') == [
            (["a", "b c"], "ab   ", "1.50", '{"k": [1]}')
        ]
