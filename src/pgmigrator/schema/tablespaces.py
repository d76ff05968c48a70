"""Tablespaces of the copied schema: the destination must have them, or the clone leaves them out.

pg_dump places every table, index and materialized view outside the database's default tablespace
with ``SET default_tablespace``; a tablespace is a directory of one server, so the destination
often has none of the source's. The pre-data script would fail on the first such table, after
the slot and publication were created: the clone looks them up first and refuses, naming them,
unless ``--no-tablespaces`` (pg_dump's option: everything in the destination database's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.source.catalog import SYSTEM_SCHEMAS

# Tablespaces of the relations pg_dump will place (tables, partitioned tables, materialized views
# and the indexes of the tables it dumps); extension members and tables left out excepted.
_USED_SQL = r"""
SELECT DISTINCT t.spcname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_tablespace t ON t.oid = c.reltablespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I')
  AND n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg\_%%'
  AND c.oid <> ALL(%(excluded)s) AND coalesce(i.indrelid, 0) <> ALL(%(excluded)s)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = coalesce(i.indrelid, c.oid) AND d.deptype = 'e')
ORDER BY 1
"""

_DEST_SQL = """
SELECT s.name, t.oid IS NOT NULL,
       t.oid IS NOT NULL AND has_tablespace_privilege(t.oid, 'CREATE')
FROM unnest(%s::text[]) AS s(name) LEFT JOIN pg_tablespace t ON t.spcname = s.name
ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class TablespaceProblems:
    used: tuple[str, ...]  # by the copied schema on the source
    missing: tuple[str, ...]  # absent on the destination
    no_create: tuple[str, ...]  # present, but the destination's user may not create in them

    def __bool__(self) -> bool:
        return bool(self.missing or self.no_create)

    def message(self) -> str:
        parts = []
        if self.missing:
            parts.append(
                "the destination lacks tablespace(s) the schema uses: " + listed(self.missing)
            )
        if self.no_create:
            parts.append(
                "the destination's user may not create objects in tablespace(s): "
                + listed(self.no_create)
            )
        return "; ".join(parts)

    def hint(self) -> str:
        return (
            "create them on the destination (CREATE TABLESPACE ... LOCATION ...) and grant CREATE"
            " on them, or pass --no-tablespaces to put everything in the destination database's"
            " default tablespace"
        )

    def raise_if_any(self) -> None:
        if self:
            raise PreflightError(self.message(), hint=self.hint())


def tablespace_problems(src: Conn, dst: Conn, excluded_oids: Sequence[int]) -> TablespaceProblems:
    """Which of the tablespaces the copied schema uses the destination cannot give it."""
    params = {"system": list(SYSTEM_SCHEMAS), "excluded": list(excluded_oids)}
    used = tuple(str(r[0]) for r in src.execute(_USED_SQL, params))
    if not used:
        return TablespaceProblems((), (), ())
    rows = dst.execute(_DEST_SQL, (list(used),)).fetchall()
    missing = tuple(str(r[0]) for r in rows if not r[1])
    no_create = tuple(str(r[0]) for r in rows if r[1] and not r[2] and r[0] != "pg_default")
    return TablespaceProblems(used, missing, no_create)
