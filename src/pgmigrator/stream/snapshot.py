"""Existing rows as ``op: "r"`` events, read under the slot's exported snapshot (no gap, no overlap).

The connection imports the snapshot right after the slot is created (DESIGN.md rule 1), then
reads every published table with ``COPY ... TO STDOUT`` in text format, in batches of rows handed
to the event loop one at a time (memory stays bounded; the bus's backpressure paces the reading).
Changes then stream from the slot's consistent point: exactly the transactions the snapshot does
not contain. Snapshot event ids are ``<consistent LSN>:r<n>``.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass

from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, server_major
from pgmigrator.pipeline.copyworker import open_snapshot
from pgmigrator.sinks.base import Event
from pgmigrator.stream.encode import ColumnSpec, TableCodec
from pgmigrator.stream.filters import Filters

_TABLES_SQL = """
SELECT pt.schemaname::text, pt.tablename::text,
       array_agg(a.attname::text ORDER BY a.attnum),
       array_agg(a.atttypid::int8 ORDER BY a.attnum),
       array_agg((c.relreplident = 'f' OR EXISTS (
           SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey)
             AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
       )) ORDER BY a.attnum)
FROM pg_publication_tables pt
JOIN pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = '' {column_list}
WHERE pt.pubname = %s
GROUP BY 1, 2
ORDER BY 1, 2
"""

_ESCAPES = {
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
    b"\\": b"\\",
}
_ESCAPE_RE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")


def _unescape_match(m: re.Match[bytes]) -> bytes:
    code = m.group(1)
    if code in _ESCAPES:
        return _ESCAPES[code]
    if code[:1] == b"x" and len(code) > 1:
        return bytes([int(code[1:], 16)])
    if code[:1].isdigit():
        return bytes([int(code, 8) & 0xFF])
    return code


def copy_fields(line: bytes) -> list[bytes | None]:
    """One line of ``COPY ... TO STDOUT`` text format as raw text values (None for NULL)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    return [
        None if f == b"\\N" else (_ESCAPE_RE.sub(_unescape_match, f) if b"\\" in f else f)
        for f in line.split(b"\t")
    ]


@dataclass(frozen=True, slots=True)
class SnapshotTable:
    schema: str
    name: str
    columns: tuple[ColumnSpec, ...]


def published_tables(conn: Conn, publication: str) -> list[SnapshotTable]:
    column_list = "AND a.attname = ANY(pt.attnames)" if server_major(conn) >= 15 else ""
    rows = conn.execute(_TABLES_SQL.format(column_list=column_list), (publication,)).fetchall()
    return [
        SnapshotTable(
            r[0],
            r[1],
            tuple(ColumnSpec(n, int(t), bool(k)) for n, t, k in zip(r[2], r[3], r[4], strict=True)),
        )
        for r in rows
    ]


class SnapshotReader:
    """Reads the published tables under ``snapshot``; call `open` while the slot's session is idle."""

    def __init__(self, source: Target, publication: str, filters: Filters, db: str) -> None:
        self.source = source
        self.publication = publication
        self.filters = filters
        self.db = db
        self.conn: Conn | None = None
        self.rows = 0
        self.tables: list[SnapshotTable] = []

    def open(self, snapshot: str) -> None:
        self.conn = open_snapshot(self.source, snapshot)
        tables = published_tables(self.conn, self.publication)
        self.tables = [t for t in tables if self.filters.table_allowed(t.schema, t.name)]

    def batches(
        self, consistent: Lsn, batch_rows: int = 1000, batch_bytes: int = 8 << 20
    ) -> Generator[list[Event], None, None]:
        """Event batches, table after table; run each step in a worker thread (blocking I/O)."""
        assert self.conn is not None, "open() first"
        prefix = f"{consistent}:r"
        for table in self.tables:
            rules = self.filters.columns(table.schema, table.name, [c.name for c in table.columns])
            codec = TableCodec(
                self.db, table.schema, table.name, table.columns, rules.drop, rules.mask
            )
            source = codec.source(str(consistent), None, None)
            insert = codec.insert
            query = sql.SQL("COPY {} ({}) TO STDOUT").format(
                sql.Identifier(table.schema, table.name),
                sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
            )
            batch: list[Event] = []
            size = 0
            with self.conn.cursor().copy(query) as copy:
                while data := copy.read():
                    values = copy_fields(bytes(data))
                    self.rows += 1
                    eid = f"{prefix}{self.rows}"
                    event = insert(values, eid, consistent, source, "r")
                    batch.append(event)
                    size += len(event.body)
                    if len(batch) >= batch_rows or size >= batch_bytes:
                        yield batch
                        batch, size = [], 0
            if batch:
                yield batch

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
