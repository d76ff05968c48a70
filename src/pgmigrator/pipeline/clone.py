"""``pgmigrator clone``: schema, one exported snapshot, parallel binary COPY, post-data, sequences.

Fresh run: publication, then a logical slot whose exported snapshot every COPY worker (and pg_dump)
imports while the replication session stays idle; pre-data applied in one transaction with the
pipeline's state row; chunks copied largest first; post-data built on several connections.

``--resume``: the original snapshot died with the crashed process, so unfinished tables are
truncated and copied again under a fresh snapshot from a temporary helper slot, and record that
snapshot's LSN as their sync LSN (DESIGN.md rule 2): a later ``follow`` skips their changes up to
it. Resume is per table, not per chunk: ctid ranges of one table copied under two snapshots would
lose rows that an UPDATE moved from a pending chunk into a finished one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.errors import PreflightError, StateError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect, server_major
from pgmigrator.pipeline import largeobjects
from pgmigrator.pipeline.bidi_guard import refuse_recopy
from pgmigrator.pipeline.clone_checks import refusals
from pgmigrator.pipeline.copyrun import CopyRun
from pgmigrator.pipeline.identity import retire_source
from pgmigrator.pipeline.progress import Progress
from pgmigrator.pipeline.sequences import refresh_matviews, sync_sequences
from pgmigrator.schema.apply import PostDataBuilder, apply_pre_data
from pgmigrator.schema.dbacl import DatabaseOwn, read_acl
from pgmigrator.schema.dbsettings import read_settings
from pgmigrator.schema.dump import Script, dump_section, find_pg_dump, split
from pgmigrator.schema.early import fk_checks_by_index, plan_by_table
from pgmigrator.schema.extconfig import sync_config_rows
from pgmigrator.schema.rolecopy import create_roles
from pgmigrator.source import catalog
from pgmigrator.source.catalog import TableInfo
from pgmigrator.source.slots import (
    ExportedSlot,
    ReplicationSession,
    ensure_publication,
    publication_exists,
    require_logical,
    require_usable_slot,
)
from pgmigrator.store.state import StateStore

log = get_logger("clone")

#: Seconds between two checks that the slot is still usable while the copy runs.
SLOT_CHECK_S = 5.0


@dataclass
class CloneOptions:
    resume: bool = False
    drop_if_exists: bool = False


@dataclass
class CloneResult:
    slot: str
    consistent_lsn: Lsn | None
    tables_copied: list[str] = field(default_factory=list)
    tables_skipped: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0


class Clone:
    def __init__(self, settings: Settings, options: CloneOptions, progress: Progress) -> None:
        settings.require("source", "dest")
        self.settings = settings
        self.options = options
        self.progress = progress
        self._post: PostDataBuilder | None = None
        self._runs: list[CopyRun] = []
        self._slot_created = False  # by this run (a fresh clone)
        self._recorded = False  # the pipeline's state row committed (with pre-data)
        self.source = settings.source_target
        self.dest = settings.dest_target

    def run(self) -> CloneResult:
        self.progress.set_phase("connecting")
        with connect(self.source) as src, connect(self.dest) as dst:
            require_logical(src)
            tables = self._select_tables(src)
            store = StateStore(dst, self.settings.name)
            if store.exists():  # brought up to date; a fresh clone creates it after its checks
                store.ensure_schema()
            existing = store.load()
            if existing is not None and not self.options.resume:
                raise StateError(
                    f"pipeline {self.settings.name!r} already has state on the destination (phase {existing.phase})",
                    hint="continue it with --resume, or start over with `pgmigrator cleanup` (drop the copied tables yourself or use --drop-if-exists)",
                )
            if existing is None and self.options.resume:
                raise StateError(
                    f"nothing to resume: no pipeline {self.settings.name!r} on the destination",
                    hint="run the clone without --resume",
                )
            pg_dump, _ = find_pg_dump(server_major(src))
            try:
                if existing is None:
                    result = self._fresh(src, dst, store, tables, pg_dump)
                else:
                    result = self._resume(src, dst, store, tables, existing.slot)
                self._finish(src, dst, store, tables)
            finally:
                if self._post is not None:
                    self._post.close()
                for run in self._runs:
                    run.stop()
            return result

    def _select_tables(self, src: Conn) -> list[TableInfo]:
        everything = catalog.list_tables(src)
        missing = catalog.unmatched_patterns(everything, self.settings.tables)
        if missing:
            raise PreflightError(
                f"table pattern(s) matching no table on the source: {', '.join(missing)}",
                hint="patterns are globs over schema.table, e.g. 'public.*' or 'sales.order_*'",
            )
        tables = catalog.select(everything, self.settings.tables, self.settings.exclude)
        if not tables:
            raise PreflightError(
                "no table selected on the source", hint="check --tables / --exclude"
            )
        self._excluded = catalog.left_out(everything, tables)
        return tables

    def _fresh(
        self, src: Conn, dst: Conn, store: StateStore, tables: list[TableInfo], pg_dump: Path
    ) -> CloneResult:
        excluded = [t.oid for t in self._excluded]
        roles = refusals(src, dst, self.settings, tables, excluded, self.options.drop_if_exists)
        had_publication = publication_exists(src, self.settings.publication_name)
        made_full = ensure_publication(
            src, self.settings.publication_name, tables, self.settings.keyless_tables
        )
        store.ensure_schema()  # every refusal is behind: nothing was created on the destination
        try:
            if roles is not None:
                create_roles(dst, roles)
            own = DatabaseOwn(read_settings(src), read_acl(src))
            slot, run = self._start(dst, tables, pg_dump, made_full, own)
        except BaseException:
            self._undo_source(src, had_publication, made_full)
            raise

        try:
            self.progress.set_phase("copy")
            data_tables = [t for t in tables if t.has_data]
            builder = self._post_data_builder(src, store)
            builder.expect_copies(len(data_tables), run.workers)
            run.copy(
                store,
                data_tables,
                sync_lsn=None,
                on_table_copied=builder.table_copied,
                on_tick=self._slot_watch(src, slot.name),
            )
        except BaseException:
            run.stop()
            raise
        self._finished_run(run)
        return CloneResult(
            slot.name,
            slot.consistent_lsn,
            [t.qualified for t in tables if t.has_data],
            [],
            run.rows,
            run.bytes,
        )

    def _start(
        self,
        dst: Conn,
        tables: list[TableInfo],
        pg_dump: Path,
        made_full: list[TableInfo],
        own: DatabaseOwn,
    ) -> tuple[ExportedSlot, CopyRun]:
        """Slot and snapshot, copy workers importing it, pre-data applied with the database's
        settings, privileges and comment, and the state row."""
        self.progress.set_phase("schema")
        session = ReplicationSession(self.source)
        run: CopyRun | None = None
        try:
            slot = session.create_slot(self.settings.slot_name)
            self._slot_created = True
            run = CopyRun(self.settings, self.source, self.dest, slot.snapshot, self.progress)
            run.start_workers(min(self.settings.workers, max(1, sum(t.has_data for t in tables))))
            pre, post = self._dump_sections(pg_dump, slot.snapshot)

            refused: list[tuple[object, str]] = []

            def record(conn: Conn) -> None:
                refused[:] = own.apply(conn, self.settings.privileges)
                store = StateStore(conn, self.settings.name)
                store.create(slot.name, self.settings.publication_name, "copy")
                store.set_selection(self.settings.tables, self.settings.exclude)
                store.update(consistent_lsn=slot.consistent_lsn, post_data=post.text)
                store.add_identity_full((t.schema, t.name) for t in made_full)

            apply_pre_data(dst, pre, record)  # while the workers start and import the snapshot
            self._recorded = True
            own.report(refused)
            run.wait_ready()
        except BaseException:
            session.close()
            if run is not None:
                run.stop()
            raise
        session.close()  # every importer holds the snapshot now; the slot itself persists
        return slot, run

    def _undo_source(self, src: Conn, had_publication: bool, made_full: list[TableInfo]) -> None:
        """A fresh clone that failed before its state was recorded leaves the source as it was:
        nothing could resume from its slot, which would only hold the source's WAL."""
        if self._recorded:
            return
        name, publication = self.settings.slot_name, self.settings.publication_name
        try:
            undone = retire_source(
                src,
                name if self._slot_created else None,
                None if had_publication else publication,
                [(t.schema, t.name) for t in made_full],
                publication,
            )
        except psycopg.Error as exc:  # the clone's own error is the one to report
            log.warning("could not undo the clone on the source", error=str(exc).strip())
            return
        if undone:
            log.info("nothing recorded, so undone on the source", undone="; ".join(undone))

    def _dump_sections(self, pg_dump: Path, snapshot: str) -> tuple[Script, Script]:
        """pre-data and post-data from two pg_dump runs at once, both under ``snapshot``."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg_dump") as pool:
            pre = pool.submit(
                dump_section,
                pg_dump,
                self.source,
                "pre-data",
                snapshot=snapshot,
                exclude=self._excluded,
                clean=self.options.drop_if_exists,
                options=self.settings.dump_options,
            )
            post = pool.submit(
                dump_section,
                pg_dump,
                self.source,
                "post-data",
                snapshot=snapshot,
                exclude=self._excluded,
                options=self.settings.dump_options,
            )
            return pre.result(), post.result()

    def _resume(
        self, src: Conn, dst: Conn, store: StateStore, tables: list[TableInfo], slot_name: str
    ) -> CloneResult:
        require_usable_slot(src, slot_name, self.settings.name)
        states = {(r.schema, r.name): r for r in store.tables()}
        todo = [
            t
            for t in tables
            if t.has_data
            and getattr(states.get((t.schema, t.name)), "state", None) not in ("copied", "ready")
        ]
        left = {(t.schema, t.name) for t in todo}
        done = [t.qualified for t in tables if t.has_data and (t.schema, t.name) not in left]
        log.info("resuming clone", to_copy=len(todo), already_copied=len(done))
        if not todo:
            return CloneResult(slot_name, None, [], done)
        refuse_recopy(dst, self.settings.name, "`pgmigrator clone --resume`")
        self.progress.set_phase("copy")
        session = ReplicationSession(self.source)
        try:
            helper = session.create_slot(f"{slot_name}_resync", temporary=True)
            run = CopyRun(self.settings, self.source, self.dest, helper.snapshot, self.progress)
            run.start_workers(min(self.settings.workers, len(todo)))
            run.wait_ready()
        finally:
            session.close()  # the temporary helper slot goes with it; the workers keep the snapshot
        try:
            for table in todo:
                dst.execute(sql.SQL("TRUNCATE ONLY {}").format(table.ident))
            builder = self._post_data_builder(src, store)
            builder.expect_copies(len(todo), run.workers)
            run.copy(
                store,
                todo,
                sync_lsn=helper.consistent_lsn,
                on_table_copied=builder.table_copied,
                on_tick=self._slot_watch(src, slot_name),
            )
        except BaseException:
            run.stop()
            raise
        self._finished_run(run)
        return CloneResult(
            slot_name, helper.consistent_lsn, [t.qualified for t in todo], done, run.rows, run.bytes
        )

    def _slot_watch(self, src: Conn, slot: str) -> Callable[[], None]:
        """A check of the slot every `SLOT_CHECK_S` while the copy runs.

        A long copy on a busy source can push the slot past ``max_slot_wal_keep_size``; once the
        server invalidates it, the changes made since the snapshot are gone and the copy is
        worthless for a migration: stop now rather than at the end (or at the first `follow`).
        """
        last = time.monotonic()

        def tick() -> None:
            nonlocal last
            if time.monotonic() - last >= SLOT_CHECK_S:
                last = time.monotonic()
                require_usable_slot(src, slot, self.settings.name)

        return tick

    def _finished_run(self, run: CopyRun) -> None:
        """Let the workers exit while post-data builds (about 0.5 s here); joined at the end."""
        run.release()
        self._runs.append(run)

    def _post_data_builder(self, src: Conn, store: StateStore) -> PostDataBuilder:
        """Post-data builder: each table's indexes and keys start once it is copied."""
        if self._post is None:
            script = split(store.require().post_data or "")
            by_table = plan_by_table(src, script)
            self._post = PostDataBuilder(
                self.dest,
                script,
                self.settings.name,
                store.post_data_done(),
                self.settings.workers,
                by_table,
                analyze=self.settings.copy_.analyze,
                fk_by_index=set()
                if self.settings.copy_.analyze
                else fk_checks_by_index(src, script),
                gucs=build_gucs(self.settings),
                auto_parallel=self.settings.copy_.index_parallel_workers is None,
            )
        return self._post

    def _finish(self, src: Conn, dst: Conn, store: StateStore, tables: Sequence[TableInfo]) -> None:
        self.progress.set_phase("post-data")
        store.set_phase("post-data")
        self._post_data_builder(src, store).finish()
        self.progress.set_phase("sequences")
        synced = sync_sequences(src, dst)
        refreshed = refresh_matviews(src, dst)
        sync_config_rows(src, dst)  # the rows users added to extensions' configuration tables
        self.progress.set_phase("large objects")
        large = largeobjects.sync_pipeline(src, dst, self.settings)
        require_usable_slot(src, store.require().slot, self.settings.name)  # still streamable
        store.set_phase("copied")
        self.progress.set_phase("done")
        log.info(
            "clone finished",
            sequences=synced,
            materialized_views=refreshed,
            large_objects="left out" if large is None else str(large),
        )


def build_gucs(settings: Settings) -> dict[str, str]:
    """Session settings of the post-data connections.

    Index builds sort in memory when ``maintenance_work_mem`` holds the keys (5M integer keys:
    2.5 s at 256 MB, 1.9 s at 1 GB here). The connections already build one index per core, so
    a build's own parallel workers would only compete with the other builds for the same cores:
    no parallel workers by default (three builds and two ANALYZEs on two connections: 3.1-3.7 s
    with PostgreSQL's default of 2 workers a build, 2.4-2.6 s with none).
    """
    return {
        "maintenance_work_mem": f"{settings.copy_.index_memory_mb}MB",
        "max_parallel_maintenance_workers": str(settings.copy_.index_parallel_workers or 0),
    }
