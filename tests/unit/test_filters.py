"""Filters: table globs, operations, column drop/mask rules, the --sink spec parser."""

from __future__ import annotations

import pytest

from pgmigrator.errors import ConfigError
from pgmigrator.stream.filters import Filters, parse_column_rules, parse_operations
from pgmigrator.stream.settings import parse_sink_spec, redact_sink


def test_table_include_exclude_globs() -> None:
    f = Filters(tables=["public.*", "sales.order_*"], exclude=["public.audit*", "tmp"])
    assert f.table_allowed("public", "users")
    assert f.table_allowed("sales", "order_lines")
    assert not f.table_allowed("sales", "customers")
    assert not f.table_allowed("public", "audit_log")
    assert not f.table_allowed("public", "tmp")  # a pattern without a dot matches any schema
    assert Filters().table_allowed("any", "thing")


def test_operations() -> None:
    assert parse_operations(["insert,u", "DELETE"]) == {"c", "u", "d"}
    assert parse_operations([]) is None
    f = Filters(operations=["c"])
    assert f.op_allowed("c") and not f.op_allowed("u")
    with pytest.raises(ConfigError, match="unknown operation 'upsert'"):
        parse_operations(["upsert"])


def test_column_rules() -> None:
    f = Filters(
        drop_columns={"public.users": ["ssn", "secret_*"]},
        mask_columns={"*.users": ["email", "ssn"]},
    )
    rules = f.columns("public", "users", ["id", "ssn", "secret_a", "email"])
    assert rules.drop == {"ssn", "secret_a"}
    assert rules.mask == {"email"}  # dropping wins over masking
    assert not f.columns("public", "orders", ["id", "email"]).drop
    assert parse_column_rules(["public.users=ssn, email"]) == {"public.users": ["ssn", "email"]}
    with pytest.raises(ConfigError, match="bad column rule"):
        parse_column_rules(["public.users"])


def test_sink_spec_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t")
    spec = parse_sink_spec(
        "webhook:url=http://x/y?a=1\\,2,secret=env:HOOK_SECRET,policy=block,queue=50,name=hook"
    )
    assert spec.type == "webhook" and spec.name == "hook" and spec.queue == 50
    assert spec.options() == {"url": "http://x/y?a=1,2", "secret": "s3cr3t"}
    assert parse_sink_spec("stdout").options() == {}
    assert redact_sink({"type": "webhook", "secret": "abc", "url": "u"})["secret"] == "***"


def test_sink_spec_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError, match="no sink type"):
        parse_sink_spec(":path=x")
    with pytest.raises(ConfigError, match="bad --sink option"):
        parse_sink_spec("file:path")
    with pytest.raises(ConfigError, match="policy"):
        parse_sink_spec("file:path=x,policy=sometimes")
    with pytest.raises(ConfigError, match="'NOPE' is not set"):
        parse_sink_spec("webhook:secret=env:NOPE").options()
