"""``verify --live``: both sides checked at the same point while the application writes.

A plain `verify` reads each side when it gets to it: with writes going on and ``follow``
applying them a few milliseconds later, the two reads never see the same rows. The live check
lines both sides up first, then checksums at leisure:

1. a sentinel (`sentinel`) without any lock proves that the pipeline's follower runs and keeps
   up (else the command stops here, having locked nothing);
2. the checked tables are locked on the source ``IN SHARE MODE`` (reads go on; writers wait;
   the wait for the lock is bounded by ``lock_timeout`` and retried); no write to them can be in
   flight, so a snapshot taken now holds every write they will ever get until the lock ends. That
   snapshot is exported and imported by the source's checksum sessions;
3. a second sentinel: once the follower applied it, the destination holds everything committed
   before the lock, and nothing later can reach the locked tables. A destination snapshot is
   exported and imported by the destination's checksum sessions, and the lock is released.

Writes to the checked tables wait from 2 to 3: the follower's lag at that moment (milliseconds
when it is caught up), never more than ``lock_timeout_s`` once the lock is granted (else it is
released and nothing is checked). Both snapshots live on in the
checksum sessions' transactions, which then read exactly the same rows on both sides.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, PreflightError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn, connect, translate
from pgmigrator.pipeline import sentinel
from pgmigrator.pipeline.bidi_guard import reverse_slot
from pgmigrator.source.catalog import TableInfo
from pgmigrator.store.state import StateStore

log = get_logger("verify")


class LiveVerifyFailed(PgMigratorError):
    """The two sides could not be lined up (no follower, a lock not granted); nothing was checked."""

    retryable = True


@dataclass(frozen=True, slots=True)
class LiveOptions:
    pipeline: str
    lock_timeout_s: float = 2.0
    lock_attempts: int = 3
    follower_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class LivePoint:
    lsn: Lsn  # the second sentinel's: both sides hold the checked tables as of there
    paused_s: float  # how long writes to the checked tables waited for the line-up (at most)
    groups: int = 1  # line-ups: one per `GROUP_TABLES` tables (the last one's LSN above)


#: Tables lined up (locked, then checked in one snapshot) together. Every table a snapshot
#: session reads stays locked (ACCESS SHARE, its indexes too) until that session's transaction
#: ends, and the lock table is shared and finite (max_locks_per_transaction x connections):
#: groups keep the locks held at once bounded whatever the number of tables.
GROUP_TABLES = 256


class SessionPool:
    """A fixed set of connections to one server that share one imported snapshot; each query
    borrows one (`borrow`). A connection lost mid-check cannot be replaced (its snapshot is gone):
    the query fails, and its table is reported as an error."""

    def __init__(self, target: Target, size: int) -> None:
        self.target = target
        self._conns: list[Conn] = []
        self._free: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        try:
            for _ in range(max(1, size)):
                self._conns.append(connect(target))
        except BaseException:
            self.close()
            raise

    def export(self) -> str:
        """Start the first session's snapshot now and export it (for `attach` of the others)."""
        first = self._conns[0]
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = first.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        self._free.put(first)
        return str(row[0])

    def release(self) -> None:
        """End the sessions' transactions (and their locks and snapshot); every session must be
        back in the pool. `export` / `attach` give them the next one."""
        self._free = queue.SimpleQueue()
        for conn in self._conns:
            conn.execute("COMMIT")

    def attach(self, snapshot: str, start: int = 0) -> None:
        """Make the sessions from ``start`` on read in ``snapshot`` (while its exporter is open)."""
        for conn in self._conns[start:]:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")  # server-made: [0-9A-F-]
            self._free.put(conn)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Conn]:
        conn = self._free.get()
        try:
            yield conn
        finally:
            self._free.put(conn)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


def pipeline_tables(dest: Target, pipeline: str) -> set[tuple[str, str]]:
    """The tables ``pipeline`` replicates, from its state on the destination (`StateError` when
    there is no such pipeline: a live check needs its follower)."""
    with connect(dest) as dst:
        store = StateStore(dst, pipeline)
        store.require()
        return {(t.schema, t.name) for t in store.tables()}


