"""Database and role settings as the clone writes them: list settings split into their elements."""

from __future__ import annotations

import pytest

from pgmigrator.schema.dbsettings import DatabaseSetting, list_elements


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
    assert list_elements(stored) == elements


def test_setting_statements_quote_everything() -> None:
    setting = DatabaseSetting("Odd Role", "search_path", 'app, "$user"')
    stmt = setting.statement("my db").as_string(None)
    assert (
        stmt == """ALTER ROLE "Odd Role" IN DATABASE "my db" SET "search_path" TO 'app', '$user'"""
    )
    stmt = DatabaseSetting(None, "myapp.tenant", "it's").statement("d").as_string(None)
    assert stmt == """ALTER DATABASE "d" SET "myapp"."tenant" TO 'it''s'"""
