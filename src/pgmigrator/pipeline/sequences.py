"""Sequences and materialized views: the parts of a database that COPY does not carry.

Sequence values are read on the source and set on the destination (optionally plus a safety margin,
as a switchover wants). Materialized views populated on the source are refreshed on the destination.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgmigrator.errors import SchemaError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn

log = get_logger("sequences")


# Every sequence of the database's own schemas with its direction and bounds (pg_sequence).
_SEQUENCES_SQL = """
SELECT n.nspname, c.relname, s.seqincrement, s.seqmin, s.seqmax
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmigrator')
  AND n.nspname NOT LIKE 'pg\\_%'
"""


@dataclass(frozen=True, slots=True)
class SequenceState:
    value: int  # last_value
    called: bool  # is_called: whether nextval returns value + increment (or value itself)
    increment: int = 1
    minimum: int = 1
    maximum: int = 2**63 - 1

    def target(self, margin: int) -> tuple[int, bool]:
        """The destination's (value, is_called): the source's, moved ``margin`` increments'
        worth further in the sequence's own direction, within its bounds."""
        if not margin:
            return self.value, self.called
        step = margin if self.increment > 0 else -margin
        return max(self.minimum, min(self.maximum, self.value + step)), True


def read_sequences(conn: Conn) -> dict[tuple[str, str], SequenceState]:
    values: dict[tuple[str, str], SequenceState] = {}
    for schema, name, increment, minimum, maximum in conn.execute(_SEQUENCES_SQL).fetchall():
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        if row is not None:
            values[(schema, name)] = SequenceState(
                int(row[0]), bool(row[1]), int(increment), int(minimum), int(maximum)
            )
    return values


def sync_sequences(src: Conn, dst: Conn, margin: int = 0) -> int:
    """Set every destination sequence that exists on both sides to the source's value, plus
    ``margin`` in the sequence's direction (a descending one goes down), within its bounds."""
    count = 0
    present = read_sequences(dst)
    for (schema, name), state in read_sequences(src).items():
        if (schema, name) not in present:
            continue
        value, called = state.target(margin)
        qualified = sql.Identifier(schema, name).as_string(dst)
        try:
            dst.execute("SELECT setval(%s::regclass, %s, %s)", (qualified, value, called))
        except psycopg.Error as exc:
            raise SchemaError(
                f"could not set sequence {schema}.{name} to {value} on the destination:"
                f" {exc.diag.message_primary or str(exc).strip()}",
                hint="make the destination's sequence match the source's (type, bounds), then retry",
            ) from exc
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
