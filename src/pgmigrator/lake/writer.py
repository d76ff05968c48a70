"""The Iceberg side of the lake: a pyiceberg SQL catalog, two tables per source table, LSN commits.

For source table ``schema.name`` the lake holds, in namespace ``schema``:

- ``name``: the current state (the initial copy, then merged changes);
- ``name__changes``: the change log (every change with ``_op``, ``_lsn``, ``_seq``, ``_commit_time``).

Every commit to either table is one catalog transaction that also sets the table property
``pgmigrator.lsn`` (and the snapshot summary field of the same name) to the end LSN of the last
source transaction it contains. That LSN is what makes a restart exactly-once: changes of
transactions committed before it are skipped for that table.

The merge into the current state is *delete + append* in one transaction: rows whose key was
touched in the batch are deleted by a key filter (copy-on-write rewrite of the data files holding
them), then the batch's last image of every surviving key is appended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
)
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThanOrEqual,
    Or,
)
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import IntegerType, LongType, NestedField, StringType, TimestamptzType
from sqlalchemy.exc import SQLAlchemyError

from pgmigrator.lake.batch import META_COLUMNS, ChangeBuffer, Position
from pgmigrator.lake.types import LakeError, LakeType, RetryableLakeError, from_iceberg
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn

log = get_logger("lake")
LSN_PROPERTY = "pgmigrator.lsn"
PARTIAL_PROPERTY = "pgmigrator.partial"  # "<commit LSN>:<seq>" of a transaction written in pieces
CHANGES_SUFFIX = "__changes"
_IN: Any = In  # pydantic models: their positional constructors confuse the type checker
_EQ: Any = EqualTo
_OR: Any = Or  # Or(a, b, *rest) builds a balanced tree
_GE: Any = GreaterThanOrEqual
_LE: Any = LessThanOrEqual
_META_TYPES = (StringType(), LongType(), IntegerType(), TimestamptzType())

Columns = list[tuple[str, LakeType]]


def open_catalog(warehouse: Path, catalog_url: str | None) -> Catalog:
    """A SQL catalog: a SQLite file in the warehouse unless ``catalog_url`` (SQLAlchemy) says else."""
    try:
        warehouse.mkdir(parents=True, exist_ok=True)
        uri = catalog_url or f"sqlite:///{warehouse / 'catalog.db'}"
        for attempt in (1, 2):
            try:
                return SqlCatalog("pgmigrator", uri=uri, warehouse=warehouse.resolve().as_uri())
            except SQLAlchemyError as exc:
                # another process created the catalog's tables between pyiceberg's check and its
                # CREATE: they exist now, so opening again works
                if attempt == 2 or "already exists" not in str(exc):
                    raise
        raise AssertionError("unreachable")
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise LakeError(
            f"cannot open the Iceberg catalog: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            hint="--catalog takes a SQLAlchemy URL (sqlite:///path/catalog.db, postgresql+psycopg://...); --warehouse a writable folder",
        ) from exc


class IcebergLake:
    def __init__(self, warehouse: Path, catalog_url: str | None = None) -> None:
        self.warehouse = warehouse
        self.catalog = open_catalog(warehouse, catalog_url)
        self._tables: dict[tuple[str, str], Table] = {}

    # -- tables ------------------------------------------------------------------------------

    def load(self, namespace: str, name: str) -> Table | None:
        cached = self._tables.get((namespace, name))
        if cached is not None:
            return cached
        try:
            table = self.catalog.load_table((namespace, name))
        except NoSuchTableError:
            return None
        self._tables[(namespace, name)] = table
        return table

    def create(self, namespace: str, name: str, columns: Columns, *, changelog: bool) -> Table:
        """Create the table (and its namespace) for these source columns; replaces nothing."""
        fields = [
            NestedField(i, n, t.iceberg, required=False) for i, (n, t) in enumerate(columns, 1)
        ]
        if changelog:
            for j, (n, t) in enumerate(zip(META_COLUMNS, _META_TYPES, strict=True)):
                fields.append(NestedField(len(columns) + j + 1, n, t, required=False))
        with contextlib.suppress(NamespaceAlreadyExistsError):
            self.catalog.create_namespace(namespace)
        table = self.catalog.create_table((namespace, name), schema=Schema(*fields))
        self._tables[(namespace, name)] = table
        log.info("table created", table=f"{namespace}.{name}", columns=len(fields))
        return table

    def drop(self, namespace: str, name: str) -> bool:
        self._tables.pop((namespace, name), None)
        try:
            self.catalog.drop_table((namespace, name))
        except NoSuchTableError:
            return False
        return True

    @staticmethod
    def columns(table: Table) -> Columns:
        """The table's data columns (change-log metadata columns left out) and their conversions."""
        return [
            (f.name, from_iceberg(f.field_type))
            for f in table.schema().fields
            if f.name not in META_COLUMNS
        ]

    @staticmethod
    def stored_lsn(table: Table) -> Lsn | None:
        value = table.properties.get(LSN_PROPERTY)
        return Lsn.parse(value) if value else None

    @classmethod
    def position(cls, table: Table) -> Position | None:
        lsn = cls.stored_lsn(table)
        if lsn is None:
            return None
        partial = table.properties.get(PARTIAL_PROPERTY) or ""
        if ":" not in partial:
            return Position(lsn)
        at, _, seq = partial.partition(":")
        return Position(lsn, Lsn.parse(at), int(seq))

    def add_columns(self, table: Table, wanted: Sequence[tuple[str, LakeType]]) -> bool:
        """Schema evolution: add source columns the table does not have yet (nullable)."""
        have = set(table.schema().column_names)
        missing = [(n, t) for n, t in wanted if n not in have]
        if not missing:
            return False
        with table.update_schema() as update:
            for n, t in missing:
                update.add_column(n, t.iceberg)
        log.info("columns added", table=".".join(table.name()), columns=[n for n, _ in missing])
        return True

    # -- commits -----------------------------------------------------------------------------

    def write_copy(self, table: Table, batches: Iterator[pa.RecordBatch], lsn: Lsn) -> None:
        """The initial copy of one table: every batch and the LSN in one catalog commit."""
        schema = _arrow_schema(self.columns(table))
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        props = _properties(Position(lsn))
        with _committing(table), table.transaction() as tx:
            tx.append(reader, snapshot_properties=props)
            tx.set_properties(props)

    def append_changes(self, table: Table, buf: ChangeBuffer, pos: Position) -> int:
        """Append the buffered changes the change log does not hold yet; returns rows appended."""
        stored = self.position(table) or Position(0)
        rows = buf.changelog(self.columns(table), stored)
        props = _properties(pos)
        with _committing(table), table.transaction() as tx:
            if rows.num_rows:
                tx.append(rows.cast(_arrow_schema(self.columns(table), changelog=True)), props)
            tx.set_properties(props)
        return int(rows.num_rows)

    def merge(self, table: Table, buf: ChangeBuffer, key: Sequence[str], pos: Position) -> None:
        """Apply the buffer's net effect to the current-state table (delete + append, one commit).

        The buffer holds only changes this table does not have (the stream skipped the others).
        """
        columns = self.columns(table)
        types = dict(columns)
        props = _properties(pos)
        upserts = buf.upserts(columns).cast(_arrow_schema(columns))
        with _committing(table), table.transaction() as tx:
            if buf.truncated:  # the table is empty before what the buffer holds
                tx.delete(AlwaysTrue(), props)
            elif key and buf.net:
                touched = buf.touched_keys([(k, types[k]) for k in key])
                condition = key_filter(_present(table, touched, types))
                if condition is not None:
                    tx.delete(condition, props)
            if upserts.num_rows:
                tx.append(upserts, props)
            tx.set_properties(props)


