"""Splitting a deferred statement at its placeholders (the applier inlines quoted values there)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgmigrator.destination._writer import split_placeholders


def test_parts_around_each_placeholder() -> None:
    query = b'INSERT INTO "t" ("a", "b") VALUES (%s::int4, %s::text)'
    assert split_placeholders(query) == [
        b'INSERT INTO "t" ("a", "b") VALUES (',
        b"::int4, ",
        b"::text)",
    ]


def test_doubled_percent_is_a_literal_percent() -> None:
    assert split_placeholders(b"SELECT 5 %% 3, %s") == [b"SELECT 5 % 3, ", b""]


def test_no_placeholder_is_one_part() -> None:
    assert split_placeholders(b"COMMIT") == [b"COMMIT"]


@pytest.mark.parametrize("query", [b"SELECT %d", b"SELECT %(name)s", b"SELECT %b"])
def test_other_placeholders_are_refused(query: bytes) -> None:
    with pytest.raises(ValueError, match="unsupported placeholder"):
        split_placeholders(query)


@given(st.lists(st.binary().map(lambda b: b.replace(b"%", b"")), min_size=1, max_size=6))
def test_joining_the_parts_with_values_gives_the_statement(texts: list[bytes]) -> None:
    query = b"%s".join(texts)
    assert split_placeholders(query) == texts
