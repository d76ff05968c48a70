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
