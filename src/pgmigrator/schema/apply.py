"""Applying dumped schema sections to the destination.

Pre-data runs in one transaction together with the state store's phase change: a crash leaves
either all of it or none. Post-data runs on several connections: each table's own indexes and
keys (`early.TablePlan`) as soon as it is copied, its indexes in parallel, then ANALYZE; the rest
(foreign keys, triggers, attachments) wave by wave at the end. Each entry commits with its "done"
mark so a resumed clone skips what was built.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, SchemaError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn, ThreadConnections, translate
from pgmigrator.schema.cores import CoreBudget, is_index_build
from pgmigrator.schema.dump import Script, waves
from pgmigrator.schema.early import Step, TablePlan
from pgmigrator.store.state import post_data_done_sql

log = get_logger("schema")


def apply_pre_data(conn: Conn, script: Script, in_same_txn: Callable[[Conn], None]) -> None:
    try:
        with conn.transaction():
            conn.execute(script.text)  # no parameters: simple protocol, many statements
            in_same_txn(conn)
    except psycopg.Error as exc:
        raise SchemaError(
            f"applying the schema (pre-data) to the destination failed: {str(exc).strip()}",
            hint="objects may already exist: use --drop-if-exists, or run `pgmigrator cleanup` and drop them",
        ) from exc
    log.info("pre-data applied", entries=len(script.entries))


# For the foreign keys of `early.fk_checks_by_index` (only when tables are not analyzed).
_FK_CHECK_SETTINGS = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"


class PostDataBuilder:
    """Builds post-data on ``workers`` connections: per table as soon as it is copied, the rest at the end."""

    def __init__(
        self,
        dest: Target,
        script: Script,
        pipeline: str,
        done: set[int],
        workers: int,
        early: dict[tuple[str, str], TablePlan] | None = None,
        analyze: bool = False,
        fk_by_index: set[int] | None = None,
        gucs: dict[str, str] | None = None,
        auto_parallel: bool = False,
    ) -> None:
        self.dest = dest
        self.script = script
        self.pipeline = pipeline
        self.done = set(done)
        self.early = dict(early or {})
        self.analyze = analyze
        self.fk_by_index = set(fk_by_index or ())
        self.gucs = dict(gucs or {})  # the clone passes copy.index_* (clone.build_gucs)
        self.submitted: set[int] = set()
        self._sessions = ThreadConnections(dest, self._set_up)
        self._futures: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="post-data")
        self.cores = CoreBudget(workers) if auto_parallel else None  # idle cores to index builds

    def expect_copies(self, tables: int, workers: int) -> None:
        """The copy about to start: ``tables`` to copy on ``workers`` processes (busy cores)."""
        if self.cores is not None:
            self.cores.expect_copies(tables, workers)

    def table_copied(self, schema: str, name: str) -> None:
        """Start the table's index builds in parallel, then its constraints, then ANALYZE."""
        if self.cores is not None:
            self.cores.copied()
        plan = self.early.pop((schema, name), None) or TablePlan((), ())
        if not plan.builds and not plan.then and not self.analyze:
            return
        table = (schema, name)
        builds = [s for s in plan.builds if s.entry.seq not in self.done]
        then = [s for s in plan.then if s.entry.seq not in self.done]
        self.submitted.update(s.entry.seq for s in builds + then)
        table_done: Future[None] = Future()
        self._futures.append(table_done)
        left = [len(builds)]
        lock = threading.Lock()

        def built(future: Future[None]) -> None:
            exc = future.exception()
            with lock:
                left[0] -= 1
                if table_done.done():
                    return
                if exc is not None:
                    table_done.set_exception(exc)
                elif left[0] == 0:
                    _chain(self._pool.submit(self._finish_table, then, table), table_done)

        if not builds:
            _chain(self._pool.submit(self._finish_table, then, table), table_done)
        self._queued(builds)  # all of them before any starts: each sees the others
        for step in builds:
            self._pool.submit(self._queued_step, step).add_done_callback(built)

    def finish(self) -> None:
        try:
            self.expect_copies(0, 0)  # the copy is over
            for schema, name in list(self.early):  # copied by an earlier run, or nothing to copy
                self.table_copied(schema, name)
            for future in self._futures:
                future.result()
            rest = [
                e
                for e in self.script.entries
                if e.seq not in self.done and e.seq not in self.submitted
            ]
            for wave in waves(rest):
                steps = [Step(e, e.sql, True) for e in wave]
                self._queued(steps)
                list(self._pool.map(self._queued_step, steps))
            log.info(
                "post-data applied", entries=len(self.submitted) + len(rest), skipped=len(self.done)
            )
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sessions.close()

    def _finish_table(self, steps: list[Step], table: tuple[str, str]) -> None:
        for step in steps:
            self._run(step)
        if self.analyze:
            # On the table's path: the foreign key checks at the end are planned with these
            # statistics. With them PostgreSQL picks a merge anti-join of the two indexes
            # (0.15 s for 1M rows against 5M keys, frozen tables); without them it hashes the
            # referenced table (2.4 s) or has to be steered to index probes (1.1 s).
            _analyze(self._conn(), table)

    def _queued_step(self, step: Step) -> None:
        """Run a step counted by `_queued`; an index build may take the idle cores."""
        build = self.cores is not None and is_index_build(step.sql)
        taken = self.cores.take() if self.cores is not None and build else 0
        try:
            self._run(step, taken)
        finally:
            if self.cores is not None and build:
                self.cores.finished(taken)

    def _queued(self, steps: list[Step]) -> None:
        """Count the index builds among ``steps`` as busy cores until each is done (the short
        steps, key attachments and ANALYZE, are left out: they would keep a long build that
        starts beside them from the cores they free a moment later)."""
        if self.cores is not None:
            self.cores.queued(sum(is_index_build(step.sql) for step in steps))

    def _run(self, step: Step, parallel: int = 0) -> None:
        probe = step.entry.seq in self.fk_by_index
        _run_step(self._conn(), step, self.pipeline, self.dest, probe, parallel)

    def _conn(self) -> Conn:
        return self._sessions.get()

    def _set_up(self, conn: Conn) -> None:
        for name, value in self.gucs.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        if self.script.preamble.strip():
            conn.execute(self.script.preamble)


