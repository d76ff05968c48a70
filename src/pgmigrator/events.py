"""Decoded logical replication messages (pgoutput), as small immutable values.

These types are what `pgmigrator.protocol.pgoutput` produces and what the rest of the pipeline
consumes. They stay close to the wire format on purpose: timestamps are kept as the server's raw
integer (microseconds since 2000-01-01 UTC, see `pg_timestamp_to_datetime`) and row values stay
undecoded bytes inside `TupleData`, because millions of rows pass through here and most values are
only ever forwarded as text.

Every change message (`Insert`, `Update`, `Delete`, `Truncate`, `Relation`, `Type`, `Message`)
carries ``xid``: the top-level transaction id when the change belongs to a streamed (in-progress)
transaction, ``None`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias, TypeVar, cast

from pgmigrator.lsn import Lsn

#: The PostgreSQL epoch: server timestamps count microseconds from here.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: The PostgreSQL epoch in microseconds since the Unix epoch.
PG_EPOCH_UNIX_US = 946_684_800_000_000

#: Which old tuple an `Update`/`Delete` carries: 'K' = replica identity key columns only,
#: 'O' = the whole old row (REPLICA IDENTITY FULL).
OldKind: TypeAlias = Literal["K", "O"]

_KIND_NULL = 0x6E  # 'n'
_KIND_UNCHANGED = 0x75  # 'u'
_KIND_TEXT = 0x74  # 't'
_KIND_BINARY = 0x62  # 'b'


_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` about twice as fast as the generated one.

    The generated ``__init__`` of a frozen dataclass assigns each field through
    ``object.__setattr__``; this one calls the slot descriptors directly. Same signature and
    defaults (no default factories). Apply it above ``@dataclass(frozen=True, slots=True)``;
    it matters for the types built once per replicated row.
    """
    namespace: dict[str, Any] = {}
    params: list[str] = []
    body: list[str] = []
    for f in fields(cast(Any, cls)):
        if f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: default factories are not supported")
        slot = cls.__dict__.get(f.name)
        if slot is None or not hasattr(slot, "__set__"):
            raise TypeError(f"{cls.__name__} must be a dataclass with slots=True")
        namespace[f"_set_{f.name}"] = slot.__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})\n")
    source = f"def __init__(self, {', '.join(params)}):\n{''.join(body) or '    pass'}"
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def pg_timestamp_to_datetime(us: int) -> datetime:
    """Convert a server timestamp (µs since 2000-01-01 UTC) to an aware UTC `datetime`.

    Raises `OverflowError` for values outside the range of `datetime` (years 1-9999).
    """
    return PG_EPOCH + timedelta(microseconds=us)


class TupleData:
    """One row as sent by pgoutput: a kind byte and an undecoded value per column.

    ``kinds[i]`` is ``ord('n')`` (NULL), ``ord('u')`` (unchanged TOASTed value, not sent),
    ``ord('t')`` (text format) or ``ord('b')`` (binary format). ``values[i]`` holds the raw bytes
    for 't' and 'b' columns and ``None`` for 'n' and 'u'. Instances are immutable.
    """

    __slots__ = ("kinds", "values")

    kinds: bytes
    values: tuple[bytes | None, ...]

    def __init__(self, kinds: bytes, values: tuple[bytes | None, ...]) -> None:
        if len(kinds) != len(values):
            raise ValueError(f"{len(kinds)} kinds but {len(values)} values")
        for i, (kind, value) in enumerate(zip(kinds, values, strict=True)):
            if kind in (_KIND_TEXT, _KIND_BINARY):
                if not isinstance(value, bytes):
                    raise ValueError(f"column {i}: kind {chr(kind)!r} needs a bytes value")
            elif kind in (_KIND_NULL, _KIND_UNCHANGED):
                if value is not None:
                    raise ValueError(f"column {i}: kind {chr(kind)!r} needs value None")
            else:
                raise ValueError(f"column {i}: unknown kind {kind!r}")
        _set_kinds(self, kinds)
        _set_values(self, values)

    @staticmethod
    def unchecked(kinds: bytes, values: tuple[bytes | None, ...]) -> TupleData:
        """Build without validation: for the decoder, which already checked the wire data."""
        obj = _new_object(TupleData)
        _set_kinds(obj, kinds)
        _set_values(obj, values)
        return obj

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TupleData is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TupleData is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TupleData, (self.kinds, self.values))

    def __len__(self) -> int:
        return len(self.kinds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TupleData):
            return NotImplemented
        return self.kinds == other.kinds and self.values == other.values

    def __hash__(self) -> int:
        return hash((self.kinds, self.values))

    def __repr__(self) -> str:
        return f"TupleData(kinds={self.kinds!r}, values={self.values!r})"

    def text(self, i: int) -> str | None:
        """Column ``i`` decoded as UTF-8 text; ``None`` for NULL and unchanged TOAST.

        Raises `ValueError` for a binary-format column (its bytes are not text).
        """
        value = self.values[i]
        if value is None:
            return None
        if self.kinds[i] == _KIND_BINARY:
            raise ValueError(f"column {i} is in binary format, not text")
        return value.decode()

    def is_null(self, i: int) -> bool:
        """Whether column ``i`` is SQL NULL."""
        return self.kinds[i] == _KIND_NULL

    def is_unchanged_toast(self, i: int) -> bool:
        """Whether column ``i`` is an unchanged TOASTed value that the server did not send."""
        return self.kinds[i] == _KIND_UNCHANGED

    def has_unchanged_toast(self) -> bool:
        """Whether any column is an unchanged TOASTed value (the row is then incomplete)."""
        return b"u" in self.kinds

    def as_text_list(self) -> list[str | None]:
        """All columns as text (``None`` for NULL and unchanged TOAST); `ValueError` if binary."""
        if b"b" in self.kinds:
            raise ValueError(f"column {self.kinds.index(b'b')} is in binary format, not text")
        return [None if v is None else v.decode() for v in self.values]


