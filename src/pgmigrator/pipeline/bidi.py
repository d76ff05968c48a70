"""Bidirectional replication: the forward and the reverse follower in one process, without loops.

The forward pipeline (source -> destination) is the one `clone` set up. The reverse pipeline
(destination -> source) gets its own objects, created by `prepare` when missing:

- a publication ``<publication>_rev`` on the destination, on the tables the forward publication
  holds, and a logical slot ``<slot>_rev`` on the destination;
- a replication origin ``pgmigrator_<origin_id>`` on the source (``origin_id`` defaults to
  ``<name>_rev``), which the reverse applier tags its writes with, and that pipeline's state in
  a ``pgmigrator`` schema on the source.

The reverse slot is created only once the clone is complete (every table copied, keys and
indexes built): the copy is not in the reverse slot's stream, so nothing cloned is sent back.
From then on, each applier's writes carry its origin, and each reader drops the transactions
carrying either of our origins (`OriginFilter`): a change crosses once and stops.

``since`` (the time the reverse slot was created, kept in ``pgmigrator.bidi`` on the destination)
bounds conflict detection: local row versions older than that (the clone's COPY, whose commit
time is later than the source changes made during the copy) are never conflicts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql

from pgmigrator.aio import wait_event
from pgmigrator.config import Settings
from pgmigrator.destination.conflicts import Conflict, ConflictMode, ConflictPolicy
from pgmigrator.errors import ConfigError, PgMigratorError, ReplicationError, StateError
from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector
from pgmigrator.pg import Conn, connect
from pgmigrator.pipeline.bidi_settings import BidiSettings
from pgmigrator.pipeline.follow import Follow, FollowStats
from pgmigrator.pipeline.origins import OriginFilter
from pgmigrator.source.slots import drop_publication, drop_slot, published_tables, slot_status
from pgmigrator.store.state import StateStore

log = get_logger("bidi")

_CLONING = ("connecting", "schema", "copy", "post-data", "sequences", "large objects")
_DDL = """
CREATE SCHEMA IF NOT EXISTS pgmigrator;
CREATE TABLE IF NOT EXISTS pgmigrator.bidi (
    pipeline text PRIMARY KEY,
    reverse_name text NOT NULL,
    reverse_slot text NOT NULL,
    reverse_publication text NOT NULL,
    since timestamptz NOT NULL
);
"""
_SINCE_US = "(extract(epoch FROM since) * 1000000)::int8 - 946684800000000"


@dataclass(frozen=True, slots=True)
class Plan:
    """Both directions' names, and when bidirectional replication started."""

    reverse: Settings  # source and destination swapped
    forward_origin: str
    reverse_origin: str
    since_us: int
    created: list[str]  # what prepare() created, for the user


def bidi_settings(settings: Settings) -> BidiSettings:
    value = getattr(settings, "bidi", None)
    return value if isinstance(value, BidiSettings) else BidiSettings.model_validate({})


def reverse_settings(settings: Settings, slot: str, publication: str) -> Settings:
    """The reverse pipeline's settings: the same ones, pointed the other way.

    ``slot`` and ``publication`` are the forward pipeline's; the reverse ones add ``_rev``.
    """
    bidi = bidi_settings(settings)
    return settings.model_copy(
        update={
            "name": bidi.origin_id or f"{settings.name}_rev",
            "source": settings.dest,
            "dest": settings.source,
            "slot": f"{slot}_rev",
            "publication": f"{publication}_rev",
        }
    )


def prepare(settings: Settings) -> Plan:
    """Check both sides and create the reverse publication and slot when missing."""
    settings.require("source", "dest")
    if bidi_settings(settings).origin_id == settings.name:
        raise ConfigError(
            "bidi.origin_id must differ from the pipeline name",
            hint="leave it unset (default <name>_rev)",
        )
    source, dest = (
        settings.source_target,
        settings.dest_target,
    )
    created: list[str] = []
    with connect(source) as src, connect(dest) as dst:
        for conn, side in ((src, "source"), (dst, "destination")):
            _require_commit_timestamps(conn, side)
        publication, slot = _forward_names(settings, dst)
        rev = reverse_settings(settings, slot, publication)
        _require_cloned(settings, dst)
        tables = published_tables(src, publication)
        if not tables:
            raise ReplicationError(
                f"publication {publication!r} on the source publishes no table",
                hint="run `pgmigrator clone` first (it creates the publication)",
            )
        dst.execute(_DDL)
        since = _since(dst, settings.name)
        if _ensure_publication(dst, rev.publication_name, tables):
            created.append(f"publication {rev.publication_name} on the destination")
        if slot_status(dst, rev.slot_name) is None:
            since = _start(dst, settings.name, rev)
            created.append(f"replication slot {rev.slot_name} on the destination")
        elif since is None:
            raise StateError(
                f"replication slot {rev.slot_name} exists on the destination but "
                "pgmigrator.bidi has no record of it",
                hint="drop the slot (or run `pgmigrator cleanup`) and start again",
            )
    for line in created:
        log.info("created " + line)
    return Plan(rev, settings.origin_name, rev.origin_name, since, created)


