"""Destinations: where replicated changes are written.

`PostgresApplier` applies decoded pgoutput changes to a PostgreSQL destination set-based and
exactly once (the source LSN commits with the rows through a replication origin); `compact`
folds a run of changes to one relation into its net effect per key. The applier is imported on
first use, so that the pure compaction module does not pull in psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgmigrator.destination.compact import NetEffect, Step, compact

if TYPE_CHECKING:
    from pgmigrator.destination.postgres import PostgresApplier

__all__ = ["NetEffect", "PostgresApplier", "Step", "compact"]


def __getattr__(name: str) -> Any:
    if name == "PostgresApplier":
        from pgmigrator.destination.postgres import PostgresApplier

        return PostgresApplier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
