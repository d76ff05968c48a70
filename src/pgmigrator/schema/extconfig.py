"""Extensions' configuration tables: the rows a user added to them.

``CREATE EXTENSION`` on the destination creates an extension's tables with the rows its script
inserts; a *configuration table* (``pg_extension_config_dump``: PostGIS's ``spatial_ref_sys``)
may also hold rows the user added, which pg_dump dumps with the data, selected by the condition
the extension registered (``extcondition``: ``WHERE srid NOT BETWEEN ...``). The clone leaves
extension members out of the copy and the publication (``CREATE EXTENSION`` makes them), so
those rows are copied here instead: in one destination transaction per table, the rows the
condition selects are deleted and copied again from the source (text COPY, by column name: the
two sides' extension versions may differ). The clone runs it after the data, the switchover
again while the source is fenced (they are not streamed).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pgmigrator.log import get_logger
from pgmigrator.pg import Conn

log = get_logger("schema")

_TABLES_SQL = """
SELECT e.extname, n.nspname, c.relname, coalesce(e.extcondition[s.i], '')
FROM pg_extension e CROSS JOIN LATERAL generate_subscripts(e.extconfig, 1) AS s(i)
JOIN pg_class c ON c.oid = e.extconfig[s.i] JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
ORDER BY 1, 2, 3
"""

_COLUMNS_SQL = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""


@dataclass(frozen=True, slots=True)
class ConfigTable:
    extension: str
    schema: str
    name: str
    condition: str  # the extension's WHERE clause selecting the user's rows ('': every row)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.extension}: {self.schema}.{self.name}"


def config_tables(conn: Conn) -> list[ConfigTable]:
    return [ConfigTable(str(e), str(s), str(n), str(c)) for e, s, n, c in conn.execute(_TABLES_SQL)]


def user_rows(conn: Conn, table: ConfigTable) -> int:
    """How many rows of ``table`` its extension's condition selects (the ones to copy)."""
    row = conn.execute(select_user_rows(table, sql.SQL("count(*)"))).fetchone()
    return int(row[0]) if row else 0


def sync_config_rows(src: Conn, dst: Conn) -> list[str]:
    """Give every configuration table on the destination the source's user rows; what was done."""
    done = []
    for table in config_tables(src):
        columns = shared_columns(src, dst, table)
        if not columns:
            log.warning(
                "extension configuration table missing on the destination", table=str(table)
            )
            done.append(f"{table}: missing on the destination, not copied")
            continue
        shared = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        with dst.transaction():
            dst.execute(
                sql.SQL("DELETE FROM ONLY {} {}").format(table.ident, sql.SQL(table.condition))
            )
            with (
                src.cursor().copy(
                    sql.SQL("COPY ({}) TO STDOUT").format(select_user_rows(table, shared))
                ) as out,
                dst.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, shared)
                ) as into,
            ):
                for data in out:
                    into.write(data)
            copied = user_rows(dst, table)
        log.info("extension configuration rows copied", table=str(table), rows=copied)
        done.append(f"{table}: {copied} row(s)")
    return done


def shared_columns(src: Conn, dst: Conn, table: ConfigTable) -> list[str]:
    """The table's columns on both sides, in the source's order (none: missing on ``dst``)."""
    theirs = set(columns(dst, table))
    return [c for c in columns(src, table) if c in theirs]


def select_user_rows(table: ConfigTable, what: sql.Composable) -> sql.Composed:
    """``SELECT what`` over the rows the extension's condition selects."""
    # The condition is the extension's own SQL, from the source's catalog, as pg_dump uses it.
    return sql.SQL("SELECT {} FROM ONLY {} {}").format(what, table.ident, sql.SQL(table.condition))


def columns(conn: Conn, table: ConfigTable) -> list[str]:
    """The table's copied columns on ``conn`` (none: it has no such table)."""
    name = table.ident.as_string(conn)
    return [str(r[0]) for r in conn.execute(_COLUMNS_SQL, (name,))]