def _require_commit_timestamps(conn: Conn, side: str) -> None:
    row = conn.execute("SELECT current_setting('track_commit_timestamp')").fetchone()
    if not row or row[0] != "on":
        raise ConfigError(
            f"track_commit_timestamp is off on the {side}",
            hint="bidirectional replication compares commit times to find conflicts: set "
            "track_commit_timestamp = on on both servers and restart them",
        )


def _forward_names(settings: Settings, dst: Conn) -> tuple[str, str]:
    row = StateStore(dst, settings.name).load()
    if row is None:
        raise StateError(
            f"no pipeline {settings.name!r} on the destination",
            hint="run `pgmigrator clone` first, then `follow --bidirectional` (or pass the --name used then)",
        )
    return settings.publication or row.publication, settings.slot or row.slot


def _require_cloned(settings: Settings, dst: Conn) -> None:
    store = StateStore(dst, settings.name)
    row = store.require()
    pending = [f"{t.schema}.{t.name}" for t in store.tables() if t.state not in ("copied", "ready")]
    if row.phase in _CLONING or pending:
        shown = ", ".join(pending[:5]) or f"phase {row.phase}"
        raise StateError(
            f"the clone of pipeline {settings.name!r} is not complete ({shown})",
            hint="finish it (`pgmigrator clone --resume`) before following both ways: the "
            "reverse slot must start after the copy, or the copy would be sent back",
        )


def _ensure_publication(dst: Conn, name: str, tables: list[tuple[str, str]]) -> bool:
    table_list = sql.SQL(", ").join(sql.Identifier(s, n) for s, n in tables)
    if dst.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
        dst.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), table_list)
        )
        return False
    dst.execute(
        sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), table_list)
    )
    return True


def _since(dst: Conn, pipeline: str) -> int | None:
    row = dst.execute(
        "SELECT " + _SINCE_US + " FROM pgmigrator.bidi WHERE pipeline = %s",
        (pipeline,),
    ).fetchone()
    return None if row is None else int(row[0])


def _start(dst: Conn, pipeline: str, rev: Settings) -> int:
    """Record the start time, then create the reverse slot (its stream starts after the clone)."""
    row = dst.execute(
        "INSERT INTO pgmigrator.bidi AS b (pipeline, reverse_name, reverse_slot,"
        " reverse_publication, since) VALUES (%s, %s, %s, %s, clock_timestamp())"
        " ON CONFLICT (pipeline) DO UPDATE SET reverse_name = excluded.reverse_name,"
        " reverse_slot = excluded.reverse_slot,"
        " reverse_publication = excluded.reverse_publication, since = excluded.since"
        " RETURNING " + _SINCE_US,
        (pipeline, rev.name, rev.slot_name, rev.publication_name),
    ).fetchone()
    dst.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (rev.slot_name,))
    log.info("reverse slot created", slot=rev.slot_name)
    return int(row[0]) if row else 0


def cleanup_reverse(settings: Settings) -> list[str]:
    """Drop the reverse direction's objects, if any (called by `pgmigrator cleanup`)."""
    source, dest = (
        settings.source_target,
        settings.dest_target,
    )
    done: list[str] = []
    with connect(dest) as dst:
        row = None
        if dst.execute("SELECT to_regclass('pgmigrator.bidi')").fetchone() != (None,):
            row = dst.execute(
                "DELETE FROM pgmigrator.bidi WHERE pipeline = %s"
                " RETURNING reverse_name, reverse_slot, reverse_publication",
                (settings.name,),
            ).fetchone()
        state = StateStore(dst, settings.name).load()
        if row is None:
            rev = reverse_settings(
                settings,
                settings.slot or (state.slot if state else settings.slot_name),
                settings.publication or (state.publication if state else settings.publication_name),
            )
            name, slot, publication = rev.name, rev.slot_name, rev.publication_name
        else:
            name, slot, publication = str(row[0]), str(row[1]), str(row[2])
        if drop_slot(dst, slot):
            done.append(f"dropped replication slot {slot} on the destination")
        if drop_publication(dst, publication):
            done.append(f"dropped publication {publication} on the destination")
    with connect(source) as src:
        origin = f"pgmigrator_{name}"
        if src.execute(
            "SELECT 1 FROM pg_replication_origin WHERE roname = %s", (origin,)
        ).fetchone():
            src.execute("SELECT pg_replication_origin_drop(%s)", (origin,))
            done.append(f"dropped replication origin {origin} on the source")
        store = StateStore(src, name)
        if store.load() is not None:
            store.drop_pipeline()
        if (
            store.exists()
            and not src.execute("SELECT 1 FROM pgmigrator.pipelines LIMIT 1").fetchone()
        ):
            src.execute("DROP SCHEMA pgmigrator CASCADE")
            done.append("dropped schema pgmigrator on the source (the reverse pipeline's state)")
    return done


