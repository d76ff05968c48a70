"""Copy planning (pure): which chunks to copy, in which order, with which COPY statements.

Tables above a size threshold are split into ranges of heap blocks (``ctid`` range scans, PG 14+);
the last range is open-ended so rows in blocks added after sizing are still copied. Chunks are
ordered largest first so the longest copies start early.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from pgmigrator.pipeline.copyworker import ChunkTask
from pgmigrator.source.catalog import TableInfo

BLOCK_SIZE = 8192
Range = tuple[int | None, int | None]


def block_ranges(
    size_bytes: int, threshold_bytes: int, chunk_bytes: int, block_size: int = BLOCK_SIZE
) -> list[Range]:
    """``[(None, None)]`` for a whole table, else consecutive ``[lo, hi)`` block ranges, last one open."""
    if size_bytes <= threshold_bytes or chunk_bytes <= 0:
        return [(None, None)]
    blocks = max(1, size_bytes // block_size)
    per_chunk = max(1, chunk_bytes // block_size)
    count = max(2, -(-blocks // per_chunk))
    step = -(-blocks // count)
    ranges: list[Range] = [(i * step, (i + 1) * step) for i in range(count - 1)]
    ranges.append(((count - 1) * step, None))
    return ranges


def _format(table: TableInfo) -> sql.SQL:
    """Binary COPY, or text for a table with a type that has no binary I/O (contrib's ``isn``
    and ``seg`` types: binary COPY of them fails)."""
    return sql.SQL("binary" if table.binary else "text")


def copy_out_sql(table: TableInfo, lo: int | None, hi: int | None) -> sql.Composable:
    if lo is None and hi is None:
        return sql.SQL("COPY {} ({}) TO STDOUT (FORMAT {})").format(
            table.ident, table.column_list(), _format(table)
        )
    conds = []
    if lo is not None:
        conds.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({lo},0)")))
    if hi is not None:
        conds.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({hi},0)")))
    return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT (FORMAT {})").format(
        table.column_list(), table.ident, sql.SQL(" AND ").join(conds), _format(table)
    )


def copy_in_sql(table: TableInfo, freeze: bool = False) -> sql.Composable:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {}{})").format(
        table.ident, table.column_list(), _format(table), sql.SQL(", FREEZE" if freeze else "")
    )


def truncate_sql(table: TableInfo) -> sql.Composable:
    """Empties the destination table in a chunk's transaction, so that its COPY may FREEZE.

    TRUNCATE needs an ACCESS EXCLUSIVE lock where COPY needs only ROW EXCLUSIVE: a session that
    merely reads the table would make it wait, so it gives up after a moment (then the chunk
    loads without FREEZE).
    """
    return sql.SQL(
        "SET LOCAL lock_timeout = '2s'; TRUNCATE ONLY {}; SET LOCAL lock_timeout = DEFAULT"
    ).format(table.ident)


def estimate_chunk_bytes(
    table: TableInfo, lo: int | None, hi: int | None, block_size: int = BLOCK_SIZE
) -> int:
    if lo is None and hi is None:
        return table.size_bytes
    end = hi if hi is not None else max(table.size_bytes // block_size, (lo or 0) + 1)
    return max(0, end - (lo or 0)) * block_size


def order_tasks(items: Sequence[tuple[int, ChunkTask]]) -> list[ChunkTask]:
    """Largest estimated chunk first; ties keep a stable, readable order."""
    return [
        task
        for _, task in sorted(
            items, key=lambda it: (-it[0], it[1].schema, it[1].table, it[1].chunk)
        )
    ]
