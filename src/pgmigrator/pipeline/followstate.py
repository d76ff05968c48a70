"""What `follow` needs before it streams: its slot, publication and table sync LSNs, checked.

Read from the pipeline's state on the destination (flags and config override the slot and
publication names), then checked on the source: the slot exists and nobody else consumes it,
the publication exists. Each failure is a `ReplicationError` saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.errors import ReplicationError
from pgmigrator.lsn import Lsn
from pgmigrator.pg import connect
from pgmigrator.source.slots import slot_status, usable_slot
from pgmigrator.store.state import StateStore


@dataclass(frozen=True, slots=True)
class FollowState:
    slot: str
    publication: str
    sync_lsns: dict[tuple[str, str], Lsn]  # tables copied under a later snapshot (rule 2)
    confirmed: Lsn  # the slot's confirmed flush position: the stream never starts before it
    selection: tuple[list[str], list[str]] | None = None  # the clone's table patterns


def load_state(settings: Settings, source: Target, dest: Target) -> FollowState:
    """Load and check the pipeline's state; mark it streaming (blocking, for a thread)."""
    with connect(dest) as dst:
        store = StateStore(dst, settings.name)
        store.ensure_schema()
        row = store.load()
        slot = settings.slot or (row.slot if row else settings.slot_name)
        publication = settings.publication or (
            row.publication if row else settings.publication_name
        )
        sync = (
            {(t.schema, t.name): t.sync_lsn for t in store.tables() if t.sync_lsn is not None}
            if row
            else {}
        )
        selection = store.selection() if row else None
    with connect(source) as src:
        status = slot_status(src, slot)
        has_publication = src.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
        ).fetchone()
    if status is None and (row is None or row.slot != slot):  # never ours: not gone, missing
        raise ReplicationError(
            f"replication slot {slot!r} does not exist on the source",
            hint="run `pgmigrator clone` first (it creates the slot), or pass the right --slot/--name",
        )
    status = usable_slot(status, slot, settings.name)
    if not has_publication:
        raise ReplicationError(
            f"publication {publication!r} does not exist on the source",
            hint="create it (`pgmigrator clone` does) or pass the right --publication",
        )
    if status.active:
        raise ReplicationError(
            f"replication slot {slot!r} is in use by another consumer (walsender PID {status.active_pid})",
            hint="stop the other `pgmigrator follow` (or subscriber) using this slot, or use another --name",
        )
    if row is not None:
        with connect(dest) as dst:
            StateStore(dst, settings.name).set_phase("streaming")
    return FollowState(
        slot,
        publication,
        {k: v for k, v in sync.items() if v is not None},
        status.confirmed_flush or Lsn(0),
        selection,
    )
