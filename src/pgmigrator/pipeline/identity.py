"""Giving back the replica identities a pipeline set to FULL (``--keyless-tables full``).

The clone (and ``resync --add``) records every table it made ``REPLICA IDENTITY FULL`` in the
pipeline's state; the schema dump carried FULL to the destination too. FULL makes every UPDATE and
DELETE on such a table log its whole old row while ``wal_level`` is ``logical``, on the source and,
after a switchover, on the destination. `restore` sets them back to ``DEFAULT`` (what they had:
FULL was only set on tables without a key or identity) on both sides, at ``cleanup``. A table is
left as it is, and said why, when another publication still holds it (its consumers may need
FULL), when its identity is no longer FULL (changed since), or when its lock is not granted in
time (a long transaction holds it).

A stream (``stream --create``, ``lake``) has no state store: it records the tables it made FULL
on its own publication, as the publication's comment (`note_full`), which ``cleanup --stream``
reads back (`noted_full`) before dropping the publication.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg
from psycopg import sql

from pgmigrator.pg import Conn
from pgmigrator.source.slots import (
    KEYLESS_LOCK_TIMEOUT,
    alter_identity,
    drop_publication,
    drop_slot,
)

# The table's identity, and the publications (other than the one being dropped) that hold it or
# one of its ancestors (a partition may publish through its root): pg_publication_tables expands
# FOR ALL TABLES and FOR TABLES IN SCHEMA publications too.
_STATE = """
SELECT c.relreplident,
       ARRAY(SELECT DISTINCT pt.pubname::text FROM pg_catalog.pg_publication_tables pt
             JOIN pg_catalog.pg_namespace an ON an.nspname = pt.schemaname
             JOIN pg_catalog.pg_class a ON a.relnamespace = an.oid AND a.relname = pt.tablename
             WHERE pt.pubname <> %(skip)s
               AND (a.oid = c.oid  -- (pg_partition_ancestors is empty for a plain table)
                    OR a.oid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(c.oid))))
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(name)s
"""


def restore(conn: Conn, side: str, tables: Sequence[tuple[str, str]], dropped: str) -> list[str]:
    """Set ``tables`` back to REPLICA IDENTITY DEFAULT on ``conn``; one line per table."""
    done = []
    for schema, name in tables:
        qualified = f"{schema}.{name}"
        row = conn.execute(_STATE, {"skip": dropped, "schema": schema, "name": name}).fetchone()
        if row is None or row[0] != "f":
            continue  # gone, or changed by someone since: theirs now
        if row[1]:
            done.append(
                f"left REPLICA IDENTITY FULL on {qualified} on the {side}: publication(s)"
                f" {', '.join(row[1])} still hold it"
            )
            continue
        done.append(_set_default(conn, side, schema, name))
    return done


def retire_source(
    src: Conn,
    slot: str | None,
    publication: str | None,
    made_full: Sequence[tuple[str, str]],
    held_by: str,
) -> list[str]:
    """Drop ``slot`` and ``publication`` on the source (None: keep it), then give back the
    identities in ``made_full`` (`restore`; publication ``held_by`` no longer counts as holding
    them). One line per thing done."""
    done = []
    if slot is not None and drop_slot(src, slot):
        done.append(f"dropped replication slot {slot} on the source")
    if publication is not None and drop_publication(src, publication):
        done.append(f"dropped publication {publication} on the source")
    return done + restore(src, "source", made_full, held_by)


def _set_default(conn: Conn, side: str, schema: str, name: str) -> str:
    qualified = f"{schema}.{name}"
    try:
        alter_identity(conn, sql.Identifier(schema, name), "DEFAULT")
    except psycopg.errors.LockNotAvailable:
        return (
            f"left REPLICA IDENTITY FULL on {qualified} on the {side}: its lock was not granted"
            f" within {KEYLESS_LOCK_TIMEOUT} (run ALTER TABLE ... REPLICA IDENTITY DEFAULT later)"
        )
    return (
        f"reset REPLICA IDENTITY of {qualified} to DEFAULT on the {side} (set FULL by pgmigrator)"
    )


_NOTE = (
    "pgmigrator set REPLICA IDENTITY FULL on these tables for this publication;"
    " `pgmigrator cleanup --stream` sets them back to DEFAULT: "
)


def note_full(conn: Conn, publication: str, tables: Sequence[tuple[str, str]]) -> None:
    """Add ``tables`` to the FULL tables recorded in ``publication``'s comment."""
    have = noted_full(conn, publication)
    every = sorted({*have, *tables})
    if every != have:
        conn.execute(
            sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                sql.Identifier(publication), sql.Literal(_NOTE + json.dumps(every))
            )
        )


def noted_full(conn: Conn, publication: str) -> list[tuple[str, str]]:
    """The tables `note_full` recorded on ``publication`` (none: no such comment)."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
        (publication,),
    ).fetchone()
    text = str(row[0]) if row and row[0] else ""
    if not text.startswith(_NOTE):
        return []
    try:
        return sorted((str(schema), str(name)) for schema, name in json.loads(text[len(_NOTE) :]))
    except (ValueError, TypeError):  # edited by hand into something else: nothing to give back
        return []
