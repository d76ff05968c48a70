"""The reader's commands to the applier, and running them a group at a time (the apply side).

`Reader` turns the stream into commands: `Relation` (a table's shape), `Changes` (a bounded run of
row changes), `CommitBatch` (commit at a source commit boundary) and `Sentinel` (a
switchover's or a live verify's sentinel at its place in the stream).

The follow loop's apply task takes every command waiting in its queue and hands the whole group
to `CommandRunner.run` on the applier's thread: one thread hop per group instead of one per
``begin``/``apply``/``commit``. When the follower is caught up a source transaction arrives as
``Changes`` then ``CommitBatch``, so it is applied and committed in one hop; with a backlog a
group holds several chunks. What the group committed (and the sentinels it wrote)
comes back in order, for the follow loop to record on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgmigrator.events import Delete, Insert, Relation, Truncate, Update
from pgmigrator.lsn import Lsn
from pgmigrator.protocol.runs import InsertRun
from pgmigrator.store.state import sentinel_insert_sql

if TYPE_CHECKING:
    from pgmigrator.destination.postgres import PostgresApplier

#: A change for the applier: an `InsertRun` is a run of inserts the C loop kept undecoded.
Change = Insert | Update | Delete | Truncate | InsertRun


@dataclass(frozen=True, slots=True)
class Changes:
    changes: list[Change]
    #: ``(index of its first change, source commit time)`` per source transaction in
    #: ``changes``, in order; only when the reader tracks times (bidirectional replication).
    times: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class CommitBatch:
    end_lsn: Lsn
    commit_time: int
    transactions: int
    rows: int


@dataclass(frozen=True, slots=True)
class Sentinel:
    """A sentinel (``pg_logical_emit_message(true, 'pgmigrator', ...)``, see `sentinel`) at its
    place in the stream; ``kind`` is what emitted it (``switchover``, ``verify``)."""

    id: str
    lsn: Lsn
    kind: str = "switchover"


SENTINEL_PREFIX = "pgmigrator"
Command = Relation | Changes | CommitBatch | Sentinel


@dataclass
class BatchLimits:
    max_rows: int = 50_000  # per destination transaction when there is a backlog
    max_ms: float = 500.0  # per destination transaction when there is a backlog
    chunk_rows: int = (
        5_000  # rows handed to the applier at once (bounds memory within a transaction)
    )


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch the destination committed, with its changes per ``(schema, table)``."""

    batch: CommitBatch
    tables: dict[tuple[str, str], int]


Done = Committed | Sentinel  # a sentinel is reported once written (its batch commits later)

#: A group with at most this many row changes is applied on the event loop's own thread.
INLINE_ROWS = 200


def is_small(commands: list[Command]) -> bool:
    """True when ``commands`` hold at most `INLINE_ROWS` row changes (a caught-up follower's group).

    Such a group costs the destination one round trip of a millisecond or so; handing it to the
    applier's thread and back cost about as much CPU again (two thread wake-ups, the GIL handed
    over twice, a self-pipe write), which on a busy machine is also time the walsender waits.
    """
    rows = 0
    for cmd in commands:
        if isinstance(cmd, Changes):
            for change in cmd.changes:
                rows += change.rows if isinstance(change, InsertRun) else 1
            if rows > INLINE_ROWS:
                return False
    return True


class CommandRunner:
    """Applies commands in order on one applier; ``in_txn`` while a destination transaction is open."""

    def __init__(self, applier: PostgresApplier, pipeline: str) -> None:
        self.applier = applier
        self.pipeline = pipeline
        self.in_txn = False

    def run(self, commands: list[Command], done: list[Done]) -> None:
        """Apply ``commands`` (blocking); what completes is appended to ``done`` as it does."""
        applier = self.applier
        for cmd in commands:
            if isinstance(cmd, Changes):
                self._begin()
                applier.apply(cmd.changes, cmd.times)
            elif isinstance(cmd, CommitBatch):
                self._begin()
                applier.commit(cmd.end_lsn, cmd.commit_time)
                self.in_txn = False
                done.append(Committed(cmd, applier.last_commit_tables))
            elif isinstance(cmd, Sentinel):
                self._begin()
                applier.execute(sentinel_insert_sql(), (cmd.id, self.pipeline, str(cmd.lsn)))
                done.append(cmd)
            else:
                applier.relation(cmd)

    def rollback(self) -> None:
        """Roll back an open transaction (a source transaction cut by a stop: the slot resends it)."""
        if self.in_txn:
            self.applier.rollback()
            self.in_txn = False

    def _begin(self) -> None:
        if not self.in_txn:
            self.applier.begin()
            self.in_txn = True
