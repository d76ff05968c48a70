"""Compaction of a run of changes to its net effect per key (pure, no PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.destination.compact import (
    Change,
    NetEffect,
    Step,
    compact,
    mask_of,
    merge,
    unchanged_positions,
)
from pgmigrator.events import Delete, Insert, TupleData, Update

KEY = (0,)
U = "u"  # marks an unchanged-TOAST column in `row(...)`


def row(*values: str | None) -> TupleData:
    """A row of text values; None is NULL and "u" an unchanged-TOAST column."""
    kinds = bytes(ord("n") if v is None else ord("u") if v == U else ord("t") for v in values)
    vals = tuple(None if v is None or v == U else v.encode() for v in values)
    return TupleData(kinds, vals)


def key(k: str, width: int = 3) -> TupleData:
    """An old-key tuple: the key column set, the others NULL (as pgoutput sends 'K')."""
    return row(k, *([None] * (width - 1)))


def ins(*values: str | None) -> Insert:
    return Insert(1, row(*values))


def upd(*values: str | None, old: str | None = None) -> Update:
    new = row(*values)
    return Update(
        1, None if old is None else key(old, len(values)), None if old is None else "K", new
    )


def dele(k: str, width: int = 3) -> Delete:
    return Delete(1, key(k, width), "K")


def only_net(steps: list[Step]) -> NetEffect:
    assert len(steps) == 1 and isinstance(steps[0], NetEffect), steps
    return steps[0]


# -- the rules ---------------------------------------------------------------------------------


def test_insert_then_update_is_insert_of_last_image() -> None:
    net = only_net(compact([ins("1", "a", "x"), upd("1", "b", "y"), upd("1", "c", "z")], KEY))
    assert net.inserts == [row("1", "c", "z")] and not net.updates and not net.deletes


def test_insert_then_delete_is_nothing() -> None:
    assert compact([ins("1", "a", "x"), dele("1")], KEY) == []


def test_update_then_update_is_one_update() -> None:
    net = only_net(compact([upd("1", "a", "x"), upd("1", "b", "y")], KEY))
    assert net.updates == {b"...": [row("1", "b", "y")]} and not net.inserts and not net.deletes


def test_update_then_delete_is_delete_of_the_key() -> None:
    net = only_net(compact([upd("1", "a", "x"), dele("1")], KEY))
    assert net.deletes == [key("1")] and not net.updates and not net.inserts


def test_delete_then_insert_is_delete_plus_insert() -> None:
    net = only_net(compact([dele("1"), ins("1", "a", "x")], KEY))
    assert net.deletes == [key("1")] and net.inserts == [row("1", "a", "x")]


def test_delete_insert_delete_is_delete() -> None:
    net = only_net(compact([dele("1"), ins("1", "a", "x"), dele("1")], KEY))
    assert net.deletes == [key("1")] and not net.inserts


def test_key_change_is_delete_of_old_plus_insert_of_new() -> None:
    net = only_net(compact([upd("2", "a", "x", old="1")], KEY))
    assert net.deletes == [key("1")] and net.inserts == [row("2", "a", "x")]


def test_insert_then_key_change_is_insert_of_new_key_only() -> None:
    net = only_net(compact([ins("1", "a", "x"), upd("2", "b", U, old="1")], KEY))
    assert not net.deletes and net.inserts == [row("2", "b", "x")]


def test_key_change_chain_and_back() -> None:
    net = only_net(compact([upd("2", "a", "x", old="1"), upd("1", "b", "y", old="2")], KEY))
    assert net.deletes == [key("1")] and net.inserts == [row("1", "b", "y")]


def test_unchanged_toast_keeps_the_older_value_from_the_batch() -> None:
    net = only_net(compact([ins("1", "a", "big"), upd("1", "b", U)], KEY))
    assert net.inserts == [row("1", "b", "big")]
    net = only_net(compact([upd("1", "a", "big"), upd("1", "b", U)], KEY))
    assert net.updates == {b"...": [row("1", "b", "big")]}


def test_unresolved_unchanged_toast_stays_untouched_and_groups_by_mask() -> None:
    steps = compact([upd("1", "a", U), upd("2", "b", U), upd("3", "c", "z"), upd("4", U, U)], KEY)
    net = only_net(steps)
    assert net.updates == {
        b"..u": [row("1", "a", U), row("2", "b", U)],
        b"...": [row("3", "c", "z")],
        b".uu": [row("4", U, U)],
    }
    assert unchanged_positions(b".uu") == {1, 2}


def test_key_change_with_unresolved_toast_is_an_ordered_step() -> None:
    move = upd("2", "b", U, old="1")
    steps = compact([ins("9", "a", "x"), move, ins("8", "a", "x")], KEY)
    assert steps == [
        NetEffect(inserts=[row("9", "a", "x")]),
        move,
        NetEffect(inserts=[row("8", "a", "x")]),
    ]


def test_update_after_delete_changes_nothing() -> None:
    net = only_net(compact([dele("1"), upd("1", "a", "x")], KEY))
    assert net.deletes == [key("1")] and not net.updates and not net.inserts


def test_composite_key() -> None:
    changes: list[Change] = [
        ins("1", "a", "x"),
        ins("1", "b", "y"),
        upd("1", "a", "z"),
        Delete(1, row("1", "b", None), "K"),
    ]
    net = only_net(compact(changes, (0, 1)))
    assert net.inserts == [row("1", "a", "z")] and not net.deletes


def test_keyless_relation_gathers_runs_of_inserts_only() -> None:
    d = Delete(1, row("1", "a", "x"), "O")
    u = Update(1, row("2", "a", "x"), "O", row("2", "b", "x"))
    steps = compact([ins("1", "a", "x"), ins("2", "a", "x"), d, u, ins("3", "a", "x")], None)
    assert steps == [
        NetEffect(inserts=[row("1", "a", "x"), row("2", "a", "x")]),
        d,
        u,
        NetEffect(inserts=[row("3", "a", "x")]),
    ]
    assert compact([ins("1", "a", "x")], ()) == [NetEffect(inserts=[row("1", "a", "x")])]


def test_merge_and_mask() -> None:
    assert merge(row("1", U, "c"), row("1", "b", None)) == row("1", "b", "c")
    assert merge(row("1", U, U), row("1", None, U)) == row("1", None, U)
    assert merge(row("1", "a", "c"), row("1", "b", None)) == row("1", "a", "c")
    assert mask_of(row("1", U, None)) == b".u."
    assert len(NetEffect([key("1")], {b"...": [row("1", "a", "b")]}, [])) == 2


# -- the model test: compacted apply == ordered apply ------------------------------------------

Model = dict[bytes, tuple[bytes | None, ...]]
WIDTH = 4


def apply_ordered(db: Model, change: Change) -> None:
    """What PostgreSQL does with one change, applied in source order."""
    if isinstance(change, Insert):
        k = change.new.values[0]
        assert k is not None and k not in db, "source inserted an existing key"
        db[k] = change.new.values
    elif isinstance(change, Delete):
        db.pop(change.old.values[0] or b"", None)
    else:
        old_key = (change.old or change.new).values[0]
        current = db.pop(old_key or b"", None)
        if current is None:
            return  # UPDATE matched no row
        kinds = bytes(ord("n") if v is None else ord("t") for v in current)
        new = merge(change.new, TupleData(kinds, current))
        assert new.values[0] not in db
        db[new.values[0] or b""] = new.values


def apply_steps(db: Model, steps: Sequence[Step]) -> None:
    """What the applier does: per net effect DELETE, UPDATE per mask, INSERT; ordered steps."""
    for step in steps:
        if not isinstance(step, NetEffect):
            apply_ordered(db, step)
            continue
        for old in step.deletes:
            assert old.values[0] in db, "set-based DELETE of a row that is not there"
            del db[old.values[0] or b""]
        for mask, rows in step.updates.items():
            keep = unchanged_positions(mask)
            for new in rows:
                assert mask_of(new) == mask
                k = new.values[0] or b""
                assert k in db, "set-based UPDATE of a row that is not there"
                db[k] = tuple(db[k][i] if i in keep else v for i, v in enumerate(new.values))
        for new in step.inserts:
            assert b"u" not in new.kinds
            assert new.values[0] not in db, "set-based INSERT of an existing key"
            db[new.values[0] or b""] = new.values


@st.composite
def histories(draw: st.DrawFn) -> tuple[Model, list[Change]]:
    """A starting table and a consistent run of changes to it (keys drawn from a small pool)."""
    keys = [str(i).encode() for i in range(6)]
    value = st.sampled_from([b"a", b"b", b"c", b"big\\\t", None])
    db: Model = {}
    for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4)):
        db[k] = (k, *(draw(value) for _ in range(WIDTH - 1)))
    start = dict(db)
    changes: list[Change] = []
    for _ in range(draw(st.integers(0, 25))):
        present = sorted(db)
        absent = [k for k in keys if k not in db]
        ops = (["insert"] if absent else []) + (["update", "delete"] if present else [])
        ops += ["move"] if present and absent else []
        op = draw(st.sampled_from(ops))
        if op == "delete":
            k = draw(st.sampled_from(present))
            change: Change = Delete(
                1, TupleData(b"t" + b"n" * (WIDTH - 1), (k,) + (None,) * (WIDTH - 1)), "K"
            )
        else:
            k = draw(st.sampled_from(absent if op in ("insert", "move") else present))
            vals = [draw(value) for _ in range(WIDTH - 1)]
            kinds = [b"n" if v is None else b"t" for v in vals]
            if op != "insert":  # updates may leave TOASTed columns out
                for i in range(WIDTH - 1):
                    if draw(st.booleans()) and draw(st.booleans()):
                        kinds[i], vals[i] = b"u", None
            new = TupleData(b"t" + b"".join(kinds), (k, *vals))
            if op == "insert":
                change = Insert(1, new)
            elif op == "update":
                change = Update(1, None, None, new)
            else:
                src = draw(st.sampled_from(present))
                old = TupleData(b"t" + b"n" * (WIDTH - 1), (src,) + (None,) * (WIDTH - 1))
                change = Update(1, old, "K", new)
        apply_ordered(db, change)
        changes.append(change)
    return start, changes


@settings(max_examples=300, deadline=None)
@given(histories())
def test_compacted_apply_equals_ordered_apply(history: tuple[Model, list[Change]]) -> None:
    start, changes = history
    ordered = dict(start)
    for change in changes:
        apply_ordered(ordered, change)
    compacted = dict(start)
    apply_steps(compacted, compact(changes, KEY))
    assert compacted == ordered


@settings(max_examples=100, deadline=None)
@given(histories())
def test_each_key_appears_once_per_group(history: tuple[Model, list[Change]]) -> None:
    for step in compact(history[1], KEY):
        if isinstance(step, NetEffect):
            for group in (step.deletes, step.inserts, *step.updates.values()):
                keys = [r.values[0] for r in group]
                assert len(keys) == len(set(keys))
