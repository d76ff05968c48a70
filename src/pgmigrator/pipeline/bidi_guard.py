"""Refusing a re-copy on the destination while it replicates back to the source.

`pgmigrator resync` and `clone --resume` empty a destination table (TRUNCATE) and copy it
again. With bidirectional replication set up, the reverse slot on the destination records that
TRUNCATE and every re-copied row like any local write, and the reverse follower would apply them
to the source: the source's table emptied, then refilled with a copy of itself that misses what
was written there meanwhile. So both commands stop before touching anything while the pipeline's
reverse slot exists (running or not), and say how to re-copy safely.

Kept apart from `pipeline.bidi` (which imports the follower) so that the clone and resync can
import it without a cycle.
"""

from __future__ import annotations

from pgmigrator.errors import PreflightError
from pgmigrator.pg import Conn
from pgmigrator.source.slots import slot_status


def reverse_slot(dst: Conn, pipeline: str) -> str | None:
    """The pipeline's reverse slot when it exists on the destination (``dst``), else None."""
    if dst.execute("SELECT to_regclass('pgmigrator.bidi')").fetchone() == (None,):
        return None
    row = dst.execute(
        "SELECT reverse_slot FROM pgmigrator.bidi WHERE pipeline = %s", (pipeline,)
    ).fetchone()
    if row is None or slot_status(dst, str(row[0])) is None:
        return None
    return str(row[0])


def refuse_recopy(dst: Conn, pipeline: str, command: str) -> None:
    """`PreflightError` when ``pipeline`` replicates both ways: ``command`` would loop back."""
    slot = reverse_slot(dst, pipeline)
    if slot is None:
        return
    raise PreflightError(
        f"pipeline {pipeline!r} replicates both ways (reverse slot {slot!r} on the destination):"
        f" {command} would empty and re-copy tables on the destination, and the reverse slot"
        " would carry that back to the source",
        hint="stop the writes to the destination, let `follow --bidirectional` catch up and stop"
        f" it, drop the reverse slot (on the destination: SELECT pg_drop_replication_slot('{slot}')),"
        f" run {command} again, then start `follow --bidirectional` again (it creates a new"
        " reverse slot, after the copy)",
    )
