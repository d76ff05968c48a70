"""Applying dumped schema sections to the destination.

Pre-data runs in one transaction together with the state store's phase change: a crash leaves
either all of it or none. Post-data entries (index builds, constraints) run on several connections
wave by wave; each entry commits with its "done" mark so a resumed clone skips what was built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


def apply_post_data(
    dest: Target, script: Script, pipeline: str, done: set[int], workers: int
) -> None:
    todo = [e for e in script.entries if e.seq not in done]
    local = threading.local()
    conns: list[Conn] = []

    def run(entry: Entry) -> None:
        conn: Conn | None = getattr(local, "conn", None)
        if conn is None:
            conn = connect(dest)
            conn.execute("SET maintenance_work_mem = '256MB'")
            if script.preamble.strip():
                conn.execute(script.preamble)
            local.conn = conn
            conns.append(conn)
        _run_entry(conn, entry, pipeline, dest)

    try:
        with ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="post-data"
        ) as pool:
            for wave in waves(todo):
                list(pool.map(run, wave))
    finally:
        for conn in conns:
            conn.close()
    log.info("post-data applied", entries=len(todo), skipped=len(done))


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