def _analyze(conn: Conn, table: tuple[str, str]) -> None:
    """Planner statistics for a copied table; a failure is only worth a warning."""
    started = time.monotonic()
    try:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*table)))
    except psycopg.Error as exc:
        log.warning("ANALYZE failed", table=".".join(table), error=str(exc).strip())
        return
    log.debug("analyzed", table=".".join(table), seconds=round(time.monotonic() - started, 3))


def _chain(source: Future[None], target: Future[None]) -> None:
    """Settle ``target`` like ``source`` once it is done."""

    def copy(done: Future[None]) -> None:
        exc = done.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(None)

    source.add_done_callback(copy)


def _run_step(
    conn: Conn, step: Step, pipeline: str, dest: Target, probe_index: bool, parallel: int
) -> None:
    entry = step.entry
    for attempt in range(1, 6):
        try:
            with conn.transaction():
                if probe_index:
                    conn.execute(_FK_CHECK_SETTINGS)
                if parallel:  # idle cores (`cores`): this build may use them
                    conn.execute(
                        sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(
                            sql.Literal(parallel)
                        )
                    )
                conn.execute(step.sql)
                if step.completes:
                    conn.execute(post_data_done_sql(), (pipeline, entry.seq))
            log.debug(
                "post-data step",
                kind=entry.kind,
                name=entry.name,
                completes=step.completes,
                **({"fk_check": "index probes"} if probe_index else {}),
                **({"parallel_workers": parallel} if parallel else {}),
            )
            return
        except psycopg.Error as exc:
            err: PgMigratorError = translate(exc, dest, f"creating {entry.kind} {entry.name}")
            if not err.retryable or attempt == 5:
                raise SchemaError(
                    f"post-data: {entry.kind} {entry.schema}.{entry.name} failed: {str(exc).strip()}"
                ) from exc
            log.warning(
                "post-data entry retried", kind=entry.kind, name=entry.name, error=str(exc).strip()
            )
