"""Sequences and materialized views: the parts of a database that COPY does not carry.

Sequence values are read on the source and set on the destination (optionally plus a safety margin,
as a switchover wants). Materialized views populated on the source are refreshed on the destination.
"""

from __future__ import annotations

from psycopg import sql

from pgmigrator.log import get_logger
from pgmigrator.pg import Conn

log = get_logger("sequences")


def read_sequences(conn: Conn) -> dict[tuple[str, str], tuple[int, bool]]:
    seqs = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmigrator')"
        " AND n.nspname NOT LIKE 'pg\\_%'"
    ).fetchall()
    values: dict[tuple[str, str], tuple[int, bool]] = {}
    for schema, name in seqs:
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        if row is not None:
            values[(schema, name)] = (int(row[0]), bool(row[1]))
    return values


def sync_sequences(src: Conn, dst: Conn, margin: int = 0) -> int:
    """Set every destination sequence that exists on both sides to the source's value (+ margin)."""
    count = 0
    present = read_sequences(dst)
    for (schema, name), (value, called) in read_sequences(src).items():
        if (schema, name) not in present:
            continue
        target = value + margin if called or margin else value
        dst.execute(
            "SELECT setval(%s::regclass, %s, %s)",
            (sql.Identifier(schema, name).as_string(dst), target, called or margin > 0),
        )
        count += 1
    log.info("sequences synced", count=count, margin=margin)
    return count


def refresh_matviews(src: Conn, dst: Conn) -> int:
    rows = src.execute(
        "SELECT schemaname, matviewname FROM pg_matviews WHERE ispopulated ORDER BY 1, 2"
    ).fetchall()
    for schema, name in rows:
        dst.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
    return len(rows)
