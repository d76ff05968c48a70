"""Discovering the user tables of a database and selecting them with include/exclude patterns.

A *table* here is an ordinary or partitioned table; the rows of a partitioned table live in its leaf
partitions, which are the units that get copied. Patterns are globs over ``schema.table`` matched
against the table itself or, for a partition, against its partitioned root.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from pgmigrator.pg import Conn

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pgmigrator")

_TABLES_SQL = """
SELECT c.oid::int8, n.nspname, c.relname, c.relkind, c.relispartition, c.relpersistence, c.relreplident,
       CASE WHEN c.relkind = 'r' THEN pg_relation_size(c.oid) ELSE 0 END AS size_bytes,
       GREATEST(c.reltuples, 0)::int8 AS est_rows,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) AS has_ri_index,
       rn.nspname AS root_schema, rc.relname AS root_name,
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) AS columns,
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated <> '' ORDER BY a.attnum) AS generated,
       NOT EXISTS (  -- a copied column's type (a domain's base, an array's element) lacks binary I/O
         SELECT 1 FROM pg_attribute a
         JOIN pg_type t0 ON t0.oid = a.atttypid
         JOIN pg_type t1 ON t1.oid = CASE WHEN t0.typtype = 'd' THEN t0.typbasetype ELSE t0.oid END
         JOIN pg_type t2 ON t2.oid = CASE WHEN t1.typelem <> 0 AND t1.typlen = -1
                                          THEN t1.typelem ELSE t1.oid END
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
           AND (t2.typsend = 0 OR t2.typreceive = 0)) AS binary_copy
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class rc ON rc.oid = COALESCE(pg_partition_root(c.oid), c.oid)
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    kind: str  # 'r' ordinary or leaf partition, 'p' partitioned (no rows of its own)
    is_partition: bool
    persistence: str  # 'p' permanent, 'u' unlogged
    replident: str  # 'd' default (pk), 'n' nothing, 'f' full, 'i' index
    size_bytes: int
    est_rows: int
    has_pk: bool
    has_ri_index: bool
    root_schema: str
    root_name: str
    columns: tuple[str, ...]
    generated: tuple[str, ...]
    binary: bool = True  # every copied column's type has binary I/O (else COPY in text)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def has_data(self) -> bool:
        return self.kind == "r"

    @property
    def replicable_updates(self) -> bool:
        """Whether UPDATE/DELETE on this table can be replicated (a usable replica identity)."""
        if self.replident == "f":
            return True
        if self.replident == "i":
            return self.has_ri_index
        return self.replident == "d" and self.has_pk

    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)


def list_tables(conn: Conn) -> list[TableInfo]:
    rows = conn.execute(_TABLES_SQL, {"system": list(SYSTEM_SCHEMAS)}).fetchall()
    return [
        TableInfo(
            int(r[0]),
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            int(r[7]),
            int(r[8]),
            r[9],
            r[10],
            r[11],
            r[12],
            tuple(r[13]),
            tuple(r[14]),
            bool(r[15]),
        )
        for r in rows
    ]


def _normalise(pattern: str) -> str:
    return pattern if "." in pattern else f"*.{pattern}"


def matches(table: TableInfo, patterns: Sequence[str]) -> bool:
    names = (table.qualified, f"{table.root_schema}.{table.root_name}")
    return any(fnmatch.fnmatchcase(n, _normalise(p)) for p in patterns for n in names)


def select(
    tables: Sequence[TableInfo], include: Sequence[str], exclude: Sequence[str]
) -> list[TableInfo]:
    """Apply include (empty: everything) then exclude patterns."""
    chosen = [t for t in tables if not include or matches(t, include)]
    return [t for t in chosen if not matches(t, exclude)]


def left_out(tables: Sequence[TableInfo], chosen: Sequence[TableInfo]) -> list[TableInfo]:
    """The ``tables`` not in ``chosen`` (what `select` left out: pg_dump's exclusions)."""
    kept = {(t.schema, t.name) for t in chosen}
    return [t for t in tables if (t.schema, t.name) not in kept]


def unmatched_patterns(tables: Sequence[TableInfo], patterns: Sequence[str]) -> list[str]:
    return [p for p in patterns if not any(matches(t, [p]) for t in tables)]
