"""The ``pg_table`` sink: events inserted, in batches, into a PostgreSQL table of any database.

The table (``table``: ``schema.name``, or ``name`` in ``public``) is created when missing::

    id text PRIMARY KEY, lsn pg_lsn, op text, schema_name text, table_name text,
    event jsonb, received_at timestamptz DEFAULT now()

A batch is one transaction: COPY of the rows into a session temporary table, then
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING`` and COMMIT. Events delivered again after a
restart (same id) are ignored, so the table holds each event once. Retryable failures (lost
connection, server restarting, serialization failures) reconnect and retry the whole batch with
backoff (``retry`` options); other failures raise `SinkError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pgmigrator import dsn as dsnlib
from pgmigrator.errors import RetryableSinkError, SinkError, is_retryable
from pgmigrator.log import get_logger
from pgmigrator.pg import timeouts_off_sql
from pgmigrator.sinks._backoff import BackoffOptions, fold_flat
from pgmigrator.sinks.base import Event, SinkContext, register

log = get_logger("sink.pg_table")

COLUMNS = ("id", "lsn", "op", "schema_name", "table_name", "event")
_STAGE = "pgmigrator_sink_stage"
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, lsn pg_lsn, op text, schema_name text,"
    " table_name text, event jsonb, received_at timestamptz NOT NULL DEFAULT now())"
)
_CREATE_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS {} (id text, lsn pg_lsn, op text, schema_name text,"
    " table_name text, event jsonb) ON COMMIT DELETE ROWS"
)


class PgTableOptions(BaseModel):
    """Options of a ``pg_table`` sink."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        data = fold_flat(data, "retry_", "retry")
        return data

    dsn: SecretStr
    table: str = "public.pgmigrator_events"
    create: bool = True
    connect_timeout_s: float = Field(default=10.0, gt=0)
    retry: BackoffOptions = Field(default_factory=lambda: BackoffOptions())

    @field_validator("table")
    @classmethod
    def _qualified(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or not all(parts):
            raise ValueError("table must be NAME or SCHEMA.NAME")
        return value

    def target(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or "public", name


_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))


def _copy_field(value: bytes) -> bytes:
    for raw, escaped in _ESCAPES:
        if raw in value:
            value = value.replace(raw, escaped)
    return value


def copy_text(events: Sequence[Event]) -> bytes:
    """The batch as COPY text rows: id, lsn, op, schema_name, table_name, event."""
    rows = []
    for e in events:
        schema = b"\\N" if e.schema is None else _copy_field(e.schema.encode())
        table = b"\\N" if e.table is None else _copy_field(e.table.encode())
        rows.append(
            b"\t".join(
                (
                    _copy_field(e.id.encode()),
                    str(e.lsn).encode(),
                    _copy_field(e.op.encode()),
                    schema,
                    table,
                    _copy_field(e.body),
                )
            )
        )
    rows.append(b"")
    return b"\n".join(rows)


class PgTableSink:
    """Insert events into one table; see the module docstring."""

    durable = True

    def __init__(self, name: str, opts: PgTableOptions, ctx: SinkContext) -> None:
        self.name = name
        self.opts = opts
        self.ctx = ctx
        self._dsn = opts.dsn.get_secret_value()
        self._schema, self._table = opts.target()
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        target = sql.Identifier(self._schema, self._table)
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(_STAGE), cols)
        self._insert = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT (id) DO NOTHING"
        ).format(target, cols, cols, sql.Identifier(_STAGE))

    async def start(self) -> None:
        try:
            await self._connect()
        except SinkError:
            raise
        except psycopg.Error as exc:
            raise self._error(exc, "cannot prepare the table") from exc

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn,
            connect_timeout=max(1, int(self.opts.connect_timeout_s)),
            application_name=f"pgmigrator sink {self.name}",
        )
        try:
            await self._prepare(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        log.info(
            "pg_table sink ready",
            sink=self.name,
            table=f"{self._schema}.{self._table}",
            dsn=dsnlib.redact(self._dsn),
        )

    async def _prepare(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        await conn.execute(timeouts_off_sql(conn.info.server_version).encode())
        schema, table = sql.Identifier(self._schema), sql.Identifier(self._schema, self._table)
        if self.opts.create:
            cur = await conn.execute(
                "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
                (schema.as_string(conn), table.as_string(conn)),
            )
            has_schema, has_table = await cur.fetchone() or (False, False)
            if not has_schema:
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            if not has_table:
                await conn.execute(sql.SQL(_CREATE).format(table))
        await self._check_columns(conn, table.as_string(conn))
        await conn.execute(sql.SQL(_CREATE_STAGE).format(sql.Identifier(_STAGE)))
        await conn.commit()

    async def _check_columns(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], qualified: str
    ) -> None:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, ARRAY(SELECT attname::text FROM pg_attribute"
            " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped)",
            (qualified, qualified),
        )
        row = await cur.fetchone()
        exists, names = (bool(row[0]), cast(list[str], row[1])) if row else (False, [])
        if not exists:
            raise SinkError(
                f"pg_table sink {self.name}: table {self._schema}.{self._table} does not exist",
                hint="create it, or set create: true to let the sink create it",
            )
        missing = [c for c in COLUMNS if c not in set(names)]
        if missing:
            raise SinkError(
                f"pg_table sink {self.name}: table {self._schema}.{self._table} lacks the "
                f"column(s) {', '.join(missing)}",
                hint=f"the sink writes {', '.join(COLUMNS)} (id text primary key, event jsonb)",
            )

    async def send(self, events: Sequence[Event]) -> None:
        if not events:
            return
        data = copy_text(events)
        tries = 0
        while True:
            tries += 1
            try:
                if self._conn is None or self._conn.closed:
                    await self._connect()
                await self._write(data)
                return
            except psycopg.Error as exc:
                await self._drop_connection()
                if not is_retryable(exc):
                    raise self._error(exc, "insert failed") from exc
                if self.opts.retry.exhausted(tries):
                    raise RetryableSinkError(
                        f"pg_table sink {self.name}: gave up after {tries} attempts: {exc}",
                        hint="check that the database is reachable",
                    ) from exc
                delay = self.opts.retry.delay(tries)
                log.warning(
                    "pg_table insert failed, reconnecting",
                    sink=self.name,
                    error=str(exc).strip(),
                    attempt=tries,
                    retry_in_s=round(delay, 3),
                )
                if self.ctx.collector is not None:
                    self.ctx.collector.sink_counter(self.name, retried=1)
                await asyncio.sleep(delay)

    async def _write(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None
        async with conn.cursor() as cur:
            async with cur.copy(self._copy) as copy:
                await copy.write(data)
            await cur.execute(self._insert)
        await conn.commit()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _error(self, exc: psycopg.Error, what: str) -> SinkError:
        sqlstate = getattr(exc, "sqlstate", None)
        cls = RetryableSinkError if is_retryable(exc) else SinkError
        return cls(
            f"pg_table sink {self.name}: {what} on {self._schema}.{self._table}: "
            f"{str(exc).strip()}" + (f" (SQLSTATE {sqlstate})" if sqlstate else ""),
            hint="check the dsn, that the table has the expected columns "
            f"({', '.join(COLUMNS)}) and a unique id, and the role's privileges",
        )

    async def close(self) -> None:
        await self._drop_connection()


@register("pg_table", PgTableOptions)
def make_pg_table(name: str, opts: PgTableOptions, ctx: SinkContext) -> PgTableSink:
    return PgTableSink(name, opts, ctx)
