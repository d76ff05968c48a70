"""Runs of inserted rows kept as pgoutput tuples: the follower's bulk path (`InsertRun`).

An inserted row needs no decoding on its way to a PostgreSQL destination: its pgoutput tuple
becomes a COPY text line with a byte loop. With the C accelerator the replication stream's
backlog loop keeps consecutive inserts into one relation, whose columns are all text or NULL, in
one `InsertRun` (the tuples back to back, as sent; ``_speedups_runs.c``) instead of an `Insert`
and a `TupleData` per row. The applier either streams a run into COPY (`InsertRun.copy_text`) or,
where a run must be folded with other changes of its table, expands it to exactly the values the
decoder builds (`expand`). Without the accelerator no run is ever made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, overload

from pgmigrator.events import Delete, Insert, Truncate, Update
from pgmigrator.protocol import pgoutput

if TYPE_CHECKING or pgoutput.ACCELERATED:
    from pgmigrator.protocol._speedups import InsertRun
else:

    class InsertRun:
        """Never instantiated: without the accelerator there are no runs."""


__all__ = ["InsertRun", "expand", "take_row"]

#: ``take_row(rows, message) -> bool``: a pgoutput Insert, Update or Delete into ``rows`` (the
#: reader's pending list), an insert joining the run at the end of the list or starting one;
#: False when the message is left to the decoder. None without the accelerator.
take_row: Callable[[list[Any], bytes], bool] | None = None
if pgoutput.ACCELERATED:
    from pgmigrator.protocol._speedups import take_row
Row = Insert | Update | Delete


@overload
def expand(changes: Iterable[Row | InsertRun]) -> list[Row]: ...
@overload
def expand(changes: Iterable[Row | Truncate | InsertRun]) -> list[Row | Truncate]: ...
def expand(changes: Iterable[Row | Truncate | InsertRun]) -> list[Any]:
    """``changes`` with every run replaced by its rows as `Insert` values, in order."""
    out: list[Row | Truncate] = []
    for change in changes:
        if isinstance(change, InsertRun):
            oid = change.relation_oid
            out += [Insert(oid, row) for row in change.tuples()]
        else:
            out.append(change)
    return out
