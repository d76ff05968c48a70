"""Filters applied before the bus: which tables and operations pass, which columns are dropped or masked.

Table patterns are globs over ``schema.table`` (a pattern without a dot means any schema), like
``--tables`` / ``--exclude`` of ``clone``. Column rules map a table pattern to column names (globs
too); a dropped column disappears from ``key``, ``before`` and ``after``, a masked one keeps its
name with the value ``"***"``. Decisions are made once per table layout (cached), never per row.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pgmigrator.errors import ConfigError

OPERATIONS = {
    "c": "c",
    "insert": "c",
    "u": "u",
    "update": "u",
    "d": "d",
    "delete": "d",
    "t": "t",
    "truncate": "t",
    "r": "r",
    "read": "r",
    "m": "m",
    "message": "m",
}


def parse_operations(values: Iterable[str] | None) -> frozenset[str] | None:
    """``["insert", "u"]`` -> ``{"c", "u"}``; None or empty means every operation."""
    ops: set[str] = set()
    for value in values or ():
        for part in value.split(","):
            word = part.strip().lower()
            if not word:
                continue
            if word not in OPERATIONS:
                raise ConfigError(
                    f"unknown operation {word!r}",
                    hint="use c/insert, u/update, d/delete, t/truncate, r/read, m/message",
                )
            ops.add(OPERATIONS[word])
    return frozenset(ops) or None


def _normalise(pattern: str) -> str:
    return pattern if "." in pattern else f"*.{pattern}"


def table_matches(schema: str, table: str, patterns: Sequence[str]) -> bool:
    qualified = f"{schema}.{table}"
    return any(fnmatch.fnmatchcase(qualified, _normalise(p)) for p in patterns)


@dataclass(frozen=True, slots=True)
class ColumnRules:
    drop: frozenset[str]
    mask: frozenset[str]


NO_RULES = ColumnRules(frozenset(), frozenset())


class Filters:
    def __init__(
        self,
        tables: Sequence[str] = (),
        exclude: Sequence[str] = (),
        operations: Iterable[str] | None = None,
        drop_columns: Mapping[str, Sequence[str]] | None = None,
        mask_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.tables = list(tables)
        self.exclude = list(exclude)
        self.operations = parse_operations(operations)
        self.drop_columns = {k: list(v) for k, v in (drop_columns or {}).items()}
        self.mask_columns = {k: list(v) for k, v in (mask_columns or {}).items()}
        self._cache: dict[tuple[str, str], bool] = {}

    def op_allowed(self, op: str) -> bool:
        return self.operations is None or op in self.operations

    def table_allowed(self, schema: str, table: str) -> bool:
        key = (schema, table)
        allowed = self._cache.get(key)
        if allowed is None:
            allowed = (not self.tables or table_matches(schema, table, self.tables)) and not (
                self.exclude and table_matches(schema, table, self.exclude)
            )
            self._cache[key] = allowed
        return allowed

    def columns(self, schema: str, table: str, names: Sequence[str]) -> ColumnRules:
        """Which of ``names`` to drop and to mask for this table."""
        drop = _matching(self.drop_columns, schema, table, names)
        mask = _matching(self.mask_columns, schema, table, names) - drop
        return ColumnRules(drop, mask) if drop or mask else NO_RULES


def _matching(
    rules: Mapping[str, Sequence[str]], schema: str, table: str, names: Sequence[str]
) -> frozenset[str]:
    found: set[str] = set()
    for table_pattern, column_patterns in rules.items():
        if table_matches(schema, table, [table_pattern]):
            found.update(
                n for n in names if any(fnmatch.fnmatchcase(n, p) for p in column_patterns)
            )
    return frozenset(found)


def parse_column_rules(values: Iterable[str]) -> dict[str, list[str]]:
    """``["public.users=ssn,password"]`` -> ``{"public.users": ["ssn", "password"]}``."""
    rules: dict[str, list[str]] = {}
    for value in values:
        table, sep, cols = value.partition("=")
        columns = [c.strip() for c in cols.split(",") if c.strip()]
        if not sep or not table.strip() or not columns:
            raise ConfigError(
                f"bad column rule {value!r}",
                hint="write TABLE_PATTERN=COLUMN[,COLUMN...], e.g. public.users=ssn,password",
            )
        rules.setdefault(table.strip(), []).extend(columns)
    return rules
