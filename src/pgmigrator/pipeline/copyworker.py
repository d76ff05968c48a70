"""A COPY worker process: pipes binary COPY from the source snapshot into the destination.

Each worker opens a REPEATABLE READ transaction on the source and imports the exported snapshot
before anything else, then copies the chunks it is handed. The bytes go from the source's
``get_copy_data`` straight into the destination's ``put_copy_data`` without being parsed (in C
without the GIL when `_pump` could bind the optional extension); both connections are blocking
(psycopg holds the GIL in these calls, so parallelism comes from processes). A chunk's rows and
its "done" mark commit in one destination transaction.

Messages to the parent (a multiprocessing queue) are plain tuples:
``("ready", wid)``, ``("progress", key, nbytes)``, ``("done", key, rows, nbytes)``,
``("retry", key, attempt, error)``, ``("unfrozen", key, reason)`` (a whole table loads without
FREEZE), ``("failed", key, error, hint, retryable)``, ``("fatal", wid, error, hint)``.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import psycopg
from psycopg import pq

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, RetryableCopyError
from pgmigrator.pg import Conn, connect, translate
from pgmigrator.pipeline._pump import c_pump
from pgmigrator.retry import RetryPolicy
from pgmigrator.store.state import chunk_done_sql

PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True, slots=True)
class ChunkTask:
    pipeline: str
    schema: str
    table: str
    chunk: int
    copy_out: str  # COPY ... TO STDOUT (FORMAT binary, or text: plan.copy_out_sql)
    copy_in: str  # COPY ... FROM STDIN (the same format)
    # A whole-table chunk may load frozen: TRUNCATE the (empty) table in the chunk's transaction,
    # then COPY with FREEZE. ``truncate`` is that TRUNCATE, ``copy_in_plain`` the COPY to use
    # instead when the TRUNCATE is refused (a foreign key points at the table, no privilege).
    truncate: str = ""
    copy_in_plain: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.schema, self.table, self.chunk)


def _check(res: pq.abc.PGresult, expect: pq.ExecStatus, what: str) -> None:
    if res.status != expect:
        state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None
        raise _PgFailure((res.error_message or b"").decode(errors="replace").strip() or what, state)


class _PgFailure(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def open_snapshot(source: Target, snapshot: str) -> Conn:
    conn = connect(source)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # server-made name: [0-9A-F-]
    return conn


class Worker:
    def __init__(
        self,
        wid: int,
        source: Target,
        dest: Target,
        snapshot: str,
        results: Queue[Any],
        retry: RetryPolicy,
    ) -> None:
        self.wid = wid
        self.dest = dest
        self.results = results
        self.retry = retry
        self.src = open_snapshot(source, snapshot)
        self.dst: Conn | None = None
        self._unfrozen: set[tuple[str, str, int]] = set()  # reported as loading unfrozen

    def dest_conn(self) -> Conn:
        if self.dst is None or self.dst.closed or self.dst.pgconn.status != pq.ConnStatus.OK:
            conn = connect(self.dest)
            conn.execute("SET synchronous_commit = off")
            self.use_dest(conn)
        assert self.dst is not None
        return self.dst

    def use_dest(self, conn: Conn) -> None:
        """Copy into ``conn`` from now on (its open transaction, if any, takes the chunk)."""
        # psycopg leaves libpq non-blocking; there every put_copy_data that finds the socket
        # full memmoves the whole backlog in libpq's buffer: 3-6x the worker's CPU here.
        conn.pgconn.nonblocking = 0
        self.dst = conn

    def run_task(self, task: ChunkTask) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                rows, nbytes = self.copy(task)
                self.results.put(("done", task.key, rows, nbytes))
                return
            except RetryableCopyError as exc:
                if not self.retry.allows(attempt):
                    raise
                self.results.put(("retry", task.key, attempt, exc.message))
                time.sleep(self.retry.delay(attempt))

    def copy(self, task: ChunkTask) -> tuple[int, int]:
        try:
            dst = self.dest_conn()
        except PgMigratorError as exc:
            raise RetryableCopyError(exc.message) if exc.retryable else exc from exc
        src_pg, dst_pg = self.src.pgconn, dst.pgconn
        try:
            _check(dst_pg.exec_(b"BEGIN"), pq.ExecStatus.COMMAND_OK, "BEGIN")
            copy_in, unfrozen = _prepare_freeze(dst_pg, task)
            if unfrozen is not None and task.key not in self._unfrozen:  # once, not per retry
                self._unfrozen.add(task.key)
                self.results.put(("unfrozen", task.key, unfrozen))
            _check(dst_pg.exec_(copy_in.encode()), pq.ExecStatus.COPY_IN, "COPY FROM")
        except (_PgFailure, psycopg.Error) as exc:
            raise self._dest_error(exc, task) from exc
        src_pg.send_query(task.copy_out.encode())
        res = src_pg.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_OUT:
            raise PgMigratorError(
                f"source COPY of {task.schema}.{task.table} failed: "
                f"{(res.error_message if res else b'').decode(errors='replace').strip()}"
            )
        nbytes, dest_error = self._pump(src_pg, dst_pg, task)
        src_rows = self._finish_source(src_pg, task)
        if dest_error is not None:
            raise self._dest_error(dest_error, task)
        try:
            dst_pg.put_copy_end()
            res = dst_pg.get_result()
            if res is not None:
                _check(res, pq.ExecStatus.COMMAND_OK, "COPY FROM")
            while dst_pg.get_result() is not None:
                pass
            dst_rows = int((res.command_status or b"COPY 0").split()[-1]) if res else -1
            if dst_rows != src_rows:
                raise PgMigratorError(
                    f"{task.schema}.{task.table}: source sent {src_rows} rows, destination took {dst_rows}"
                )
            params = [
                task.pipeline.encode(),
                task.schema.encode(),
                task.table.encode(),
                str(task.chunk).encode(),
                str(src_rows).encode(),
                str(nbytes).encode(),
            ]
            _check(
                dst_pg.exec_params(chunk_done_sql(), params),
                pq.ExecStatus.COMMAND_OK,
                "chunk state",
            )
            _check(dst_pg.exec_(b"COMMIT"), pq.ExecStatus.COMMAND_OK, "COMMIT")
        except (_PgFailure, psycopg.Error) as exc:
            raise self._dest_error(exc, task) from exc
        return src_rows, nbytes

    def _pump(
        self, src_pg: pq.abc.PGconn, dst_pg: pq.abc.PGconn, task: ChunkTask
    ) -> tuple[int, Exception | None]:
        """Move COPY data; on a destination failure keep draining the source so its session survives."""
        pump = c_pump()
        # the PGconn* of both connections (psycopg's concrete PGconn has it; its protocol not)
        ptrs = (getattr(src_pg, "pgconn_ptr", None), getattr(dst_pg, "pgconn_ptr", None))
        if pump is None or not isinstance(ptrs[0], int) or not isinstance(ptrs[1], int):
            return self._py_pump(src_pg, dst_pg, task)
        nbytes, end, put_status, _ = pump(  # the "done" message accounts for the rest
            ptrs[0],
            ptrs[1],
            lambda n: self.results.put(("progress", task.key, n)),
            PROGRESS_EVERY_S,
        )
        if end == -2:  # what psycopg's get_copy_data raises
            raise psycopg.OperationalError(
                f"receiving copy data failed: {src_pg.get_error_message().strip()}"
            )
        if put_status == 1:
            return nbytes, None
        msg = dst_pg.get_error_message().strip()
        if put_status < 0:
            return nbytes, psycopg.OperationalError(f"sending copy data failed: {msg}")
        return nbytes, _PgFailure(msg or "destination refused COPY data", None)

    def _py_pump(
        self, src_pg: pq.abc.PGconn, dst_pg: pq.abc.PGconn, task: ChunkTask
    ) -> tuple[int, Exception | None]:
        """The reference loop of `_pump` (without the C extension)."""
        nbytes = pending = 0
        last = time.monotonic()
        dest_error: Exception | None = None
        while True:
            n, data = src_pg.get_copy_data(0)
            if n < 0:
                return nbytes, dest_error
            nbytes += n
            if dest_error is None:
                try:
                    if dst_pg.put_copy_data(data) != 1:
                        dest_error = _PgFailure(
                            dst_pg.get_error_message() or "destination refused COPY data", None
                        )
                except psycopg.Error as exc:
                    dest_error = exc
            pending += n
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                self.results.put(("progress", task.key, pending))
                pending, last = 0, now

    def _finish_source(self, src_pg: pq.abc.PGconn, task: ChunkTask) -> int:
        res = src_pg.get_result()
        while src_pg.get_result() is not None:
            pass
        if res is None or res.status != pq.ExecStatus.COMMAND_OK:
            msg = (res.error_message if res else b"no result").decode(errors="replace").strip()
            raise PgMigratorError(
                f"source COPY of {task.schema}.{task.table} failed: {msg}",
                hint="the source session and its snapshot are lost: re-run with --resume",
            )
        return int((res.command_status or b"COPY 0").split()[-1])

    def _dest_error(self, exc: BaseException, task: ChunkTask) -> PgMigratorError:
        if self.dst is not None and self.dst.pgconn.status == pq.ConnStatus.OK:
            self.dst.pgconn.exec_(b"ROLLBACK")
        else:
            self.dst = None
        err = translate(exc, self.dest, f"copying {task.schema}.{task.table} chunk {task.chunk}")
        return RetryableCopyError(err.message, hint=err.hint) if err.retryable else err


def _prepare_freeze(dst_pg: pq.abc.PGconn, task: ChunkTask) -> tuple[str, str | None]:
    """The COPY to run: with FREEZE once ``task.truncate`` succeeded, else the plain one and why.

    Rows loaded frozen into a table truncated in the same transaction need no hint bits and no
    anti-wraparound VACUUM later, and COPY FREEZE sets the visibility map (index-only scans,
    including the foreign key checks of post-data). The TRUNCATE runs in a savepoint so that a
    refusal leaves the transaction usable for the plain COPY.
    """
    if not task.truncate:
        return task.copy_in, None
    _check(dst_pg.exec_(b"SAVEPOINT pgm_freeze"), pq.ExecStatus.COMMAND_OK, "SAVEPOINT")
    res = dst_pg.exec_(task.truncate.encode())
    if res.status == pq.ExecStatus.COMMAND_OK:
        _check(dst_pg.exec_(b"RELEASE pgm_freeze"), pq.ExecStatus.COMMAND_OK, "RELEASE")
        return task.copy_in, None
    reason = (res.error_message or b"").decode(errors="replace").strip()
    _check(dst_pg.exec_(b"ROLLBACK TO pgm_freeze"), pq.ExecStatus.COMMAND_OK, "ROLLBACK TO")
    return task.copy_in_plain, reason


def _next_task(tasks: Queue[Any], parent: int) -> ChunkTask | None:
    """The next chunk, or None when told to stop or when the parent died (never linger as an orphan)."""
    while os.getppid() == parent:
        try:
            return tasks.get(timeout=1.0)  # type: ignore[no-any-return]
        except queue.Empty:
            continue
    return None


def worker_main(
    wid: int,
    source_dsn: str,
    dest_dsn: str,
    snapshot: str,
    tasks: Queue[Any],
    results: Queue[Any],
    retry: RetryPolicy,
) -> None:
    """Process entry point (spawned): import the snapshot, then copy chunks until ``None`` arrives."""
    source, dest = Target(source_dsn, "source"), Target(dest_dsn, "destination")
    parent = os.getppid()
    try:
        worker = Worker(wid, source, dest, snapshot, results, retry)
    except PgMigratorError as exc:
        results.put(("fatal", wid, exc.message, exc.hint))
        return
    except psycopg.Error as exc:
        results.put(("fatal", wid, f"importing the snapshot failed: {str(exc).strip()}", None))
        return
    results.put(("ready", wid))
    while (task := _next_task(tasks, parent)) is not None:
        try:
            worker.run_task(task)
        except PgMigratorError as exc:
            results.put(("failed", task.key, exc.message, exc.hint, exc.retryable))
        except (
            Exception
        ) as exc:  # a bug or an unexpected driver error: report, never hang the parent
            results.put(("failed", task.key, f"{type(exc).__name__}: {exc}", None, False))
        if worker.src.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
            results.put(
                (
                    "fatal",
                    wid,
                    "the source session holding the snapshot was lost",
                    "re-run with --resume: unfinished tables are copied again under a new snapshot",
                )
            )
            return
