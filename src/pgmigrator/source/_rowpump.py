"""Loading the optional C loop of the replication stream (``_speedups.pump_rows``), or not.

``pump_rows`` takes the row changes libpq already holds straight from its buffer into the reader's
pending list, and the Begin and Commit messages into a ``TxnState`` the reader shares with it;
everything else goes back to the Python loop in `replication.ReplicationStream.pump`. It is bound only when the C decoder itself is in use and
`pgmigrator._libpq` finds the libpq psycopg loaded; otherwise the Python loop does all the work.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

from pgmigrator._libpq import addresses
from pgmigrator.protocol import pgoutput

if TYPE_CHECKING:
    from pgmigrator.protocol._speedups import TxnState


class RowPump(Protocol):
    def __call__(
        self, conn: int, rows: list[Any], room: int, txn: TxnState, /
    ) -> tuple[int, int, bytes | int | None]: ...


@functools.cache
def row_pump() -> RowPump | None:
    """The C loop, bound to psycopg's libpq, or None (then use the Python loop)."""
    if not pgoutput.ACCELERATED:
        return None
    found = addresses("PQgetCopyData", "PQfreemem")
    if found is None:
        return None
    from pgmigrator.protocol import _speedups

    _speedups.bind_libpq(*found)
    return _speedups.pump_rows


def new_txn_state() -> TxnState | None:
    """A fresh ``_speedups.TxnState`` for the C loop, or None without the accelerator."""
    if not pgoutput.ACCELERATED:
        return None
    from pgmigrator.protocol import _speedups

    return _speedups.TxnState()
