"""Role settings as ``clone --roles`` writes them: list settings split into their elements."""

from __future__ import annotations

import pytest

from pgmigrator.schema.rolecopy import _list_elements, setting_sql


@pytest.mark.parametrize(
    ("stored", "elements"),
    [
        ('app, "$user", public', ["app", "$user", "public"]),
        ('"a""b", "c,d" ,e', ['a"b', "c,d", "e"]),
        ('""', [""]),
        ("single", ["single"]),
    ],
)
def test_list_settings_split_as_stored(stored: str, elements: list[str]) -> None:
    assert _list_elements(stored) == elements


def test_setting_statements_quote_everything() -> None:
    stmt = setting_sql("Odd Role", "search_path", 'app, "$user"', "my db").as_string(None)
    assert (
        stmt == """ALTER ROLE "Odd Role" IN DATABASE "my db" SET "search_path" TO 'app', '$user'"""
    )
    stmt = setting_sql("r", "myapp.tenant", "it's", None).as_string(None)
    assert stmt == """ALTER ROLE "r" SET "myapp"."tenant" TO 'it''s'"""
