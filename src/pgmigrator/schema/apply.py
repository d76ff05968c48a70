"""Applying dumped schema sections to the destination.

Pre-data runs in one transaction together with the state store's phase change: a crash leaves
either all of it or none. Post-data entries (index builds, constraints) run on several connections
wave by wave; each entry commits with its "done" mark so a resumed clone skips what was built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, SchemaError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn, connect, translate
from pgmigrator.schema.dump import Entry, Script, waves
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


_OWNERS_SQL = """
SELECT n.nspname, ic.relname, tn.nspname, t.relname
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE t.relkind = 'r'
UNION ALL
SELECT n.nspname, t.relname || ' ' || con.conname, n.nspname, t.relname
FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE t.relkind = 'r' AND con.contype IN ('p', 'u', 'x', 'c')
"""
EARLY_KINDS = frozenset({"INDEX", "CONSTRAINT"})


def entries_by_table(src: Conn, script: Script) -> dict[tuple[str, str], list[Entry]]:
    """Post-data entries that concern one table with rows and nothing else (its indexes, keys, checks).

    They can be built as soon as that table is copied, while the others still copy. Foreign keys,
    triggers, index attachments and partitioned parents wait for the end.
    """
    owners = {(r[0], r[1]): (r[2], r[3]) for r in src.execute(_OWNERS_SQL).fetchall()}
    out: dict[tuple[str, str], list[Entry]] = {}
    for entry in script.entries:
        owner = owners.get((entry.schema, entry.name)) if entry.kind in EARLY_KINDS else None
        if owner is not None:
            out.setdefault(owner, []).append(entry)
    return out


class PostDataBuilder:
    """Builds post-data on ``workers`` connections: per table as soon as it is copied, the rest at the end."""

    def __init__(
        self,
        dest: Target,
        script: Script,
        pipeline: str,
        done: set[int],
        workers: int,
        early: dict[tuple[str, str], list[Entry]] | None = None,
    ) -> None:
        self.dest = dest
        self.script = script
        self.pipeline = pipeline
        self.done = set(done)
        self.early = dict(early or {})
        self.submitted: set[int] = set()
        self._local = threading.local()
        self._conns: list[Conn] = []
        self._futures: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="post-data")

    def table_copied(self, schema: str, name: str) -> None:
        todo = [e for e in self.early.pop((schema, name), []) if e.seq not in self.done]
        if todo:
            self.submitted.update(e.seq for e in todo)
            self._futures.append(self._pool.submit(self._run_all, todo))

    def finish(self) -> None:
        try:
            for future in self._futures:
                future.result()
            rest = [
                e
                for e in self.script.entries
                if e.seq not in self.done and e.seq not in self.submitted
            ]
            for wave in waves(rest):
                list(self._pool.map(self._run, wave))
            log.info(
                "post-data applied", entries=len(self.submitted) + len(rest), skipped=len(self.done)
            )
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _run_all(self, entries: list[Entry]) -> None:
        for entry in entries:
            self._run(entry)

    def _run(self, entry: Entry) -> None:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.dest)
            conn.execute("SET maintenance_work_mem = '256MB'")
            if self.script.preamble.strip():
                conn.execute(self.script.preamble)
            self._local.conn = conn
            self._conns.append(conn)
        _run_entry(conn, entry, self.pipeline, self.dest)


def _run_entry(conn: Conn, entry: Entry, pipeline: str, dest: Target) -> None:
    for attempt in range(1, 6):
        try:
            with conn.transaction():
                conn.execute(entry.sql)
                conn.execute(post_data_done_sql(), (pipeline, entry.seq))
            log.debug("post-data entry", kind=entry.kind, name=entry.name)
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
