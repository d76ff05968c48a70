"""Preparing a WAL stream: checks, publication and slot (``--create``), the snapshot marker file.

The slot is created with an exported snapshot; with ``--snapshot`` the caller imports it before the
replication session does anything else. A marker file next to the state file records whether the
snapshot of a slot was fully delivered, so a restart never silently skips an unfinished snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.errors import PreflightError, ReplicationError, StateError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect
from pgmigrator.pipeline.identity import note_full
from pgmigrator.source import catalog
from pgmigrator.source.slots import (
    ExportedSlot,
    ReplicationSession,
    ensure_publication,
    require_logical,
    slot_status,
)

log = get_logger("stream")

#: Session settings of the walsender, so pgoutput's text values have one documented form.
WALSENDER_OPTIONS = (
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c bytea_output=hex -c extra_float_digits=3"
)


def walsender_target(source: Target) -> Target:
    params = conninfo_to_dict(source.dsn)
    options = f"{params.get('options') or ''} {WALSENDER_OPTIONS}".strip()
    return Target(make_conninfo(source.dsn, options=options), source.role)


@dataclass
class Prepared:
    slot: str
    publication: str
    start: Lsn
    created: ExportedSlot | None = None
    session: ReplicationSession | None = None  # open (idle) while the snapshot is imported


def marker_path(settings: Settings, slot: str) -> Path:
    return settings.state_dir / f"{settings.name}.stream-{slot}.json"


def read_marker(path: Path) -> str | None:
    try:
        value = orjson.loads(path.read_bytes()).get("snapshot")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def write_marker(path: Path, slot: str, state: str, lsn: Lsn) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"slot": slot, "snapshot": state, "consistent_lsn": str(lsn)}))
    tmp.replace(path)


def prepare(settings: Settings, source: Target, *, create: bool, snapshot: bool) -> Prepared:
    slot, publication = settings.slot_name, settings.publication_name
    with connect(source) as src:
        require_logical(src)
        _publication(src, settings, publication, create)
        status = slot_status(src, slot)
    if status is not None:
        if status.plugin != "pgoutput":
            raise ReplicationError(
                f"replication slot {slot!r} uses plugin {status.plugin!r}, not pgoutput",
                hint="use another --slot, or drop that slot",
            )
        if status.active:
            raise ReplicationError(
                f"replication slot {slot!r} is in use by another consumer (walsender PID {status.active_pid})",
                hint="stop the other consumer of this slot, or use another --slot",
            )
        marker = marker_path(settings, slot)
        if snapshot and read_marker(marker) == "running":
            raise StateError(
                f"the snapshot of slot {slot!r} was interrupted before every row was delivered",
                hint=f"its exported snapshot is gone: drop the slot (SELECT pg_drop_replication_slot('{slot}')) and {marker}, then start again with --create --snapshot",
            )
        if snapshot:
            log.info("slot exists: its snapshot was taken before, streaming changes", slot=slot)
        return Prepared(slot, publication, status.confirmed_flush or Lsn(0))
    if not create:
        raise ReplicationError(
            f"replication slot {slot!r} does not exist on the source",
            hint="pass --create to create it (with --snapshot to emit existing rows first)",
        )
    session = ReplicationSession(source)
    try:
        created = session.create_slot(slot)
    except BaseException:
        session.close()
        raise
    if not snapshot:
        session.close()
        return Prepared(slot, publication, created.consistent_lsn, created)
    return Prepared(slot, publication, created.consistent_lsn, created, session)


def _publication(src: Conn, settings: Settings, publication: str, create: bool) -> None:
    exists = src.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if exists:
        return
    if not create:
        raise ReplicationError(
            f"publication {publication!r} does not exist on the source",
            hint="pass --create to create it (for --tables / --exclude, default every table), or CREATE PUBLICATION yourself",
        )
    everything = catalog.list_tables(src)
    missing = catalog.unmatched_patterns(everything, settings.tables)
    if missing:
        raise PreflightError(
            f"table pattern(s) matching no table on the source: {', '.join(missing)}",
            hint="patterns are globs over schema.table, e.g. 'public.*' or 'sales.order_*'",
        )
    tables = catalog.select(everything, settings.tables, settings.exclude)
    if not tables:
        raise PreflightError("no table selected on the source", hint="check --tables / --exclude")
    made_full = ensure_publication(src, publication, tables, settings.keyless_tables)
    note_full(src, publication, [(t.schema, t.name) for t in made_full])  # for cleanup --stream


def current_lsn(conn: Conn) -> Lsn:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return Lsn.parse(row[0]) if row else Lsn(0)
