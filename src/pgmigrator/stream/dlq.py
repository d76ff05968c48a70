"""The dead-letter queue: events a sink gave up on, kept in a PostgreSQL table, listable, replayable.

When a sink rejects a batch for good (a non-retryable error, or a retryable one after its last
attempt), the bus hands the events here and moves on: the stream is not stuck behind one bad event
or one dead receiver, and nothing is lost. Entries live in ``pgmigrator.dead_letters`` of the
database named by ``dlq.dsn`` (default: the pipeline's destination). One row per (pipeline, sink,
event id): dead-lettering the same event again (after a replay failed) updates that row's error,
attempts and time instead of duplicating it. ``replay`` re-sends entries to a sink in their
original order (by LSN, then id) and marks them replayed; ``purge`` deletes entries.

Writes are one round trip per batch (a multi-row ``INSERT ... SELECT FROM unnest``); the table is
created on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, SinkError
from pgmigrator.log import get_logger
from pgmigrator.lsn import Lsn
from pgmigrator.pg import timeouts_off_sql, translate
from pgmigrator.sinks.base import Event, Sink

log = get_logger("dlq")

_DDL = """
CREATE SCHEMA IF NOT EXISTS pgmigrator;
CREATE TABLE IF NOT EXISTS pgmigrator.dead_letters (
    id bigserial PRIMARY KEY,
    pipeline text NOT NULL,
    sink text NOT NULL,
    event_id text NOT NULL,
    lsn pg_lsn NOT NULL,
    op text NOT NULL,
    schema_name text,
    table_name text,
    event jsonb NOT NULL,
    error text NOT NULL,
    attempts int NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    failed_at timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (pipeline, sink, event_id)
);
"""

_INSERT = """
INSERT INTO pgmigrator.dead_letters
    (pipeline, sink, event_id, lsn, op, schema_name, table_name, event, error, attempts)
SELECT %(pipeline)s, %(sink)s, e.id, e.lsn::pg_lsn, e.op, e.sch, e.tab, e.body::jsonb,
       %(error)s, %(attempts)s
FROM unnest(%(ids)s::text[], %(lsns)s::text[], %(ops)s::text[], %(schemas)s::text[],
            %(tables)s::text[], %(bodies)s::text[]) AS e(id, lsn, op, sch, tab, body)
ON CONFLICT (pipeline, sink, event_id) DO UPDATE
SET error = EXCLUDED.error, attempts = pgmigrator.dead_letters.attempts + EXCLUDED.attempts,
    failed_at = now(), replayed_at = NULL
