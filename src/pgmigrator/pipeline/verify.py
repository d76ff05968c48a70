"""``pgmigrator verify``: per table, row count and an order-independent checksum on both sides.

Each side computes ``count(*)`` and the sum of a 64-bit hash of every row's text form over the
columns both sides share (in name order), with identical session settings (UTC, ISO dates, full
float precision) so equal rows print equally. Sums are order-independent, computed in the server
(constant memory); both sides and several tables run in parallel, on connections reused from one
table to the next (a new pair per table cost more than checking thousands of small tables). Tables
with a single-column integer primary key and more than `CHUNK_ROWS` rows are checked in key ranges,
in parallel, and a difference names its ranges. `verify_live` first lines both sides up at one
point of the stream (see `verify_live`), for a source that is being written to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.errors import listed
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, ThreadConnections, connect
from pgmigrator.pipeline import largeobjects
from pgmigrator.pipeline.verify_live import (
    GROUP_TABLES,
    LineUp,
    LiveOptions,
    LivePoint,
    SessionPool,
    pipeline_tables,
)
from pgmigrator.schema import extconfig
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
_EVERY_ROW = sql.SQL("")


def _checksum_query(
    table: TableInfo,
    columns: Sequence[str],
    sample: bool = False,
    where: sql.Composable = _EVERY_ROW,
) -> sql.Composed:
    """Count every row; checksum every row, or (``sample``) a deterministic 1-in-16 subset by
    content; ``where`` (`` WHERE ...``) restricts both to a key range."""
    row = _row_text(columns)
    if sample:
        return sql.SQL(
            "SELECT count(*), coalesce(sum(h) FILTER (WHERE h % {} = 0), 0)::text"
            " FROM (SELECT hashtextextended({}, 0) AS h FROM ONLY {}{}) s"
        ).format(sql.Literal(SAMPLE_ONE_IN), row, table.ident, where)
    return sql.SQL("SELECT {} FROM ONLY {}{}").format(_count_and_sum(row), table.ident, where)


def _row_text(columns: Sequence[str]) -> sql.Composable:
    """A row's text form over ``columns`` (in that order), what the checksum hashes."""
    if not columns:
        return sql.SQL("''")
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))


def _count_and_sum(row: sql.Composable) -> sql.Composed:
    return sql.SQL("count(*), coalesce(sum(hashtextextended({}, 0)), 0)::text").format(row)


def _dest_columns(dst: Conn) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(t.schema, t.name): t.columns for t in catalog.list_tables(dst)}


#: Tables with more rows than this (estimated) and a single-column integer primary key are
#: checked in key ranges of about this many rows: in parallel, and a difference names its range.
CHUNK_ROWS = 1_000_000
_INT_KEY = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s AND i.indisprimary AND i.indnatts = 1
  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
"""


@dataclass(frozen=True, slots=True)
class _Part:
    """One query of a table's check: the whole table, or one key range of it."""

    job: int  # index of the table in the run
    label: str  # "" (whole table) or the range, e.g. "id in [1000, 2000)"
    query: sql.Composed


