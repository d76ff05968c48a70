"""Destination metadata for a source relation: catalog lookup and schema-drift checks.

`describe` maps a pgoutput `Relation` onto the destination table of the same schema and name and
returns a `Table`: what the applier needs to build its statements (column identifiers, the type
to cast each text value to, key positions, identity columns). It refuses, with an `ApplyError`
naming the table, a missing table and columns the source sends but the destination lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from pgmigrator.errors import ApplyError
from pgmigrator.events import Relation
from pgmigrator.log import get_logger

log = get_logger("apply")

# One row per live column of the destination table. ``cast_type`` is the type without its
# modifier (so that an explicit cast never truncates: the assignment checks the modifier);
# ``tmp_type`` is the type for the staging table (domains resolved to their base type, so that a
# staging row may hold NULLs); ``has_eq`` says whether ``=`` exists for the type (json, xml and
# point have none: REPLICA IDENTITY FULL matching then compares their text); the base type's
# oid and name, compared with the source's.
_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, -1),
       pg_catalog.format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                              CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
       a.attnotnull, a.atthasdef, a.attidentity, a.attgenerated,
       EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
               WHERE o.oprname = '=' AND o.oprleft = o.oprright
                 AND (o.oprleft = b.oid
                      OR o.oprleft = CASE b.typtype WHEN 'e' THEN 'anyenum'::regtype
                                                    WHEN 'r' THEN 'anyrange'::regtype
                                                    WHEN 'm' THEN 'anymultirange'::regtype
                                                    WHEN 'c' THEN 'record'::regtype END
                      OR (o.oprleft = 'anyarray'::regtype AND b.typcategory = 'A'
                          AND EXISTS (SELECT 1 FROM pg_catalog.pg_operator e
                                      WHERE e.oprname = '=' AND e.oprleft = b.typelem
                                        AND e.oprright = b.typelem)))),
       b.oid, pg_catalog.format_type(b.oid, NULL)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# Leading columns of the valid, non-partial indexes: an equality join on one of them can use it.
_INDEXED = """
SELECT DISTINCT a.attname FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s AND i.indisvalid AND i.indpred IS NULL
"""
# Unique and exclusion indexes by column names (NULL for an expression column).
_UNIQUE = """
SELECT array_agg(a.attname) FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) AS k(attnum)
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND (i.indisunique OR i.indisexclusion)
GROUP BY i.indexrelid
"""
_CLASS = """
SELECT c.oid, c.relkind FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


@dataclass(eq=False, slots=True)
class Table:
    """How to write one source relation into its destination table.

    Positions index the relation's columns in wire order. ``key`` is empty for a relation
    without a usable key (then ``full`` tells whether whole old rows identify the rows).
    """

    oid: int
    name: str  # schema.name, for messages
    ident: sql.Identifier
    columns: tuple[sql.Identifier, ...]
    # The same names, and the cast types, with '%' doubled: for statements with parameters,
    # whose text psycopg scans for placeholders.
    pident: sql.Identifier
    pcolumns: tuple[sql.Identifier, ...]
    casts: tuple[sql.SQL, ...]
    tmp_types: tuple[sql.SQL, ...]
    key: tuple[int, ...]
    full: bool
    always: frozenset[int]  # GENERATED ALWAYS identity columns
    text_eq: frozenset[int]  # compared as text when matching whole rows
    partitioned: bool
    key_indexed: bool  # an index leads with a key column (else set-based joins hash)
    other_unique: bool  # a unique or exclusion index on other columns than the key
    tmp: sql.Identifier
    relation: Relation
    cache: dict[Any, Any] = field(default_factory=dict)  # built statements

    @property
    def overriding(self) -> sql.SQL:
        """``OVERRIDING SYSTEM VALUE`` when an identity column is GENERATED ALWAYS."""
        return sql.SQL("OVERRIDING SYSTEM VALUE " if self.always else "")


