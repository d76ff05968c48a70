"""``pgmigrator lake``: the Iceberg pipeline (initial copy under an exported snapshot, then changes).

State lives in the lake itself: the slot on the source, and each Iceberg table's ``pgmigrator.lsn``
property. A run decides what to do from them:

- no slot: a fresh start; publication and slot (exported snapshot) are created, every selected
  table is copied under the snapshot and committed at the slot's consistent LSN. Lake tables that
  already exist stop the run (``--reset`` drops them first).
- a slot, and every selected table committed: resume streaming from the lowest table LSN.
- a slot, but some table never finished its copy (the copy was interrupted): its snapshot is gone,
  so the run stops with a hint to start over with ``--reset``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pgmigrator.dsn import Target
from pgmigrator.errors import PreflightError
from pgmigrator.lake.batch import Position
from pgmigrator.lake.copy import CopyStats, copy_tables
from pgmigrator.lake.settings import LakeSettings
from pgmigrator.lake.stream import LakeStream, StreamStats
from pgmigrator.lake.types import LakeError
from pgmigrator.lake.writer import CHANGES_SUFFIX, IcebergLake
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect
from pgmigrator.pipeline.identity import note_full, noted_full
from pgmigrator.source import catalog
from pgmigrator.source.catalog import TableInfo
from pgmigrator.source.slots import (
    ReplicationSession,
    drop_publication,
    drop_slot,
    ensure_publication,
    require_logical,
    slot_status,
)

log = get_logger("lake")


@dataclass
class LakeResult:
    slot: str
    consistent_lsn: Lsn | None = None
    copied: CopyStats | None = None
    stream: StreamStats | None = None
    tables: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "consistent_lsn": str(self.consistent_lsn) if self.consistent_lsn else None,
            "tables": self.tables,
            "copied_rows": self.copied.rows if self.copied else 0,
            "streamed_transactions": self.stream.transactions if self.stream else 0,
            "streamed_rows": self.stream.rows if self.stream else 0,
            "committed_lsn": str(self.stream.committed_lsn) if self.stream else None,
        }


class LakePipeline:
    def __init__(
        self,
        source: str,
        settings: LakeSettings,
        *,
        name: str = "default",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        slot: str | None = None,
        publication: str | None = None,
        collector: Any = None,
        keyless: str = "refuse",
    ) -> None:
        if settings.warehouse is None:
            raise LakeError("no warehouse given", hint="pass --warehouse PATH (a local folder)")
        self.source = Target(source, "source")
        self.settings = settings
        self.include = include or []
        self.exclude = exclude or []
        self.slot = slot or f"pgmigrator_lake_{name}"
        self.publication = publication or f"pgmigrator_lake_{name}"
        self.lake = IcebergLake(settings.warehouse, settings.catalog)
        self.stream: LakeStream | None = None
        self.collector = collector  # pgmigrator.metrics.Collector, or None
        self.keyless = keyless  # tables without a replica identity: refuse, or make them FULL
        if collector is not None:
            collector.update_info({"slot": self.slot, "warehouse": str(settings.warehouse)})

    def prepare(self, *, reset: bool = False) -> LakeResult:
        """Copy if needed; return what is known. Blocking."""
        with connect(self.source) as src:
            require_logical(src)
            tables = self._select(src)
            result = LakeResult(self.slot, tables=[t.qualified for t in tables])
            made_full = []
            if reset:
                made_full = noted_full(src, self.publication)  # carried over to the new one
                self._reset(src, tables)
            status = slot_status(src, self.slot)
            if self.collector is not None:
                self.collector.set_phase("copy" if status is None else "ready")
            if status is None:
                self._check_empty(tables)
                made_full += [
                    (t.schema, t.name)
                    for t in ensure_publication(src, self.publication, tables, self.keyless)
                ]
                note_full(src, self.publication, made_full)  # for cleanup --stream
                result.consistent_lsn, result.copied = self._copy(tables)
            else:
                self._check_copied(tables)
        return result

    def table_lsns(self) -> dict[tuple[str, str], Position]:
        """How far each current-state table holds the stream (it never runs ahead of its log)."""
        out = {}
        for ns, name in self._lake_names():
            table = self.lake.load(ns, name)
            pos = self.lake.position(table) if table is not None else None
            if pos is not None:
                out[(ns, name)] = pos
        return out

    async def follow(self) -> StreamStats:
        lsns = await asyncio.to_thread(self.table_lsns)
        self.stream = LakeStream(
            self.source,
            self.slot,
            self.publication,
            self.lake,
            lsns,
            flush_interval_s=self.settings.flush_interval_s,
            max_rows=self.settings.max_rows,
            collector=self.collector,
        )
        return await self.stream.run()

    def request_stop(self) -> None:
        if self.stream is not None:
            self.stream.request_stop()

    def _select(self, src: Conn) -> list[TableInfo]:
        everything = catalog.list_tables(src)
        missing = catalog.unmatched_patterns(everything, self.include)
        if missing:
            raise PreflightError(
                f"table pattern(s) matching no table on the source: {', '.join(missing)}",
                hint="patterns are globs over schema.table, e.g. 'public.*' or 'sales.order_*'",
            )
        tables = [t for t in catalog.select(everything, self.include, self.exclude) if t.has_data]
        if not tables:
            raise PreflightError(
                "no table selected on the source", hint="check --tables / --exclude"
            )
        self._tables = tables
        return tables

    def _lake_names(self) -> list[tuple[str, str]]:
        return [(t.schema, t.name) for t in self._tables]

    def _reset(self, src: Conn, tables: list[TableInfo]) -> None:
        drop_slot(src, self.slot)
        drop_publication(src, self.publication)
        for t in tables:
            self.lake.drop(t.schema, t.name)
            self.lake.drop(t.schema, t.name + CHANGES_SUFFIX)
        log.info("lake reset", slot=self.slot, tables=len(tables))

    def _check_empty(self, tables: list[TableInfo]) -> None:
        existing = [t.qualified for t in tables if self.lake.load(t.schema, t.name) is not None]
        if existing:
            raise LakeError(
                f"the lake already has table(s) {', '.join(existing[:5])} but the source has no slot {self.slot!r}",
                hint="without the slot the changes since that copy are lost: start over with --reset",
            )

    def _check_copied(self, tables: list[TableInfo]) -> None:
        unfinished = []
        for t in tables:
            table = self.lake.load(t.schema, t.name)
            if table is None or self.lake.stored_lsn(table) is None:
                unfinished.append(t.qualified)
        if unfinished:
            raise LakeError(
                f"table(s) {', '.join(unfinished[:5])} have no completed initial copy in the lake",
                hint="the copy was interrupted (or the table is new to the selection): run again with --reset to copy everything under a fresh snapshot",
            )

    def _copy(self, tables: list[TableInfo]) -> tuple[Lsn, CopyStats]:
        session = ReplicationSession(self.source)
        try:
            slot = session.create_slot(self.slot)
            stats = copy_tables(
                self.source,
                slot.snapshot,
                self.lake,
                tables,
                slot.consistent_lsn,
                self.settings.copy_batch_rows,
            )
        finally:
            session.close()
        log.info(
            "initial copy done", tables=stats.tables, rows=stats.rows, lsn=str(slot.consistent_lsn)
        )
        return slot.consistent_lsn, stats