class Bidirectional:
    """Runs the forward and the reverse `Follow` together; either failing stops both."""

    def __init__(self, settings: Settings, collector: Collector | None = None) -> None:
        self.settings = settings
        self.collector = collector or Collector(settings.name)
        self.mode: ConflictMode = bidi_settings(settings).conflict
        self.conflicts = 0
        self.forward: Follow | None = None
        self.reverse: Follow | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()
        for f in (self.forward, self.reverse):
            if f is not None:
                f.request_stop()

    def pause(self) -> str:
        """Pause both directions (API, TUI, SIGUSR1 of a single follower)."""
        return self._both("pause")

    def resume(self) -> str:
        return self._both("resume")

    def _both(self, action: str) -> str:
        followers = [f for f in (self.forward, self.reverse) if f is not None]
        if not followers:
            raise StateError(f"cannot {action}: nothing is streaming yet")
        results = [getattr(f, action)() for f in followers]
        return str(results[0])

    async def run(self) -> tuple[FollowStats, FollowStats]:
        plan = await asyncio.to_thread(prepare, self.settings)
        ours = frozenset({plan.forward_origin, plan.reverse_origin})
        self.forward = Follow(
            self.settings,
            self.collector,
            origin_filter=OriginFilter(ours),
            conflicts=self._policy(plan, "forward"),
        )
        self.reverse = Follow(
            plan.reverse,
            Collector(plan.reverse.name),
            origin_filter=OriginFilter(ours),
            conflicts=self._policy(plan, "reverse"),
        )
        self.collector.update_info(
            {"bidi": self._info(plan), "bidi_conflict_policy": self.mode, "conflicts": 0}
        )
        if self._stop.is_set():
            self.request_stop()
        results = await asyncio.gather(
            self._guard(self.forward, self.reverse),
            self._guard(self.reverse, self.forward),
            self._report(plan),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, PgMigratorError)), errors[0])
        return results[0], results[1]  # type: ignore[return-value]

    def _policy(self, plan: Plan, direction: Literal["forward", "reverse"]) -> ConflictPolicy:
        def on_conflict(conflict: Conflict) -> None:
            self.conflicts += 1
            self.collector.update_info({"conflicts": self.conflicts})  # also on /metrics
            self.collector.log(
                "warning",
                "bidi",
                f"{direction}: {conflict.describe()}",
                winner=conflict.winner or "none",
            )

        return ConflictPolicy(self.mode, plan.since_us, on_conflict)

    async def _guard(self, follow: Follow, other: Follow) -> FollowStats:
        try:
            return await follow.run()
        finally:
            other.request_stop()  # one direction alone would let the sides drift apart
            self._stop.set()

    async def _report(self, plan: Plan) -> None:
        while not self._stop.is_set():
            self._publish(plan)
            await wait_event(self._stop, 2.0)
        self._publish(plan)

    def _publish(self, plan: Plan) -> None:
        """The reverse direction in the main collector: ``info.bidi`` and ``reverse_*`` health."""
        snap = self.reverse.collector.snapshot() if self.reverse else {}
        for name, h in (snap.get("health") or {}).items():
            self.collector.set_health(f"reverse_{name}", h["status"], h.get("detail", ""))
        self.collector.update_info(
            {"bidi": {**self._info(plan), "reverse_lag_bytes": snap.get("lag_bytes")}}
        )

    def _info(self, plan: Plan) -> dict[str, Any]:
        rev = self.reverse
        return {
            "reverse_pipeline": plan.reverse.name,
            "reverse_slot": plan.reverse.slot_name,
            "reverse_publication": plan.reverse.publication_name,
            "reverse_origin": plan.reverse_origin,
            "reverse_applied_lsn": str(rev.applied_lsn) if rev else None,
            "reverse_transactions": rev.stats.transactions if rev else 0,
            "reverse_rows": rev.stats.rows if rev else 0,
            "dropped_transactions": sum(
                f.origin_filter.transactions
                for f in (self.forward, self.reverse)
                if f is not None and f.origin_filter is not None
            ),
        }
