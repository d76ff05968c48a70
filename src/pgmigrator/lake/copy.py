"""The lake's initial copy: every selected table read under the slot's exported snapshot.

One source connection imports the snapshot (REPEATABLE READ, ``SET TRANSACTION SNAPSHOT`` first)
and runs ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` per table with ISO dates, UTC times and hex
bytea. Rows (one CopyData message each) are joined into chunks of ``batch_rows`` rows and parsed by
Arrow's CSV reader; the batches stream into one Iceberg append per table, committed together with
the slot's consistent LSN. A table is either fully in the lake at that LSN or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from psycopg import pq, sql

from pgmigrator.dsn import Target
from pgmigrator.errors import CopyError, sqlstate_is_retryable
from pgmigrator.lake.batch import csv_to_table
from pgmigrator.lake.types import LakeType, map_type
from pgmigrator.lake.writer import IcebergLake
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn
from pgmigrator.pipeline.copyworker import open_snapshot
from pgmigrator.source.catalog import TableInfo

log = get_logger("lake.copy")

_COLUMNS_SQL = """
SELECT a.attname::text, a.atttypid::int8, a.atttypmod
FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_SESSION = (
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
)


@dataclass
class CopyStats:
    tables: int = 0
    rows: int = 0


def source_columns(conn: Conn, table: TableInfo) -> list[tuple[str, LakeType]]:
    """The replicated columns of ``table`` (generated ones are not streamed) and their lake types."""
    rows = conn.execute(_COLUMNS_SQL, (table.oid,)).fetchall()
    return [(name, map_type(int(oid), int(typmod))) for name, oid, typmod in rows]


def copy_tables(
    source: Target,
    snapshot: str,
    lake: IcebergLake,
    tables: list[TableInfo],
    lsn: Lsn,
    batch_rows: int = 100_000,
) -> CopyStats:
    stats = CopyStats()
    conn = open_snapshot(source, snapshot)
    try:
        for statement in _SESSION:
            conn.execute(statement)
        for table in tables:
            columns = source_columns(conn, table)
            current = lake.create(table.schema, table.name, columns, changelog=False)
            lake.create(table.schema, table.name + "__changes", columns, changelog=True)
            counter = [0]
            batches = _batches(conn, table, columns, batch_rows, counter)
            lake.write_copy(current, batches, lsn)
            stats.tables += 1
            stats.rows += counter[0]
            log.info("table copied", table=table.qualified, rows=counter[0], lsn=str(lsn))
        conn.rollback()
    finally:
        conn.close()
    return stats


def _batches(
    conn: Conn,
    table: TableInfo,
    columns: list[tuple[str, LakeType]],
    batch_rows: int,
    counter: list[int],
) -> Iterator[pa.RecordBatch]:
    select = sql.SQL("COPY (SELECT {} FROM ONLY {}) TO STDOUT (FORMAT csv)").format(
        sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns), table.ident
    )
    chunk: list[memoryview] = []  # each its own buffer (one CopyData message: one row)
    pgconn = conn.pgconn  # the low-level COPY protocol: a quarter of the CPU of cursor.copy()
    pgconn.send_query(select.as_string(conn).encode())
    res = pgconn.get_result()
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        raise _copy_error(table, res)
    rows = 0
    while True:
        n, data = pgconn.get_copy_data(0)
        if n < 0:
            break
        chunk.append(data)
        rows += 1
        if rows == batch_rows:
            yield from _parse(chunk, columns, counter)
            chunk = []
            rows = 0
    res = pgconn.get_result()
    while pgconn.get_result() is not None:
        pass
    if res is None or res.status != pq.ExecStatus.COMMAND_OK:
        raise _copy_error(table, res)
    if chunk:
        yield from _parse(chunk, columns, counter)


def _copy_error(table: TableInfo, res: pq.abc.PGresult | None) -> CopyError:
    text = (res.error_message if res else b"no result").decode(errors="replace").strip()
    state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() if res else ""
    return CopyError(
        f"source COPY of {table.qualified} failed: {text}",
        retryable=sqlstate_is_retryable(state or None),
    )


def _parse(
    chunk: list[memoryview], columns: list[tuple[str, LakeType]], counter: list[int]
) -> Iterator[pa.RecordBatch]:
    counter[0] += len(chunk)
    if not columns:
        return
    yield from csv_to_table(b"".join(chunk), columns).to_batches()
