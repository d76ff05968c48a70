"""Post-data that can be built as soon as its table is copied, arranged to build in parallel.

A table's indexes, keys and checks depend on that table only, so they start while other tables
still copy; foreign keys, triggers and index attachments wait for the end. ``CREATE INDEX`` takes
a SHARE lock, so several can build on one table at once, but pg_dump's ``ALTER TABLE ... ADD
PRIMARY KEY`` takes ACCESS EXCLUSIVE and would queue them behind each other. A primary key or
unique constraint is therefore built as ``CREATE UNIQUE INDEX`` beside the table's other indexes,
then attached with ``ADD CONSTRAINT ... USING INDEX``, which only updates the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pgmigrator.pg import Conn
from pgmigrator.schema.dump import Entry, Script

KINDS = frozenset({"INDEX", "CONSTRAINT"})


@dataclass(frozen=True, slots=True)
class Step:
    entry: Entry  # the dump entry this step belongs to
    sql: str
    completes: bool  # this step's commit marks the entry done


@dataclass(frozen=True, slots=True)
class TablePlan:
    builds: tuple[Step, ...]  # run in parallel
    then: tuple[Step, ...]  # run one by one after every build succeeded


# Owners of indexes and of table constraints, and how to rebuild a key as index + USING INDEX.
# search_path is empty while it runs so that pg_get_indexdef qualifies every name.
_OWNERS_SQL = """
SELECT n.nspname, ic.relname, tn.nspname, t.relname, NULL, NULL, NULL, false, false, NULL
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE t.relkind = 'r'
UNION ALL
SELECT n.nspname, t.relname || ' ' || con.conname, n.nspname, t.relname, con.contype, con.conname,
       CASE WHEN con.contype IN ('p', 'u') THEN pg_get_indexdef(con.conindid) END,
       con.condeferrable, con.condeferred, (SELECT relname FROM pg_class WHERE oid = con.conindid)
FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind = 'r' AND con.contype IN ('p', 'u', 'x', 'c')
"""
_UNIQUE_PREFIX = "CREATE UNIQUE INDEX "
_FK_SIZES_SQL = """
SELECT n.nspname, t.relname || ' ' || con.conname, t.reltuples, r.reltuples
FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_class r ON r.oid = con.confrelid
WHERE con.contype = 'f'
"""


def fk_checks_by_index(src: Conn, script: Script) -> set[int]:
    """Foreign keys (entry seqs) whose validation should probe the referenced key's index.

    Only for a clone that does not ANALYZE its tables (``copy.analyze: false``). The check is an
    anti-join of the referencing rows against the referenced ones; without statistics
    PostgreSQL 15 hashes the referenced side: right for a small referenced table, slow for a big
    one (5M keys against 1M rows: 2.4 s, where probing the unique index took 1.1 s). So the
    planner is steered to index probes when the source's statistics say the referenced table
    holds more rows than the referencing one. With statistics it finds the merge anti-join
    itself, which beats both.
    """
    sizes = {(r[0], r[1]): (float(r[2]), float(r[3])) for r in src.execute(_FK_SIZES_SQL)}
    out = set()
    for entry in script.entries:
        if entry.kind != "FK CONSTRAINT":
            continue
        referencing, referenced = sizes.get((entry.schema, entry.name), (-1.0, -1.0))
        if 0 <= referencing < referenced:
            out.add(entry.seq)
    return out


def plan_by_table(src: Conn, script: Script) -> dict[tuple[str, str], TablePlan]:
    """The early post-data of every table that has some, keyed by (schema, table)."""
    with src.transaction():
        src.execute("SET LOCAL search_path = ''")
        rows = src.execute(_OWNERS_SQL).fetchall()
    owners = {(r[0], r[1]): r for r in rows}
    builds: dict[tuple[str, str], list[Step]] = {}
    then: dict[tuple[str, str], list[Step]] = {}
    for entry in script.entries:
        row = owners.get((entry.schema, entry.name)) if entry.kind in KINDS else None
        if row is None:
            continue
        table = (row[2], row[3])
        if entry.kind == "INDEX":
            builds.setdefault(table, []).append(Step(entry, entry.sql, True))
            continue
        split = _key_as_index(entry, row, src)
        if split is None:
            then.setdefault(table, []).append(Step(entry, entry.sql, True))
        else:
            builds.setdefault(table, []).append(split[0])
            then.setdefault(table, []).append(split[1])
    return {
        table: TablePlan(tuple(builds.get(table, ())), tuple(then.get(table, ())))
        for table in builds.keys() | then.keys()
    }


def _key_as_index(entry: Entry, row: tuple[object, ...], conn: Conn) -> tuple[Step, Step] | None:
    """A primary key or unique constraint as (build its index, attach it); None for other kinds."""
    contype, conname, indexdef, index_name = row[4], row[5], row[6], row[9]
    if contype not in ("p", "u") or not isinstance(indexdef, str) or not isinstance(conname, str):
        return None
    if not indexdef.startswith(_UNIQUE_PREFIX) or not isinstance(index_name, str):
        return None
    settings = "".join(line + "\n" for line in entry.sql.splitlines() if line.startswith("SET "))
    build = settings + "CREATE UNIQUE INDEX IF NOT EXISTS " + indexdef[len(_UNIQUE_PREFIX) :]
    attach = sql.SQL("ALTER TABLE ONLY {} ADD CONSTRAINT {} {} USING INDEX {}{}").format(
        sql.Identifier(str(row[2]), str(row[3])),
        sql.Identifier(conname),
        sql.SQL("PRIMARY KEY" if contype == "p" else "UNIQUE"),
        sql.Identifier(index_name),
        sql.SQL((" DEFERRABLE" if row[7] else "") + (" INITIALLY DEFERRED" if row[8] else "")),
    )
    return Step(entry, build, False), Step(entry, attach.as_string(conn), True)
