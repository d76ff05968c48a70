"""The state store: a ``pgmigrator`` schema on the destination.

It records, per pipeline name, the slot and its consistent point, the phase reached, every table's
copy state (with the LSN of the snapshot it was copied under, DESIGN.md rule 2), every chunk,
every post-data statement, and the tables whose replica identity it set to FULL on the source.
Chunk rows are committed in the same destination transaction as the chunk's data, so the store
never claims more than the destination holds.

Table states follow supabase/etl's machine: ``init -> copying -> copied -> ready`` plus ``errored``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
import psycopg
from psycopg import sql

from pgmigrator.errors import StateError
from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn

SCHEMA = "pgmigrator"

_DDL = """
CREATE SCHEMA IF NOT EXISTS pgmigrator;
CREATE TABLE IF NOT EXISTS pgmigrator.pipelines (
    name text PRIMARY KEY,
    slot text NOT NULL,
    publication text NOT NULL,
    phase text NOT NULL,
    consistent_lsn pg_lsn,
    post_data text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- tables whose REPLICA IDENTITY the pipeline set to FULL on the source: [[schema, name], ...]
-- (added to a store made by an older version; no ALTER, and so no lock, once it is there)
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pgmigrator.pipelines'::regclass
                   AND attname = 'identity_full' AND NOT attisdropped) THEN
        ALTER TABLE pgmigrator.pipelines ADD COLUMN identity_full jsonb NOT NULL DEFAULT '[]';
    END IF;
    -- the clone's table patterns: {"tables": [...], "exclude": [...]} (NULL: an older clone)
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pgmigrator.pipelines'::regclass
                   AND attname = 'selection' AND NOT attisdropped) THEN
        ALTER TABLE pgmigrator.pipelines ADD COLUMN selection jsonb;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS pgmigrator.tables (
    pipeline text NOT NULL REFERENCES pgmigrator.pipelines (name) ON DELETE CASCADE,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL DEFAULT 'init',
    sync_lsn pg_lsn,
    rows bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    copies int NOT NULL DEFAULT 0,
    error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, schema_name, table_name)
);
CREATE TABLE IF NOT EXISTS pgmigrator.chunks (
    pipeline text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    chunk int NOT NULL,
    lo_block bigint,
    hi_block bigint,
    done boolean NOT NULL DEFAULT false,
    rows bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (pipeline, schema_name, table_name, chunk),
    FOREIGN KEY (pipeline, schema_name, table_name) REFERENCES pgmigrator.tables ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS pgmigrator.sentinels (
    id text PRIMARY KEY,
    pipeline text NOT NULL,
    source_lsn pg_lsn NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- large objects the pipeline copied: those the source unlinks since are unlinked at the switchover
CREATE TABLE IF NOT EXISTS pgmigrator.large_objects (
    pipeline text NOT NULL REFERENCES pgmigrator.pipelines (name) ON DELETE CASCADE,
    loid oid NOT NULL,
    PRIMARY KEY (pipeline, loid)
);
CREATE TABLE IF NOT EXISTS pgmigrator.post_data (
    pipeline text NOT NULL REFERENCES pgmigrator.pipelines (name) ON DELETE CASCADE,
    seq int NOT NULL,
    done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (pipeline, seq)
);
"""

TABLE_STATES = ("init", "copying", "copied", "catching_up", "ready", "errored")


@dataclass(frozen=True, slots=True)
class PipelineRow:
    name: str
    slot: str
    publication: str
    phase: str
    consistent_lsn: Lsn | None
    post_data: str | None


@dataclass(frozen=True, slots=True)
class TableRow:
    schema: str
    name: str
    state: str
    sync_lsn: Lsn | None
    rows: int
    bytes: int
    copies: int


@dataclass(frozen=True, slots=True)
class ChunkRow:
    schema: str
    name: str
    chunk: int
    lo_block: int | None
    hi_block: int | None
    done: bool


def _lsn(value: object) -> Lsn | None:
    return None if value is None else Lsn.parse(str(value))


class StateStore:
    """Reads and writes one pipeline's rows. All methods commit (autocommit connection)."""

    def __init__(self, conn: Conn, pipeline: str) -> None:
        self.conn = conn
        self.pipeline = pipeline

    def ensure_schema(self) -> None:
        self.conn.execute(_DDL)

    def exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass('pgmigrator.pipelines') IS NOT NULL").fetchone()
        return bool(row and row[0])

    def load(self) -> PipelineRow | None:
        if not self.exists():
            return None
        row = self.conn.execute(
            "SELECT name, slot, publication, phase, consistent_lsn::text, post_data FROM pgmigrator.pipelines WHERE name = %s",
            (self.pipeline,),
        ).fetchone()
        return (
            None
            if row is None
            else PipelineRow(row[0], row[1], row[2], row[3], _lsn(row[4]), row[5])
        )

    def require(self) -> PipelineRow:
        row = self.load()
        if row is None:
            raise StateError(
                f"no state for pipeline {self.pipeline!r} on the destination",
                hint="run `pgmigrator clone` first (or pass the --name used then)",
            )
        return row

    def create(self, slot: str, publication: str, phase: str) -> None:
        self.conn.execute(
            "INSERT INTO pgmigrator.pipelines (name, slot, publication, phase) VALUES (%s, %s, %s, %s)",
            (self.pipeline, slot, publication, phase),
        )

    def update(self, **fields: object) -> None:
        assigns = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
        )
        query = sql.SQL(
            "UPDATE pgmigrator.pipelines SET {}, updated_at = now() WHERE name = %(_name)s"
        ).format(assigns)
        self.conn.execute(
            query,
            {
                **{k: (str(v) if isinstance(v, Lsn) else v) for k, v in fields.items()},
                "_name": self.pipeline,
            },
        )

    def set_selection(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        """Record the clone's table patterns (which tables the pipeline means to carry)."""
        doc = orjson.dumps({"tables": list(include), "exclude": list(exclude)}).decode()
        self.conn.execute(
            "UPDATE pgmigrator.pipelines SET selection = %s::jsonb WHERE name = %s",
            (doc, self.pipeline),
        )

    def selection(self) -> tuple[list[str], list[str]] | None:
        """The clone's (include, exclude) table patterns; None for a clone that did not record them."""
        row = self.conn.execute(
            "SELECT selection FROM pgmigrator.pipelines WHERE name = %s", (self.pipeline,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return list(row[0].get("tables", [])), list(row[0].get("exclude", []))

    def set_phase(self, phase: str) -> None:
        self.update(phase=phase)

    def tables(self) -> list[TableRow]:
        rows = self.conn.execute(
            "SELECT schema_name, table_name, state, sync_lsn::text, rows, bytes, copies FROM pgmigrator.tables"
            " WHERE pipeline = %s ORDER BY schema_name, table_name",
            (self.pipeline,),
        ).fetchall()
        return [TableRow(r[0], r[1], r[2], _lsn(r[3]), r[4], r[5], r[6]) for r in rows]

    def chunks(self) -> list[ChunkRow]:
        rows = self.conn.execute(
            "SELECT schema_name, table_name, chunk, lo_block, hi_block, done FROM pgmigrator.chunks"
            " WHERE pipeline = %s ORDER BY schema_name, table_name, chunk",
            (self.pipeline,),
        ).fetchall()
        return [ChunkRow(*r) for r in rows]

    def plan_table(
        self,
        schema: str,
        name: str,
        ranges: list[tuple[int | None, int | None]],
        sync_lsn: Lsn | None,
    ) -> None:
        """(Re)start a table's copy: state ``copying``, the snapshot's LSN and fresh chunks, atomically."""
        lsn = None if sync_lsn is None else str(sync_lsn)
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO pgmigrator.tables (pipeline, schema_name, table_name, state, sync_lsn, copies)"
                " VALUES (%s, %s, %s, 'copying', %s::pg_lsn, 1) ON CONFLICT (pipeline, schema_name, table_name) DO UPDATE"
                " SET state = 'copying', sync_lsn = excluded.sync_lsn, rows = 0, bytes = 0,"
                " copies = pgmigrator.tables.copies + 1, error = NULL, updated_at = now()",
                (self.pipeline, schema, name, lsn),
            )
            self.conn.execute(
                "DELETE FROM pgmigrator.chunks WHERE pipeline = %s AND schema_name = %s AND table_name = %s",
                (self.pipeline, schema, name),
            )
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pgmigrator.chunks (pipeline, schema_name, table_name, chunk, lo_block, hi_block)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(self.pipeline, schema, name, i, lo, hi) for i, (lo, hi) in enumerate(ranges)],
                )

    def table_copied(self, schema: str, name: str) -> None:
        self.conn.execute(
            "UPDATE pgmigrator.tables t SET state = 'copied', updated_at = now(),"
            " rows = (SELECT coalesce(sum(rows), 0) FROM pgmigrator.chunks c WHERE c.pipeline = t.pipeline"
            "   AND c.schema_name = t.schema_name AND c.table_name = t.table_name),"
            " bytes = (SELECT coalesce(sum(bytes), 0) FROM pgmigrator.chunks c WHERE c.pipeline = t.pipeline"
            "   AND c.schema_name = t.schema_name AND c.table_name = t.table_name)"
            " WHERE pipeline = %s AND schema_name = %s AND table_name = %s",
            (self.pipeline, schema, name),
        )

    def set_table_state(self, schema: str, name: str, state: str, error: str | None = None) -> None:
        if state not in TABLE_STATES:
            raise ValueError(f"unknown table state {state!r}")
        self.conn.execute(
            "UPDATE pgmigrator.tables SET state = %s, error = %s, updated_at = now()"
            " WHERE pipeline = %s AND schema_name = %s AND table_name = %s",
            (state, error, self.pipeline, schema, name),
        )

    def post_data_done(self) -> set[int]:
        rows = self.conn.execute(
            "SELECT seq FROM pgmigrator.post_data WHERE pipeline = %s AND done", (self.pipeline,)
        )
        return {r[0] for r in rows.fetchall()}

    def add_identity_full(self, tables: Iterable[tuple[str, str]]) -> None:
        """Record tables whose replica identity the pipeline set to FULL (`cleanup` restores them)."""
        pairs = [list(t) for t in tables]
        if pairs:
            self.conn.execute(
                "UPDATE pgmigrator.pipelines SET identity_full = identity_full || %s::jsonb"
                " WHERE name = %s",
                (orjson.dumps(pairs).decode(), self.pipeline),
            )

    def identity_full(self) -> list[tuple[str, str]]:
        """The tables recorded by `add_identity_full` (none for a state kept by an older version)."""
        try:
            with self.conn.transaction():
                row = self.conn.execute(
                    "SELECT identity_full::text FROM pgmigrator.pipelines WHERE name = %s",
                    (self.pipeline,),
                ).fetchone()
        except psycopg.errors.UndefinedColumn:
            return []
        pairs = orjson.loads(row[0]) if row else []
        return sorted({(str(p[0]), str(p[1])) for p in pairs})

    def large_objects(self) -> set[int]:
        """The large objects this pipeline copied to the destination."""
        rows = self.conn.execute(
            "SELECT loid::bigint FROM pgmigrator.large_objects WHERE pipeline = %s",
            (self.pipeline,),
        )
        return {int(r[0]) for r in rows}

    def record_large_objects(self, added: Sequence[int], removed: Sequence[int]) -> None:
        """Remember the large objects copied (``added``) and unlinked (``removed``)."""
        if added:
            self.conn.execute(
                "INSERT INTO pgmigrator.large_objects (pipeline, loid)"
                " SELECT %s, o FROM unnest(%s::oid[]) AS u(o) ON CONFLICT DO NOTHING",
                (self.pipeline, list(added)),
            )
        if removed:
            self.conn.execute(
                "DELETE FROM pgmigrator.large_objects WHERE pipeline = %s AND loid = ANY(%s::oid[])",
                (self.pipeline, list(removed)),
            )

    def drop_pipeline(self) -> None:
        if self.exists():
            self.conn.execute("DELETE FROM pgmigrator.pipelines WHERE name = %s", (self.pipeline,))


def chunk_done_sql() -> bytes:
    """The statement a copy worker runs in the chunk's own transaction (parameters $1..$6)."""
    return (
        b"UPDATE pgmigrator.chunks SET done = true, rows = $5, bytes = $6"
        b" WHERE pipeline = $1 AND schema_name = $2 AND table_name = $3 AND chunk = $4"
    )


def post_data_done_sql() -> str:
    return (
        "INSERT INTO pgmigrator.post_data (pipeline, seq, done) VALUES (%s, %s, true)"
        " ON CONFLICT (pipeline, seq) DO UPDATE SET done = true"
    )


def sentinel_insert_sql() -> str:
    """Run by the applier inside the batch transaction that carries the sentinel (exact proof)."""
    return (
        "INSERT INTO pgmigrator.sentinels (id, pipeline, source_lsn) VALUES (%s, %s, %s::pg_lsn)"
        " ON CONFLICT (id) DO NOTHING"
    )