class LineUp:
    """The line-ups of one live check, on connections opened once, on entering it: a sentinel
    emitter and the lock holder on the source, a watcher on the destination. Entering also proves
    the follower keeps up, before anything is locked; `group` lines up one group of tables."""

    def __init__(
        self,
        source: Target,
        dest: Target,
        options: LiveOptions,
        on_source: SessionPool,
        on_dest: SessionPool,
    ) -> None:
        self.source, self.dest, self.options = source, dest, options
        self.on_source, self.on_dest = on_source, on_dest
        self._conns = contextlib.ExitStack()

    def __enter__(self) -> LineUp:
        with self._conns as conns:
            self.emitter = conns.enter_context(connect(self.source))
            self.locker = conns.enter_context(connect(self.source))
            self.watcher = conns.enter_context(connect(self.dest))
            if reverse_slot(self.watcher, self.options.pipeline) is not None:
                log.warning(
                    "bidirectional pipeline: writes to the destination during the check show as "
                    "differences",
                    pipeline=self.options.pipeline,
                )
            _await(self.emitter, self.watcher, self.options.follower_timeout_s, self.options, "")
            self._conns = conns.pop_all()  # kept open until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        self._conns.close()

    def group(self, tables: Sequence[TableInfo]) -> LivePoint:
        """Give the pools' sessions snapshots holding the same rows of ``tables``."""
        options, locker = self.options, self.locker
        started = _lock(locker, self.source, tables, options)
        try:
            row = locker.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            self.on_source.attach(str(row[0]))
            # under the lock, writers wait: bounded by --lock-timeout too (the first sentinel
            # showed the follower keeps up), then the lock goes and nothing is checked
            lsn = _await(
                self.emitter,
                self.watcher,
                options.lock_timeout_s,
                options,
                " while the tables were locked",
            )
            self.on_dest.attach(self.on_dest.export(), start=1)
        finally:
            with contextlib.suppress(psycopg.Error):
                locker.execute("ROLLBACK")
        paused = time.monotonic() - started
        log.info(
            "sides lined up", lsn=str(lsn), tables=len(tables), writes_paused_s=round(paused, 3)
        )
        return LivePoint(lsn, paused)


def _await(emitter: Conn, watcher: Conn, timeout: float, options: LiveOptions, when: str) -> Lsn:
    sentinel_id, lsn = sentinel.emit(emitter, "verify", options.pipeline)
    sentinel.await_applied(
        watcher,
        sentinel_id,
        timeout,
        lambda: LiveVerifyFailed(
            f"pipeline {options.pipeline!r}: the destination did not apply a sentinel within "
            f"{timeout:g} s{when}; nothing was checked",
            hint="`verify --live` needs the pipeline's follower running (not paused) and caught "
            "up: start `pgmigrator follow` or resume it (see `pgmigrator status`), or raise "
            "--follower-timeout (--lock-timeout bounds the wait under the lock); without writes "
            "on the source, plain `verify` is enough",
        ),
    )
    return lsn


def _lock(conn: Conn, source: Target, tables: Sequence[TableInfo], options: LiveOptions) -> float:
    """Lock ``tables`` IN SHARE MODE in a REPEATABLE READ transaction left open on ``conn``;
    returns when (monotonic) the attempt that got the lock asked for it: writers queue behind a
    lock request from then on.

    Only SET and LOCK run before the lock is granted: neither takes the transaction's snapshot,
    which the first query after them does."""
    names = sorted({(t.schema, t.name) for t in tables})
    stmt = sql.SQL("LOCK TABLE ONLY {} IN SHARE MODE").format(
        sql.SQL(", ").join(sql.Identifier(*n) for n in names)
    )
    timeout = f"{int(options.lock_timeout_s * 1000)}ms"
    for attempt in range(1, options.lock_attempts + 1):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        asked = time.monotonic()
        try:
            conn.execute(f"SET LOCAL lock_timeout = '{timeout}'".encode())
            conn.execute(stmt)
            conn.execute("SET LOCAL lock_timeout = 0")
            return asked
        except psycopg.errors.LockNotAvailable:
            conn.execute("ROLLBACK")
            log.warning("tables busy, lock not granted", attempt=attempt, lock_timeout=timeout)
            time.sleep(min(1.0, options.lock_timeout_s))  # let the queued writers through
        except psycopg.Error as exc:
            conn.execute("ROLLBACK")
            err = translate(exc, source, "locking the checked tables")
            raise PreflightError(
                err.message,
                hint="`verify --live` locks the checked tables IN SHARE MODE on the source "
                "(UPDATE, DELETE or TRUNCATE privilege on each): run it as their owner",
            ) from exc
    raise LiveVerifyFailed(
        f"the checked tables stayed busy on the source: a SHARE lock on {len(names)} table(s) "
        f"was not granted within {options.lock_timeout_s:g} s, {options.lock_attempts} times; "
        "nothing was checked",
        hint="a long transaction writes to them (see pg_stat_activity): retry when it ended, "
        "raise --lock-timeout, or check fewer tables at a time (--tables)",
    )
