"""Running COPY worker processes for one snapshot and following their progress.

The parent plans the chunks (recorded in the state store), hands them to the workers largest first,
and turns worker messages into progress and table states. A table whose chunk fails after its
retries is marked ``errored`` while the other tables go on; the run then reports every failed table.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import multiprocessing as mp
import queue
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from pgmigrator.config import Settings
from pgmigrator.dsn import Target
from pgmigrator.errors import CopyError, DiskFull
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn
from pgmigrator.pipeline import plan
from pgmigrator.pipeline.copyworker import ChunkTask, worker_main
from pgmigrator.pipeline.progress import Progress
from pgmigrator.source.catalog import TableInfo
from pgmigrator.store.state import StateStore

log = get_logger("copy")
MB = 1024 * 1024


class CopyRun:
    def __init__(
        self, settings: Settings, source: Target, dest: Target, snapshot: str, progress: Progress
    ) -> None:
        self.settings = settings
        self.source = source
        self.dest = dest
        self.snapshot = snapshot
        self.progress = progress
        self.ctx = mp.get_context("spawn")
        self.tasks: Any = self.ctx.Queue()
        self.results: Any = self.ctx.Queue()
        self.procs: list[Any] = []
        self._released = False
        self.rows = 0
        self.bytes = 0
        self.workers = 0  # copy processes started
        self.on_table_copied: Callable[[str, str], None] | None = None
        self.on_tick: Callable[[], None] | None = None  # cheap: it limits its own rate

    def start_workers(self, count: int) -> None:
        self.workers = count
        with _launcher_not_rerun():
            self._start(count)
        log.info("copy workers started", workers=count)

    def _start(self, count: int) -> None:
        for wid in range(count):
            proc = self.ctx.Process(
                target=worker_main,
                name=f"pgmigrator-copy-{wid}",
                daemon=True,
                args=(
                    wid,
                    self.source.dsn,
                    self.dest.dsn,
                    self.snapshot,
                    self.tasks,
                    self.results,
                    self.settings.retry.policy(self.settings.copy_.max_attempts),
                ),
            )
            proc.start()
            self.procs.append(proc)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every worker has imported the snapshot (the exporter must stay idle until then)."""
        ready: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ready) < len(self.procs):
            msg = self._next(deadline)
            if msg[0] == "ready":
                ready.add(msg[1])
            elif msg[0] == "fatal":
                raise CopyError(f"copy worker {msg[1]}: {msg[2]}", hint=msg[3])

    def _next(self, deadline: float) -> tuple[Any, ...]:
        while True:
            try:
                return self.results.get(timeout=0.2)  # type: ignore[no-any-return]
            except queue.Empty:
                if self.on_tick is not None:
                    self.on_tick()
                if time.monotonic() > deadline:
                    raise CopyError("copy workers did not start in time") from None
                if not any(p.is_alive() for p in self.procs):
                    raise CopyError(
                        "every copy worker exited", hint="see the log above; re-run with --resume"
                    ) from None

    def copy(
        self,
        store: StateStore,
        tables: list[TableInfo],
        sync_lsn: Lsn | None,
        block_size: int = plan.BLOCK_SIZE,
        on_table_copied: Callable[[str, str], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        """Copy ``tables``; ``on_tick`` runs after every worker message and every 0.2 s of
        silence (it may raise: the copy stops)."""
        self.on_table_copied = on_table_copied
        self.on_tick = on_tick
        pending: dict[tuple[str, str], int] = {}
        items: list[tuple[int, ChunkTask]] = []
        by_key = {(t.schema, t.name): t for t in tables}
        threshold = self.settings.copy_.split_threshold_mb * MB
        for table in tables:
            ranges = plan.block_ranges(
                table.size_bytes, threshold, self.settings.copy_.chunk_mb * MB, block_size
            )
            store.plan_table(table.schema, table.name, ranges, sync_lsn)
            pending[(table.schema, table.name)] = len(ranges)
            self.progress.table_planned(
                (table.schema, table.name), table.size_bytes, table.est_rows
            )
            for i, (lo, hi) in enumerate(ranges):
                items.append(
                    (
                        plan.estimate_chunk_bytes(table, lo, hi, block_size),
                        self._task(store.conn, table, i, lo, hi, whole=len(ranges) == 1),
                    )
                )
        for task in plan.order_tasks(items):
            self.tasks.put(task)
        failed = self._follow(store, pending, by_key)
        if failed:
            names = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            if any("disk full" in v for v in failed.values()):
                raise DiskFull(
                    f"copy stopped, destination disk full ({names})",
                    hint="free space on the destination, then `pgmigrator clone --resume`",
                )
            raise CopyError(
                f"{len(failed)} table(s) failed to copy: {names}",
                hint="fix the cause, then `pgmigrator clone --resume` copies only the unfinished tables",
            )

    def _task(
        self, conn: Conn, table: TableInfo, chunk: int, lo: int | None, hi: int | None, whole: bool
    ) -> ChunkTask:
        """A chunk's COPY statements; a table copied in one chunk loads frozen (see copyworker)."""
        out = plan.copy_out_sql(table, lo, hi).as_string(conn)
        plain = plan.copy_in_sql(table).as_string(conn)
        if not whole:
            return ChunkTask(self.settings.name, table.schema, table.name, chunk, out, plain)
        return ChunkTask(
            self.settings.name,
            table.schema,
            table.name,
            chunk,
            out,
            plan.copy_in_sql(table, freeze=True).as_string(conn),
            truncate=plan.truncate_sql(table).as_string(conn),
            copy_in_plain=plain,
        )

    def _follow(
        self,
        store: StateStore,
        pending: dict[tuple[str, str], int],
        by_key: dict[tuple[str, str], TableInfo],
    ) -> dict[str, str]:
        failed: dict[str, str] = {}
        reported: dict[
            tuple[str, str, int], int
        ] = {}  # bytes already reported per chunk (a retry restarts it)
        left = sum(1 for n in pending.values() if n > 0)  # tables with chunks still out
        while left:
            msg = self._next(float("inf"))
            if self.on_tick is not None:
                self.on_tick()
            kind = msg[0]
            if kind == "progress":
                key = msg[1][:2]
                reported[msg[1]] = reported.get(msg[1], 0) + msg[2]
                self.progress.advance(key, 0, msg[2])
            elif kind == "done":
                key = msg[1][:2]
                self.rows += msg[2]
                self.bytes += msg[3]
                self.progress.advance(key, msg[2], max(0, msg[3] - reported.pop(msg[1], 0)))
                pending[key] -= 1
                if pending[key] == 0:
                    left -= 1
                    store.table_copied(*key)
                    if self.on_table_copied is not None:
                        self.on_table_copied(*key)
                    self.progress.table_done(key)
            elif kind == "retry":
                reported.pop(msg[1], None)
                log.warning(
                    "chunk retried",
                    table=by_key[msg[1][:2]].qualified,
                    chunk=msg[1][2],
                    attempt=msg[2],
                    error=msg[3],
                )
            elif kind == "failed":
                key = msg[1][:2]
                name = by_key[key].qualified
                failed[name] = msg[2]
                left -= pending[key] > 0
                pending[key] = 0
                store.set_table_state(key[0], key[1], "errored", msg[2])
                self.progress.table_errored(key, msg[2])
                log.error("table copy failed", table=name, error=msg[2], hint=msg[3] or "")
                if "disk full" in msg[2]:
                    break
            elif kind == "unfrozen":
                log.info(
                    "table loads without FREEZE", table=by_key[msg[1][:2]].qualified, reason=msg[2]
                )
            elif kind == "fatal":
                log.error("copy worker lost its snapshot", worker=msg[1], error=msg[2])
        return failed

    def release(self) -> None:
        """Tell the workers to exit once their queue is empty; returns at once (idempotent)."""
        if not self._released:
            self._released = True
            for proc in self.procs:
                if proc.is_alive():
                    self.tasks.put(None)

    def stop(self) -> None:
        """Release the workers and wait for them (terminating any that linger)."""
        self.release()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self.tasks.cancel_join_thread()
        self.results.cancel_join_thread()


@contextlib.contextmanager
def _launcher_not_rerun() -> Iterator[None]:
    """Keep spawned workers from running the launcher script again.

    A spawned child first re-runs the parent's ``__main__``, unless that is a package's
    ``__main__`` module. The ``pgmigrator`` console script is a plain script that imports the
    whole command line (about 0.5 to 1 s per worker here, on the clone's critical path), and the
    workers need none of it: while they start, the script carries the spec of
    ``pgmigrator.__main__``, which multiprocessing skips.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("pgmigrator.__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None
