"""Arrow batches for the lake: COPY CSV chunks, and buffered changes of one table.

The initial copy reads ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` in large chunks and parses each
chunk with Arrow's CSV reader (every column as a string, NULL unquoted and empty, an empty string
quoted), then converts whole columns (`pgmigrator.lake.types.to_arrow`).

`ChangeBuffer` holds a table's decoded changes between two lake commits. It yields the change-log
batch (every change, in source order, with ``_op``, ``_lsn``, ``_seq`` and ``_commit_time``) and
the *net effect* per primary key for the current-state merge: the last image of every key that
still exists (upserted) and the keys that no longer exist (deleted), with ordered-apply semantics
(insert then delete = nothing; an update that changes the key = delete of the old key plus upsert
of the new one; a TRUNCATE empties the table before what follows it in the batch).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from pgmigrator.events import PG_EPOCH_UNIX_US, Relation, TupleData
from pgmigrator.lake.types import LakeType, to_arrow

META_COLUMNS = ("_op", "_lsn", "_seq", "_commit_time")
OPS = {"I": "c", "U": "u", "D": "d", "T": "t"}


@dataclass(frozen=True, slots=True)
class Position:
    """How far a lake table holds the stream (stored in its ``pgmigrator.*`` table properties).

    Every source transaction committed before ``lsn`` (the end LSN of the last one included) is
    in the table; of the transaction committed at ``partial_lsn`` (one larger than a commit's row
    limit, written in pieces) the changes with ``_seq`` below ``partial_seq`` are in too.
    """

    lsn: int
    partial_lsn: int = 0
    partial_seq: int = 0

    def holds(self, lsn: int, seq: int) -> bool:
        """Whether the change ``seq`` of the transaction committed at ``lsn`` is already in."""
        return lsn < self.lsn or (lsn == self.partial_lsn and seq < self.partial_seq)


def csv_to_table(data: bytes, columns: Sequence[tuple[str, LakeType]]) -> pa.Table:
    """Parse a chunk of ``COPY ... (FORMAT csv)`` output (complete rows) into a typed table."""
    names = [name for name, _ in columns]
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    arrays = [to_arrow(table.column(n).combine_chunks(), t, n) for n, t in columns]
    return pa.Table.from_arrays(arrays, names=names)


def _text_array(values: list[bytes | None]) -> pa.Array:
    return pa.array(values, pa.binary()).cast(pa.string())


@dataclass(slots=True)
class _Row:
    op: str  # c, u, d, t
    lsn: int
    seq: int
    commit_time: int  # µs since 2000-01-01 UTC
    relation: Relation
    values: tuple[bytes | None, ...] | None  # None for a truncate


@dataclass
class ChangeBuffer:
    """Changes to one source table since the last lake commit."""

    schema: str
    table: str
    rows: list[_Row] = field(default_factory=list)
    net: dict[tuple[bytes | None, ...], tuple[bool, Relation, tuple[bytes | None, ...]]] = field(
        default_factory=dict
    )
    appended: list[tuple[Relation, tuple[bytes | None, ...]]] = field(default_factory=list)
    truncated: bool = False
    unchanged_toast: int = 0  # values the source did not send (unchanged TOAST): stored as NULL

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, msg: Any, relation: Relation, lsn: int, seq: int, commit_time: int) -> None:
        """Buffer one Insert, Update, Delete or Truncate of this table."""
        kind = type(msg).__name__[0]
        if kind == "T":
            self.rows.append(_Row("t", lsn, seq, commit_time, relation, None))
            self.net.clear()
            self.appended.clear()
            self.truncated = True
            return
        if kind == "D":
            old = msg.old.values
            self.rows.append(_Row("d", lsn, seq, commit_time, relation, old))
            self.net[_key(relation, old)] = (False, relation, old)
            return
        new = self._complete(msg.new, msg.old if kind == "U" else None)
        self.rows.append(_Row(OPS[kind], lsn, seq, commit_time, relation, new))
        if kind == "I" and not _key_indexes(relation):
            self.appended.append((relation, new))  # no key (inserts only): identical rows stay
            return
        if kind == "U" and msg.old is not None:
            old_key = _key(relation, msg.old.values)
            if old_key != _key(relation, new):
                self.net[old_key] = (False, relation, msg.old.values)
        self.net[_key(relation, new)] = (True, relation, new)

    def _complete(self, new: TupleData, old: TupleData | None) -> tuple[bytes | None, ...]:
        if not new.has_unchanged_toast():
            return new.values
        values = list(new.values)
        for i, v in enumerate(values):
            if new.is_unchanged_toast(i):
                if old is not None and not old.is_unchanged_toast(i):
                    values[i] = old.values[i]  # REPLICA IDENTITY FULL sent the old value
                else:
                    self.unchanged_toast += 1
                    values[i] = v
        return tuple(values)

    def changelog(
        self, columns: Sequence[tuple[str, LakeType]], stored: Position | None = None
    ) -> pa.Table:
        """The buffered changes that ``stored`` does not hold yet, in order."""
        rows = [r for r in self.rows if not stored.holds(r.lsn, r.seq)] if stored else self.rows
        arrays = _columns([(r.relation, r.values) for r in rows], columns)
        arrays.append(pa.array([r.op for r in rows], pa.large_string()))
        arrays.append(pa.array([r.lsn for r in rows], pa.int64()))
        arrays.append(pa.array([r.seq for r in rows], pa.int32()))
        micros = pa.array([r.commit_time + PG_EPOCH_UNIX_US for r in rows], pa.int64())
        arrays.append(micros.cast(pa.timestamp("us", tz="UTC")))
        return pa.Table.from_arrays(arrays, names=[n for n, _ in columns] + list(META_COLUMNS))

    def upserts(self, columns: Sequence[tuple[str, LakeType]]) -> pa.Table:
        """The last image of every key that exists after the buffered changes."""
        live = [(rel, values) for exists, rel, values in self.net.values() if exists]
        live += self.appended
        return pa.Table.from_arrays(_columns(live, columns), names=[n for n, _ in columns])

    def touched_keys(self, key_columns: Sequence[tuple[str, LakeType]]) -> pa.Table:
        """Every key changed in the batch (its current-state row is replaced or removed)."""
        rows = [(rel, values) for _, rel, values in self.net.values()]
        return pa.Table.from_arrays(_columns(rows, key_columns), names=[n for n, _ in key_columns])


_KEY_INDEXES: dict[int, tuple[Relation, tuple[int, ...]]] = {}  # id(relation) -> (it, key indexes)


def _key_indexes(relation: Relation) -> tuple[int, ...]:
    entry = _KEY_INDEXES.get(id(relation))
    if entry is None or entry[0] is not relation:
        if len(_KEY_INDEXES) > 10_000:  # relations are few; bound the cache anyway
            _KEY_INDEXES.clear()
        entry = (relation, tuple(i for i, c in enumerate(relation.columns) if c.is_key))
        _KEY_INDEXES[id(relation)] = entry
    return entry[1]


def _key(relation: Relation, values: tuple[bytes | None, ...]) -> tuple[bytes | None, ...]:
    idx = _key_indexes(relation)
    if len(idx) == 1:
        return (values[idx[0]],)
    return tuple([values[i] for i in idx]) if idx else values  # no key: the whole row


def _positions(relation: Relation) -> dict[str, int]:
    return {c.name: i for i, c in enumerate(relation.columns)}


def _columns(
    rows: Sequence[tuple[Relation, tuple[bytes | None, ...] | None]],
    columns: Sequence[tuple[str, LakeType]],
) -> list[pa.Array]:
    """Typed arrays of ``columns`` for rows decoded under (possibly different) relation layouts."""
    layouts: dict[int, dict[str, int]] = {}
    out = []
    for name, lake_type in columns:
        values: list[bytes | None] = []
        for rel, row in rows:
            pos = layouts.get(id(rel))
            if pos is None:
                pos = layouts[id(rel)] = _positions(rel)
            i = pos.get(name)
            values.append(None if row is None or i is None else row[i])
        out.append(to_arrow(_text_array(values), lake_type, name))
    return out
