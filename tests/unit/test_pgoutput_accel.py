"""The C accelerator of the pgoutput decoder against the pure-Python reference.

Both must return equal values and raise the same `ProtocolError` for every input: random row
changes, each of their truncations and extensions, byte flips and random bytes. Skipped where
the extension was not built (no C compiler).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgmigrator.errors import ProtocolError
from pgmigrator.events import Delete, Insert, TupleData, Update
from pgmigrator.protocol import pgoutput

from .pgoutput_encoder import change_messages, encode, encode_tuple

speedups = pytest.importorskip("pgmigrator.protocol._speedups")
pytestmark = pytest.mark.skipif(not pgoutput.ACCELERATED, reason="PGMIGRATOR_PURE_PYTHON is set")

PY_ROW, PY_TUPLE = pgoutput._py_decode_row_change, pgoutput._py_read_tuple
FAST = settings(max_examples=300, deadline=None)
row_changes = change_messages(st.none()).filter(lambda m: isinstance(m, (Insert, Update, Delete)))


def outcome(fn: object, *args: object) -> tuple[str, object]:
    try:
        return "ok", fn(*args)  # type: ignore[operator]
    except ProtocolError as exc:
        return "error", (str(exc), exc.offset, exc.tag)


def same(wire: bytes) -> None:
    assert outcome(speedups.decode_row_change, wire) == outcome(PY_ROW, wire)
    for pos in (1, 6):  # 6: where the first tuple of an Insert or Delete starts
        c_read, py_read = (
            outcome(speedups.read_tuple, wire, pos, "I"),
            outcome(PY_TUPLE, wire, pos, "I"),
        )
        assert c_read == py_read


def test_the_accelerator_is_in_use() -> None:
    assert pgoutput.decode_row_change is speedups.decode_row_change
    assert pgoutput._read_tuple is speedups.read_tuple


def test_values_are_the_reference_classes() -> None:
    row = TupleData(b"tnub", (b"1", None, None, b"\x00\x01"))
    wire = encode(Update(7, row, "O", row))
    change = speedups.decode_row_change(wire)
    assert type(change) is Update and change == Update(7, row, "O", row)
    assert type(change.new) is TupleData and change.old_kind == "O" and change.xid is None
    with pytest.raises(AttributeError):
        change.new.kinds = b""  # type: ignore[misc]
    assert speedups.decode_row_change(b"B" + bytes(20)) is None


def test_decoded_rows_are_left_out_of_the_cycle_collector() -> None:
    """They cannot form cycles; tracked, a backlog of them costs the GC a third of decoding."""
    row = TupleData(b"tn", (b"1", None))
    change = speedups.decode_row_change(encode(Update(7, row, "K", row)))
    assert change == Update(7, row, "K", row)
    assert not any(gc.is_tracked(o) for o in (change, change.new, change.new.values, change.old))
    del change
    gc.collect()  # untracked objects are still freed by reference counting


@FAST
@given(row_changes)
def test_same_values_truncations_and_extensions(msg: object) -> None:
    wire = encode(msg)  # type: ignore[arg-type]
    assert speedups.decode_row_change(wire) == msg
    for cut in range(len(wire)):
        same(wire[:cut])
    same(wire + b"\x00")


@FAST
@given(
    row_changes,
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_same_outcome_on_flipped_bytes(msg: object, flips: list[tuple[int, int]]) -> None:
    wire = bytearray(encode(msg))  # type: ignore[arg-type]
    for position, byte in flips:
        wire[position % len(wire)] = byte
    same(bytes(wire))


@FAST
@given(st.sampled_from(b"IUD"), st.binary(max_size=40))
def test_same_outcome_on_random_bytes(tag: int, body: bytes) -> None:
    same(bytes([tag]) + body)


def test_big_and_odd_tuples() -> None:
    big = TupleData(b"t" * 1600, tuple(str(i).encode() * 50 for i in range(1600)))
    wire = b"\x00" + encode_tuple(big)
    assert speedups.read_tuple(wire, 1, "I") == (big, len(wire))
    huge_length = b"I" + (1).to_bytes(4, "big") + b"N\x00\x01t\xff\xff\xff\xff"
    same(huge_length)
    same(b"I\x00\x00\x00\x01N\x00\x00")  # zero columns
    assert outcome(speedups.read_tuple, bytearray(wire), 1, "I") == outcome(
        PY_TUPLE, bytearray(wire), 1, "I"
    )


def test_pure_python_switch() -> None:
    code = (
        "from pgmigrator.protocol import pgoutput as p;"
        "assert not p.ACCELERATED and p.decode_row_change is p._py_decode_row_change"
    )
    env = {**os.environ, "PGMIGRATOR_PURE_PYTHON": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