_set_kinds: Callable[[TupleData, bytes], None] = TupleData.__dict__["kinds"].__set__
_set_values: Callable[[TupleData, tuple[bytes | None, ...]], None] = TupleData.__dict__[
    "values"
].__set__
_new_object: Callable[[type[TupleData]], TupleData] = object.__new__


@fast_init
@dataclass(frozen=True, slots=True)
class Begin:
    """'B': a transaction starts; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: Lsn
    commit_time: int
    xid: int


@fast_init
@dataclass(frozen=True, slots=True)
class Commit:
    """'C': the transaction that `Begin` opened committed at ``commit_lsn``."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@fast_init
@dataclass(frozen=True, slots=True)
class Origin:
    """'O': the transaction came from replication origin ``name`` (commit ``lsn`` there)."""

    lsn: Lsn
    name: str


@fast_init
@dataclass(frozen=True, slots=True)
class Column:
    """One column of a `Relation`; bit 1 of ``flags`` marks replica identity (key) columns."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Whether the column is part of the replica identity."""
        return bool(self.flags & 1)


@fast_init
@dataclass(frozen=True, slots=True)
class Relation:
    """'R': the layout of a table, sent before the first change to it in a session.

    ``replica_identity`` is ``'d'`` (default), ``'n'`` (nothing), ``'f'`` (full) or ``'i'``
    (index). An empty namespace on the wire means ``pg_catalog`` and is reported as such.
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]
    xid: int | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the columns in wire order."""
        return tuple(c.name for c in self.columns)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        """The replica identity columns."""
        return tuple(c for c in self.columns if c.is_key)


@fast_init
@dataclass(frozen=True, slots=True)
class Type:
    """'Y': the name of a data type used by a following `Relation`."""

    oid: int
    namespace: str
    name: str
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Insert:
    """'I': a new row in relation ``relation_oid``."""

    relation_oid: int
    new: TupleData
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Update:
    """'U': a changed row; ``old`` is present only when the key changed or identity is FULL."""

    relation_oid: int
    old: TupleData | None
    old_kind: OldKind | None
    new: TupleData
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Delete:
    """'D': a removed row, identified by its key ('K') or whole old row ('O')."""

    relation_oid: int
    old: TupleData
    old_kind: OldKind
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Truncate:
    """'T': one TRUNCATE statement over one or more relations."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Message:
    """'M': a logical decoding message written with ``pg_logical_emit_message``."""

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    xid: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class StreamStart:
    """'S': a block of changes of the in-progress transaction ``xid`` follows."""

    xid: int
    first_segment: bool


@fast_init
@dataclass(frozen=True, slots=True)
class StreamStop:
    """'E': the current block of streamed changes ends."""


@fast_init
@dataclass(frozen=True, slots=True)
class StreamCommit:
    """'c': the streamed transaction ``xid`` committed."""

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_time: int


@fast_init
@dataclass(frozen=True, slots=True)
class StreamAbort:
    """'A': streamed (sub)transaction ``subxid`` of ``xid`` aborted; discard its changes.

    ``abort_lsn`` and ``abort_time`` are sent only by protocol version 4 with parallel streaming.
    """

    xid: int
    subxid: int
    abort_lsn: Lsn | None = None
    abort_time: int | None = None


#: A change to table data or to the set of tables.
ChangeMessage: TypeAlias = Insert | Update | Delete | Truncate
#: Any message the pgoutput decoder returns.
PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | Message
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