def key_ranges(lo: int, hi: int, parts: int) -> list[tuple[int | None, int | None]]:
    """``parts`` consecutive ranges over ``[lo, hi]``, the first and last open-ended (a row the
    other side has outside the source's bounds still falls in one)."""
    parts = max(1, min(parts, hi - lo + 1))
    step = -(-(hi - lo + 1) // parts)
    bounds = [lo + i * step for i in range(1, parts)]
    return list(zip([None, *bounds], [*bounds, None], strict=True))


def _parts(
    src: Conn, job: int, table: TableInfo, columns: Sequence[str], sample: bool, chunk_rows: int
) -> list[_Part]:
    whole = [_Part(job, "", _checksum_query(table, columns, sample))]
    if table.est_rows <= chunk_rows:
        return whole
    row = src.execute(_INT_KEY, (table.oid,)).fetchone()
    if row is None:
        return whole
    key = sql.Identifier(str(row[0]))
    bounds = src.execute(
        sql.SQL("SELECT min({}), max({}) FROM ONLY {}").format(key, key, table.ident)
    ).fetchone()
    if bounds is None or bounds[0] is None:
        return whole
    ranges = key_ranges(int(bounds[0]), int(bounds[1]), -(-table.est_rows // chunk_rows))
    if len(ranges) < 2:
        return whole
    out = []
    for lo, hi in ranges:
        conds = [sql.SQL("{} >= {}").format(key, lo)] if lo is not None else []
        conds += [sql.SQL("{} < {}").format(key, hi)] if hi is not None else []
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
        out.append(
            _Part(job, _label(str(row[0]), lo, hi), _checksum_query(table, columns, sample, where))
        )
    return out


def _label(key: str, lo: int | None, hi: int | None) -> str:
    if lo is None:
        return f"{key} < {hi}"
    return f"{key} >= {lo}" if hi is None else f"{key} in [{lo}, {hi})"


def verify(
    source: Target,
    dest: Target,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    workers: int = 2,
    sample: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    large_objects: bool = False,
) -> list[TableCheck]:
    """Check every selected table, each side read when its turn comes (a quiet source); with
    ``large_objects``, the source's large objects as well (a line of their own)."""
    tables, shared, parts = _plan(source, dest, include, exclude, sample, chunk_rows)
    with ThreadConnections(source) as on_source, ThreadConnections(dest) as on_dest:
        results = _run(
            parts,
            lambda q: _sums(on_source.get(), q),
            lambda q: _sums(on_dest.get(), q),
            workers,
        )
        checks = [_check(t, shared[i], results.get(i, [])) for i, t in enumerate(tables)]
        checks += _extension_rows(on_source.get(), on_dest.get())
        if large_objects:
            checks += _large_objects(on_source.get(), on_dest.get())
    return checks


def _extension_rows(src: Conn, dst: Conn) -> list[TableCheck]:
    """A line for each extension configuration table with user rows on either side (their rows
    are copied by the clone and the switchover, not streamed)."""
    out = []
    for table in extconfig.config_tables(src):
        columns = extconfig.shared_columns(src, dst, table)
        if not columns:
            rows, total = _user_row_sums(src, table, extconfig.columns(src, table))
            out.append(
                TableCheck(
                    str(table), rows, None, str(total), None, "missing", "not on the destination"
                )
            )
            continue
        s_rows, s_sum = _user_row_sums(src, table, columns)
        d_rows, d_sum = _user_row_sums(dst, table, columns)
        if s_rows or d_rows:
            same = (s_rows, s_sum) == (d_rows, d_sum)
            status, detail = ("ok", "user rows") if same else ("differs", "user rows differ")
            out.append(
                TableCheck(str(table), s_rows, d_rows, str(s_sum), str(d_sum), status, detail)
            )
    return out


def _user_row_sums(
    conn: Conn, table: extconfig.ConfigTable, columns: Sequence[str]
) -> tuple[int, int]:
    what = _count_and_sum(_row_text(columns))
    return _sums(conn, extconfig.select_user_rows(table, what))


LARGE_OBJECTS = "(large objects)"


def _large_objects(src: Conn, dst: Conn) -> list[TableCheck]:
    """One line for the large objects: those of the source, equal on the destination."""
    found = largeobjects.compare(src, dst)
    if not (found.source or found.dest):
        return []
    extra = f"; {found.dest_only} on the destination only" if found.dest_only else ""
    status, detail = "ok", extra.lstrip("; ")
    if found.differing:
        shown = listed([str(o) for o in found.differing])
        status, detail = "differs", f"{len(found.differing)} missing or different: {shown}{extra}"
    return [
        TableCheck(
            LARGE_OBJECTS,
            found.source,
            found.dest,
            found.source_sum,
            found.dest_sum,
            status,
            detail,
        )
    ]


def verify_live(
    source: Target,
    dest: Target,
    options: LiveOptions,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    workers: int = 2,
    chunk_rows: int = CHUNK_ROWS,
    group_tables: int = GROUP_TABLES,
) -> tuple[list[TableCheck], LivePoint]:
    """Check the pipeline's selected tables with both sides lined up at one point (see
    `verify_live`), ``group_tables`` tables at a time; tables the pipeline does not replicate
    cannot be lined up and are left out."""
    held = pipeline_tables(dest, options.pipeline)
    tables, shared, parts = _plan(
        source, dest, include, exclude, False, chunk_rows, lambda t: (t.schema, t.name) in held
    )
    jobs = [i for i in range(len(tables)) if shared[i] is not None]
    if not jobs:
        return [_check(t, None, []) for t in tables], LivePoint(Lsn(0), 0.0)
    size = max(1, workers)
    results: dict[int, list[_Result]] = {}
    points: list[LivePoint] = []
    with contextlib.ExitStack() as stack:
        on_source = SessionPool(source, size)
        stack.callback(on_source.close)
        on_dest = SessionPool(dest, size)
        stack.callback(on_dest.close)
        lined = stack.enter_context(LineUp(source, dest, options, on_source, on_dest))
        for start in range(0, len(jobs), group_tables):
            group = set(jobs[start : start + group_tables])
            points.append(lined.group([tables[i] for i in sorted(group)]))
            mine = [p for p in parts if p.job in group]
            results.update(
                _run(mine, lambda q: _pooled(on_source, q), lambda q: _pooled(on_dest, q), size)
            )
            on_source.release()
            on_dest.release()
    point = LivePoint(points[-1].lsn, max(p.paused_s for p in points), len(points))
    return [_check(t, shared[i], results.get(i, [])) for i, t in enumerate(tables)], point


_Result = tuple[str, tuple[int, int] | str, tuple[int, int] | str]  # label, source, destination


def _plan(
    source: Target,
    dest: Target,
    include: Sequence[str],
    exclude: Sequence[str],
    sample: bool,
    chunk_rows: int,
    keep: Callable[[TableInfo], bool] = lambda t: True,
) -> tuple[list[TableInfo], list[tuple[str, ...] | None], list[_Part]]:
    """The selected tables (those ``keep`` keeps), the columns each shares with its destination
    table (None: no such table) and the queries that check them."""
    with connect(source) as src, connect(dest) as dst:
        selected = [
            t for t in catalog.select(catalog.list_tables(src), include, exclude) if t.has_data
        ]
        tables = [t for t in selected if keep(t)]
        if len(tables) < len(selected):
            log.info(
                "tables left out: not replicated by the pipeline",
                tables=listed([t.qualified for t in selected if not keep(t)]),
            )
        dest_cols = _dest_columns(dst)
        shared: list[tuple[str, ...] | None] = []
        parts: list[_Part] = []
        for job, table in enumerate(tables):
            theirs = dest_cols.get((table.schema, table.name))
            cols = None if theirs is None else tuple(sorted(set(table.columns) & set(theirs)))
            shared.append(cols)
            if cols is not None:
                parts += _parts(src, job, table, cols, sample, chunk_rows)
    return tables, shared, parts


def _run(
    parts: list[_Part],
    on_source: Callable[[sql.Composed], tuple[int, int]],
    on_dest: Callable[[sql.Composed], tuple[int, int]],
    workers: int,
) -> dict[int, list[_Result]]:
    """Run every part on both sides, ``workers`` queries a side at a time."""
    with ThreadPoolExecutor(max_workers=2 * max(1, workers)) as pool:
        done = [
            (part, pool.submit(on_source, part.query), pool.submit(on_dest, part.query))
            for part in parts
        ]
        results: dict[int, list[_Result]] = {}
        for part, fs, fd in done:
            results.setdefault(part.job, []).append((part.label, _outcome(fs), _outcome(fd)))
    return results


def _sums(conn: Conn, query: sql.Composed) -> tuple[int, int]:
    """(count, checksum) of ``query`` on ``conn``."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _pooled(pool: SessionPool, query: sql.Composed) -> tuple[int, int]:
    with pool.borrow() as conn:
        return _sums(conn, query)


def _outcome(future: Future[tuple[int, int]]) -> tuple[int, int] | str:
    """The (count, sum) a side computed, or its error's first line."""
    try:
        return future.result()
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check(
    table: TableInfo,
    columns: tuple[str, ...] | None,
    parts: list[_Result],
) -> TableCheck:
    if columns is None:
        return TableCheck(
            table.qualified, None, None, None, None, "missing", "table absent on the destination"
        )
    errors = [r for _, s, d in parts for r in (s, d) if isinstance(r, str)]
    if errors:
        return TableCheck(table.qualified, None, None, None, None, "error", errors[0])
    sides = [(s, d) for _, s, d in parts if not isinstance(s, str) and not isinstance(d, str)]
    s_rows, d_rows = sum(s[0] for s, _ in sides), sum(d[0] for _, d in sides)
    s_sum, d_sum = str(sum(s[1] for s, _ in sides)), str(sum(d[1] for _, d in sides))
    missing = set(table.columns) - set(columns)
    differ = [label for label, s, d in parts if s != d]
    if not differ and not missing:
        return TableCheck(table.qualified, s_rows, d_rows, s_sum, d_sum, "ok")
    if missing:
        detail = f"columns missing on the destination: {', '.join(sorted(missing))}"
    elif s_rows != d_rows:
        detail = f"row count {s_rows} vs {d_rows}"
    else:
        detail = "same row count, different contents"
    ranges = [label for label in differ if label]  # checked in key ranges: say which differ
    if ranges:
        shown = ", ".join(ranges[:3]) + (f" and {len(ranges) - 3} more" if len(ranges) > 3 else "")
        detail += f" ({shown})"
    return TableCheck(table.qualified, s_rows, d_rows, s_sum, d_sum, "differs", detail)


def render(checks: Sequence[TableCheck]) -> str:
    width = max([len(c.table) for c in checks] + [5])
    lines = [f"{'table':<{width}}  {'status':<8} {'source rows':>12} {'dest rows':>12}  detail"]
    for c in checks:
        lines.append(
            f"{c.table:<{width}}  {c.status:<8} {_n(c.source_rows):>12} {_n(c.dest_rows):>12}  {c.detail}"
        )
    bad = sum(c.status != "ok" for c in checks)
    what = f"{sum(c.table != LARGE_OBJECTS for c in checks)} table(s)"
    if any(c.table == LARGE_OBJECTS for c in checks):
        what += " and the large objects"
    lines.append(f"{what} checked, {bad} differ" if bad else f"{what} checked, all equal")
    return "\n".join(lines)


def summary(checks: Sequence[TableCheck]) -> str:
    """The outcome in a few words: ``all 15 tables equal`` or ``2 of 15 tables differ: ...``."""
    bad = [c.table for c in checks if c.status != "ok"]
    if bad:
        return f"{len(bad)} of {len(checks)} tables differ: {listed(bad)}"
    return f"all {len(checks)} tables equal"


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
