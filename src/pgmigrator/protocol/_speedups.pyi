from collections.abc import Sequence
from typing import Any

from pgmigrator.events import Delete, Insert, TupleData, Update

def setup(
    tuple_data: tuple[type, tuple[Any, ...]],
    insert: tuple[type, tuple[Any, ...]],
    update: tuple[type, tuple[Any, ...]],
    delete: tuple[type, tuple[Any, ...]],
    fallback_tuple: Any,
    fallback_change: Any,
) -> None: ...
def read_tuple(buf: bytes, pos: int, tag: str) -> tuple[TupleData, int]: ...
def decode_row_change(buf: bytes) -> Insert | Update | Delete | None: ...
def copy_text(rows: Sequence[TupleData]) -> bytes | None: ...
def pump_rows(
    conn: int, rows: list[Any], room: int, txn: TxnState, /
) -> tuple[int, int, bytes | int | None]: ...
def take_frames(
    rows: list[Any], frames: list[bytes], start: int, room: int, txn: TxnState, /
) -> tuple[int, int, int]: ...
def bind_libpq(get_copy_data: int, freemem: int, /) -> None: ...
def take_row(rows: list[Any], message: bytes, /) -> bool: ...

class InsertRun:
    """Inserted rows of one relation, kept as pgoutput tuples (made by `take_row`)."""

    @property
    def relation_oid(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def copy_text(self) -> bytes: ...
    def tuples(self) -> list[TupleData]: ...

class TxnState:
    """The transaction-boundary part of the reader's batch, shared with the C loop."""

    open: int
    begins: int
    final_lsn: int
    begin_time: int
    commits: int
    end_lsn: int
    commit_time: int
    rows: int
    max_rows: int
    deadline_ns: int
    max_ns: int
    flush_due: int