_PRUNABLE = frozenset({"int", "string", "date", "timestamp", "timestamptz", "decimal"})


def _present(table: Table, touched: pa.Table, types: dict[str, LakeType]) -> pa.Table:
    """The touched keys that exist in the table (a single-column key: one vectorised scan).

    A delete filter costs time per literal, and most keys of an insert-heavy batch are new: read
    the key column within the batch's key range (files outside it are pruned by their column
    bounds) and keep only the keys found. Composite keys are left as they are.
    """
    if touched.num_columns != 1 or touched.num_rows < 64:
        return touched
    name = touched.column_names[0]
    if types[name].kind not in _PRUNABLE or table.current_snapshot() is None:
        return touched
    column = touched.column(0)
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None:
        return touched
    in_range = And(_GE(name, low), _LE(name, high))
    have = table.scan(row_filter=in_range, selected_fields=(name,)).to_arrow().column(name)
    return touched.filter(pc.is_in(column, value_set=have.combine_chunks()))


def _properties(pos: Position) -> dict[str, str]:
    partial = f"{Lsn(pos.partial_lsn)}:{pos.partial_seq}" if pos.partial_lsn else ""
    return {LSN_PROPERTY: str(Lsn(pos.lsn)), PARTIAL_PROPERTY: partial}


def key_filter(keys: pa.Table) -> BooleanExpression | None:
    """A filter matching exactly these key values.

    One column: runs of consecutive integers become ranges (a bulk UPDATE ... WHERE id BETWEEN
    gives a handful of predicates, not 100k literals: each literal costs time when the filter is
    bound), the rest one IN. Several columns: an OR of ANDs. OR trees are balanced.
    """
    if keys.num_rows == 0:
        return None
    names = keys.column_names
    terms: list[BooleanExpression] = []
    if len(names) == 1:
        values = [v for v in set(keys.column(0).to_pylist()) if v is not None]
        singles: list[Any] = values
        if values and all(type(v) is int for v in values):
            singles = []
            for low, high in _runs(sorted(values)):
                if high - low >= 2:
                    terms.append(And(_GE(names[0], low), _LE(names[0], high)))
                else:
                    singles.extend(range(low, high + 1))
        if singles:
            terms.append(_IN(names[0], singles))
    else:
        for row in keys.to_pylist():
            parts: list[BooleanExpression] = [_EQ(n, row[n]) for n in names if row[n] is not None]
            if parts:
                terms.append(reduce(And, parts) if len(parts) > 1 else parts[0])
    if not terms:
        return None
    return _OR(*terms) if len(terms) > 1 else terms[0]


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct integers as (first, last) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    start = prev = values[0]
    for v in values[1:]:
        if v != prev + 1:
            runs.append((start, prev))
            start = v
        prev = v
    runs.append((start, prev))
    return runs


def _arrow_schema(columns: Columns, *, changelog: bool = False) -> pa.Schema:
    fields = [pa.field(n, t.arrow) for n, t in columns]
    if changelog:
        fields += [
            pa.field("_op", pa.large_string()),
            pa.field("_lsn", pa.int64()),
            pa.field("_seq", pa.int32()),
            pa.field("_commit_time", pa.timestamp("us", tz="UTC")),
        ]
    return pa.schema(fields)


class _committing:
    """Turn catalog failures during a commit into lake errors (retryable when they may pass)."""

    def __init__(self, table: Table) -> None:
        self.name = ".".join(table.name())

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, LakeError):
            return
        if isinstance(exc, (CommitFailedException, SQLAlchemyError, OSError)):
            raise RetryableLakeError(
                f"commit to lake table {self.name} failed: {type(exc).__name__}: {str(exc)[:200]}",
                hint="the commit is retried; nothing is half-written (an Iceberg commit is atomic)",
            ) from exc