def describe(cur: Any, rel: Relation) -> Table:
    """Look ``rel`` up on the destination through cursor ``cur``; raise `ApplyError` on drift."""
    name = f"{rel.namespace}.{rel.name}"
    found = cur.execute(_CLASS, (rel.namespace, rel.name)).fetchone()
    if found is None or found[1] not in ("r", "p"):
        what = "does not exist" if found is None else f"is not a table (relkind {found[1]!r})"
        raise ApplyError(
            f"table {name} {what} on the destination",
            hint="create it on the destination (same schema and name as on the source), "
            "then restart `follow`",
        )
    conn = cur.connection
    with conn.pipeline():  # the three lookups in one round trip (thousands of tables add up)
        queries = [conn.cursor().execute(q, (found[0],)) for q in (_COLUMNS, _INDEXED, _UNIQUE)]
    columns, indexes, unique = (q.fetchall() for q in queries)
    dest = {row[0]: row for row in columns}
    _check_drift(name, rel, dest)
    _warn_retyped(cur, name, rel, dest)
    cols = [dest[c.name] for c in rel.columns]
    full = rel.replica_identity == "f"
    key = () if full else tuple(i for i, c in enumerate(rel.columns) if c.is_key)
    indexed = {row[0] for row in indexes}
    key_names = {rel.columns[i].name for i in key}
    uniques = [set(row[0]) for row in unique]
    return Table(
        oid=rel.oid,
        name=name,
        ident=sql.Identifier(rel.namespace, rel.name),
        columns=tuple(sql.Identifier(c.name) for c in rel.columns),
        pident=sql.Identifier(_pct(rel.namespace), _pct(rel.name)),
        pcolumns=tuple(sql.Identifier(_pct(c.name)) for c in rel.columns),
        casts=tuple(sql.SQL(_pct(row[1])) for row in cols),
        tmp_types=tuple(sql.SQL(row[2]) for row in cols),
        key=key,
        full=full,
        always=frozenset(i for i, row in enumerate(cols) if row[5] == "a"),
        text_eq=frozenset(i for i, row in enumerate(cols) if not row[7]),
        partitioned=found[1] == "p",
        key_indexed=bool(key_names & indexed),
        other_unique=any(unique != key_names for unique in uniques),
        tmp=sql.Identifier(f"pgm_apply_{rel.oid}"),
        relation=rel,
    )


def _pct(text: str) -> str:
    return text.replace("%", "%%")


def _check_drift(name: str, rel: Relation, dest: dict[str, tuple[Any, ...]]) -> None:
    sent = set(rel.column_names)
    missing = [c for c in rel.column_names if c not in dest]
    if missing:
        raise ApplyError(
            f"schema drift: {name}: column(s) {', '.join(missing)} missing on the destination",
            hint="add the column(s) to the destination table, then restart `follow`",
        )
    generated = [c for c in rel.column_names if dest[c][6]]
    if generated:
        raise ApplyError(
            f"schema drift: {name}: column(s) {', '.join(generated)} are generated on the "
            "destination but plain on the source",
            hint="make them plain columns on the destination, then restart `follow`",
        )
    required = [
        c
        for c, (_, _, _, notnull, hasdef, identity, gen, *_) in dest.items()
        if c not in sent and notnull and not (hasdef or identity or gen)
    ]
    if required:
        raise ApplyError(
            f"schema drift: {name}: destination-only column(s) {', '.join(required)} are "
            "NOT NULL without a default",
            hint="give them a default or drop NOT NULL on the destination, then restart `follow`",
        )


#: Built-in types have OIDs below this; the same OID names the same type on every server.
FIRST_NORMAL_OID = 16384


def _warn_retyped(cur: Any, name: str, rel: Relation, dest: dict[str, tuple[Any, ...]]) -> None:
    """Log the columns whose built-in source type differs from the destination's (base) type.

    Values are sent as text and cast to the destination's type, so a widened column (int to
    bigint) applies as it should; but a column retyped on one side only (``ALTER COLUMN ... TYPE``
    on the source, say) fails at its first value the destination type cannot take, with a bare
    cast error. The warning names the difference before that happens.
    """
    retyped = [
        c for c in rel.columns if c.type_oid < FIRST_NORMAL_OID and c.type_oid != dest[c.name][8]
    ]
    if retyped:  # (the destination names built-in types as the source does)
        names = cur.execute(
            "SELECT pg_catalog.format_type(t, NULL) FROM unnest(%s::oid[]) AS t",
            ([c.type_oid for c in retyped],),
        ).fetchall()
        differ = [
            f"{c.name} ({n[0]} -> {dest[c.name][9]})" for c, n in zip(retyped, names, strict=True)
        ]
        log.warning(
            "column types differ between source and destination",
            table=name,
            columns=", ".join(differ),
            hint="values are cast to the destination's type; if a column was retyped on the "
            "source, retype it on the destination too (a value it cannot take stops `follow`)",
        )


def same_layout(a: Relation, b: Relation) -> bool:
    """Whether two Relation messages describe the same table layout (nothing to re-read)."""
    return (a.namespace, a.name, a.replica_identity, a.columns) == (
        b.namespace,
        b.name,
        b.replica_identity,
        b.columns,
    )