"""

_COLUMNS = (
    "id, pipeline, sink, event_id, lsn::text AS lsn, op, schema_name, table_name, error, attempts,"
    " first_failed_at, failed_at, replayed_at"
)


@dataclass(frozen=True)
class Filters:
    """Which entries a list / replay / purge touches; None means any."""

    sink: str | None = None
    table: str | None = None  # schema.table
    since: datetime | None = None
    ids: tuple[int, ...] = ()
    replayed: bool | None = None  # True: only replayed ones, False: only pending ones

    def where(self, pipeline: str) -> tuple[sql.Composed, dict[str, Any]]:
        parts: list[sql.Composable] = [sql.SQL("pipeline = %(pipeline)s")]
        params: dict[str, Any] = {"pipeline": pipeline}
        if self.sink is not None:
            parts.append(sql.SQL("sink = %(sink)s"))
            params["sink"] = self.sink
        if self.table is not None:
            schema, _, name = self.table.rpartition(".")
            parts.append(sql.SQL("table_name = %(tname)s"))
            params["tname"] = name
            if schema:
                parts.append(sql.SQL("schema_name = %(sname)s"))
                params["sname"] = schema
        if self.since is not None:
            parts.append(sql.SQL("failed_at >= %(since)s"))
            params["since"] = self.since
        if self.ids:
            parts.append(sql.SQL("id = ANY(%(ids)s)"))
            params["ids"] = list(self.ids)
        if self.replayed is not None:
            parts.append(
                sql.SQL("replayed_at IS {} NULL").format(sql.SQL("NOT" if self.replayed else ""))
            )
        return sql.SQL(" AND ").join(parts), params


class DeadLetterQueue:
    """The DLQ of one pipeline in one database; an async connection opened on first use."""

    def __init__(self, target: Target, pipeline: str) -> None:
        self.target = target
        self.pipeline = pipeline
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.target.dsn, autocommit=True, application_name="pgmigrator-dlq"
                )
                await conn.execute(timeouts_off_sql(conn.info.server_version).encode())
                await conn.execute(_DDL)
            except psycopg.Error as exc:
                raise translate(exc, self.target, "opening the dead-letter queue") from exc
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def put(self, sink: str, events: Sequence[Event], error: str, attempts: int) -> None:
        """Store ``events`` that ``sink`` gave up on; one round trip for the whole batch."""
        if not events:
            return
        params = {
            "pipeline": self.pipeline,
            "sink": sink,
            "error": error[:2000],
            "attempts": attempts,
            "ids": [e.id for e in events],
            "lsns": [str(e.lsn) for e in events],
            "ops": [e.op for e in events],
            "schemas": [e.schema for e in events],
            "tables": [e.table for e in events],
            "bodies": [e.body.decode() for e in events],
        }
        try:
            conn = await self._connection()
            await conn.execute(_INSERT, params)
        except psycopg.Error as exc:
            self._conn = None
            raise translate(exc, self.target, "writing to the dead-letter queue") from exc
        log.warning("events dead-lettered", sink=sink, events=len(events), error=error[:200])

    async def entries(self, filters: Filters, limit: int = 100) -> list[dict[str, Any]]:
        where, params = filters.where(self.pipeline)
        query = sql.SQL(
            "SELECT {} FROM pgmigrator.dead_letters WHERE {} ORDER BY id LIMIT {}"
        ).format(sql.SQL(_COLUMNS), where, sql.Literal(int(limit)))
        return await self._fetch(query, params)

    async def show(self, entry_id: int) -> dict[str, Any]:
        rows = await self._fetch(
            sql.SQL(
                "SELECT {}, event FROM pgmigrator.dead_letters WHERE pipeline = %(p)s AND id = %(id)s"
            ).format(sql.SQL(_COLUMNS)),
            {"p": self.pipeline, "id": entry_id},
        )
        if not rows:
            raise PgMigratorError(
                f"no dead-letter entry {entry_id} for pipeline {self.pipeline!r}",
                hint="`pgmigrator dlq list` shows the entries and their ids",
            )
        return rows[0]

    async def count(self, filters: Filters | None = None) -> int:
        where, params = (filters or Filters(replayed=False)).where(self.pipeline)
        rows = await self._fetch(
            sql.SQL("SELECT count(*) AS n FROM pgmigrator.dead_letters WHERE {}").format(where),
            params,
        )
        return int(rows[0]["n"])

    async def purge(self, filters: Filters) -> int:
        where, params = filters.where(self.pipeline)
        conn = await self._connection()
        cur = await conn.execute(
            sql.SQL("DELETE FROM pgmigrator.dead_letters WHERE {}").format(where), params
        )
        return cur.rowcount

    async def replay(self, filters: Filters, sink: Sink, batch: int = 500) -> int:
        """Re-send matching pending entries to ``sink`` in LSN order; mark each batch replayed."""
        where, params = Filters(**{**filters.__dict__, "replayed": False}).where(self.pipeline)
        query = sql.SQL(
            "SELECT id, event_id, lsn::text AS lsn, op, schema_name, table_name, event::text AS body"
            " FROM pgmigrator.dead_letters WHERE {} AND id > %(after)s ORDER BY id LIMIT {}"
        ).format(where, sql.Literal(batch))
        sent, after = 0, 0
        while rows := await self._fetch(query, {**params, "after": after}):
            events = [
                Event(r["event_id"], Lsn.parse(r["lsn"]), r["op"], r["schema_name"],
                      r["table_name"], r["body"].encode())
                for r in sorted(rows, key=lambda r: (Lsn.parse(r["lsn"]), r["id"]))
            ]  # fmt: skip
            try:
                await sink.send(events)
            except Exception as exc:
                raise SinkError(
                    f"replay to sink {sink.name!r} failed after {sent} event(s): {exc}",
                    hint="the entries not replayed stay in the queue; fix the sink and replay again",
                ) from exc
            ids = [r["id"] for r in rows]
            conn = await self._connection()
            await conn.execute(
                "UPDATE pgmigrator.dead_letters SET replayed_at = now() WHERE id = ANY(%s)", (ids,)
            )
            sent += len(events)
            after = max(ids)
        return sent

    async def _fetch(self, query: sql.Composed, params: dict[str, Any]) -> list[dict[str, Any]]:
        conn = await self._connection()
        try:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, params)
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise translate(exc, self.target, "reading the dead-letter queue") from exc
