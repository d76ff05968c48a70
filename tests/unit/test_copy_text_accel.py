"""The C COPY text builder (`_speedups.copy_text`) against the Python reference builder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmigrator.destination import _sql
from pgmigrator.events import TupleData

if _sql._copy_text is None:  # pragma: no cover - a build without the C extension
    pytest.skip("the C accelerator is not built", allow_module_level=True)

_value = st.one_of(
    st.tuples(st.just("t"), st.binary(max_size=12) | st.sampled_from([b"\\", b"\t\n\r", b"a\\b"])),
    st.tuples(st.sampled_from(["n", "u"]), st.none()),
)


def _row(cols: list[tuple[str, bytes | None]]) -> TupleData:
    return TupleData("".join(k for k, _ in cols).encode(), tuple(v for _, v in cols))


@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(st.lists(_value, min_size=n, max_size=n), max_size=5)
    )
)
def test_same_bytes_as_python(rows: list[list[tuple[str, bytes | None]]]) -> None:
    data = [_row(r) for r in rows]
    ncols = len(rows[0]) if rows else 1
    expected = _sql._py_copy_payload([(b"", data)], ncols) if data else b""
    assert _sql.copy_payload([(b"", data)], ncols) == expected
    if data:
        assert _sql._copy_text(data) == expected


def test_binary_value_is_left_to_python() -> None:
    rows = [TupleData(b"tb", (b"1", b"\x00\x01"))]
    assert _sql._copy_text(rows) is None
    with pytest.raises(Exception, match="binary-format value"):
        _sql.copy_payload([(b"", rows)], 2)
