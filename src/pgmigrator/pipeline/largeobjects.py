"""Large objects: copied by the clone, brought up to date at the switchover, compared by verify.

A large object lives in the ``pg_largeobject`` catalog, not in a table: neither COPY nor logical
replication carries it, and ``pg_dump --schema-only`` leaves it out. So the destination's large
objects are made the source's in one step (`sync`): each side lists its objects with a digest of
their contents computed on the server (`_LIST_SQL`, read in `CHUNK`-byte pieces, so no object is
ever held whole, whatever its size: they reach 4 TB); the objects that are missing or differ are
copied piece by piece, with their owner, privileges and comment. The clone runs it after its
tables; changes made while ``follow`` streams reach the destination at the switchover, which runs
it again while the source is fenced. The destination's own large objects (an oid the source never
had) are left alone; those the pipeline copied and the source has since unlinked are unlinked.
The source is read in one REPEATABLE READ transaction: one consistent state of every object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.errors import SchemaError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn
from pgmigrator.store.state import StateStore

log = get_logger("largeobjects")

#: Bytes of an object read (and written) at a time: the memory a piece takes on either side.
CHUNK = 256 * 1024
#: First pieces fetched from the source (and written) together: the bytes held at once.
BATCH_BYTES = 16 * 1024 * 1024

# Per object: size and an md5 over the md5s of its pieces, from a recursive walk that reads one
# piece of each object per step (lo_get(oid, offset, length) returns a short piece at the end).
_LIST_SQL = """
WITH RECURSIVE piece(oid, off, n, h) AS (
    SELECT m.oid, 0::bigint, length(p.data)::bigint, md5(p.data)
    FROM pg_largeobject_metadata m CROSS JOIN LATERAL (SELECT lo_get(m.oid, 0, %(chunk)s) AS data) p
  UNION ALL
    SELECT s.oid, s.off + %(chunk)s, length(p.data)::bigint, md5(p.data)
    FROM piece s CROSS JOIN LATERAL (SELECT lo_get(s.oid, s.off + %(chunk)s, %(chunk)s) AS data) p
    WHERE s.n = %(chunk)s
), sums AS (
    SELECT oid, sum(n)::bigint AS size, md5(string_agg(h, '' ORDER BY off)) AS digest
    FROM piece GROUP BY oid
)
SELECT m.oid::bigint, s.size, s.digest, pg_get_userbyid(m.lomowner),
       CASE WHEN m.lomacl IS NULL THEN '{}' ELSE
       (SELECT array_agg(ARRAY[CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                    ELSE pg_get_userbyid(a.grantee) END,
                               a.privilege_type, a.is_grantable::text] ORDER BY 1, 2, 3)
        FROM aclexplode(m.lomacl) a) END,
       m.lomacl IS NOT NULL,
       d.description
FROM pg_largeobject_metadata m JOIN sums s ON s.oid = m.oid
LEFT JOIN pg_description d
       ON d.objoid = m.oid AND d.classoid = 'pg_largeobject'::regclass AND d.objsubid = 0
ORDER BY m.oid
"""


@dataclass(frozen=True, slots=True)
class LargeObject:
    """One large object as `sync` compares it (``acl``: (grantee, privilege, grantable))."""

    oid: int
    size: int
    digest: str
    owner: str
    acl: tuple[tuple[str, str, bool], ...]
    has_acl: bool  # False: the default privileges (the owner's)
    comment: str | None


@dataclass(frozen=True, slots=True)
class SyncResult:
    copied: int = 0  # created or replaced on the destination
    unlinked: int = 0  # copied earlier by the pipeline, since unlinked on the source
    unchanged: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.copied} copied ({self.bytes:,} bytes), {self.unlinked} unlinked, {self.unchanged} unchanged"


def count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def listing(conn: Conn) -> dict[int, LargeObject]:
    """Every large object of ``conn``'s database with its digest (reads every object's contents)."""
    rows = conn.execute(_LIST_SQL, {"chunk": CHUNK}).fetchall()
    return {
        int(oid): LargeObject(
            int(oid),
            int(size),
            str(digest),
            str(owner),
            tuple((str(g), str(p), b == "true") for g, p, b in acl),
            bool(has_acl),
            comment,
        )
        for oid, size, digest, owner, acl, has_acl, comment in rows
    }


#: Objects per destination transaction: each one's owner and grants lock it until the commit,
#: and a transaction holds a few thousand locks at most (``max_locks_per_transaction``).
BATCH = 500

Recorder = Callable[[Sequence[int], Sequence[int]], None]


def sync(
    src: Conn,
    dst: Conn,
    copied_before: Iterable[int] = (),
    *,
    owners: bool = True,
    privileges: bool = True,
    record: Recorder | None = None,
) -> SyncResult:
    """Make the destination's large objects the source's, `BATCH` objects a transaction.

    ``copied_before``: oids an earlier sync copied; those the source no longer has are unlinked.
    ``record(added, removed)``: called in each destination transaction with the oids it copied
    and unlinked (to remember them: a failed sync runs again from where it stopped).
    """
    step = "reading and comparing both sides' large objects"
    try:
        with src.transaction():
            src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            source, ours = both_listings(src, dst)
            todo = [o for o in source.values() if not _same(o, ours.get(o.oid), owners, privileges)]
            gone = sorted(set(copied_before) & (set(ours) - set(source)))
            step = "unlinking large objects the source no longer has"
            for start in range(0, len(gone), BATCH):
                with dst.transaction():
                    _unlink(dst, gone[start : start + BATCH])
                    if record is not None:
                        record((), gone[start : start + BATCH])
            step = "copying large objects"
            existing = set(ours)
            written = sum(
                _copy_batch(
                    src, dst, todo[start : start + BATCH], existing, owners, privileges, record
                )
                for start in range(0, len(todo), BATCH)
            )
    except psycopg.Error as exc:
        raise SchemaError(
            f"{step} failed: {exc.diag.message_primary or str(exc).strip()}"
            " (what was copied before stays; running the step again goes on from there)",
            hint=_hint(exc),
        ) from exc
    result = SyncResult(len(todo), len(gone), len(source) - len(todo), written)
    if todo or gone:
        log.info(
            "large objects synced",
            copied=result.copied,
            unlinked=result.unlinked,
            unchanged=result.unchanged,
            bytes=written,
        )
    return result


def _copy_batch(
    src: Conn,
    dst: Conn,
    batch: Sequence[LargeObject],
    existing: set[int],
    owners: bool,
    privileges: bool,
    record: Recorder | None,
) -> int:
    """One destination transaction: replace or create the objects, then their metadata."""
    oids = [o.oid for o in batch]
    with dst.transaction():
        _unlink(dst, [oid for oid in oids if oid in existing])
        written = _copy_contents(src, dst, batch)
        _set_metadata(dst, batch, owners, privileges)
        if record is not None:
            record(oids, ())
    return written


def _hint(exc: psycopg.Error) -> str:
    if exc.sqlstate == "53100":
        return "the destination's disk is full: free space there and run the step again"
    if exc.sqlstate in ("42704", "42501"):  # a missing role, or no right to set it
        return (
            "create the roles on the destination (or clone with --roles), or leave owners or"
            " privileges out (--no-owner, --no-privileges)"
        )
    return "fix the cause above and run the step again, or leave large objects out (--no-large-objects)"


def _same(obj: LargeObject, other: LargeObject | None, owners: bool, privileges: bool) -> bool:
    """Same contents and comment, and the same owner and privileges when those are copied (an
    owner's own entries compared as the owner's, whoever owns it on each side, without owners)."""
    if other is None or _contents(obj) != _contents(other):
        return False
    if owners and obj.owner != other.owner:
        return False
    return not privileges or _acl(obj, owners) == _acl(other, owners)


def _acl(obj: LargeObject, owners: bool) -> tuple[bool, frozenset[tuple[str, str, bool]]]:
    def who(grantee: str) -> str:
        return "" if not owners and grantee == obj.owner else grantee  # "": the owner

    return obj.has_acl, frozenset((who(g), p, b) for g, p, b in obj.acl)


def both_listings(src: Conn, dst: Conn) -> tuple[dict[int, LargeObject], dict[int, LargeObject]]:
    """`listing` of both sides at once (each reads every object: at a switchover this is most of
    the time the source stays fenced, so the two servers read in parallel)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="large-objects") as pool:
        ours = pool.submit(listing, dst)
        return listing(src), ours.result()


def _unlink(dst: Conn, oids: Sequence[int]) -> None:
    if oids:
        dst.execute("SELECT lo_unlink(o) FROM unnest(%s::oid[]) AS u(o)", (list(oids),))


def _copy_contents(src: Conn, dst: Conn, objects: Sequence[LargeObject]) -> int:
    """Create each object on the destination under its source oid: first pieces fetched and
    written together, up to `BATCH_BYTES` at a time (the listing gave each one's size, in the
    same snapshot), the rest of a bigger object `CHUNK` bytes at a time."""
    written = 0
    for group in _by_bytes(objects):
        rows = src.execute(
            "SELECT o::bigint, lo_get(o, 0, %s) FROM unnest(%s::oid[]) WITH ORDINALITY AS u(o, i)"
            " ORDER BY i",
            (CHUNK, [o.oid for o in group]),
        ).fetchall()
        dst.execute(
            "SELECT count(lo_from_bytea(o, d)) FROM unnest(%s::oid[], %s::bytea[]) AS u(o, d)",
            ([oid for oid, _ in rows], [data for _, data in rows]),
        )
        written += sum(len(data) for _, data in rows)
        for oid, data in rows:
            if len(data) == CHUNK:
                written += _copy_rest(src, dst, int(oid))
    return written


def _by_bytes(objects: Sequence[LargeObject]) -> Iterator[list[LargeObject]]:
    """``objects`` in groups whose first pieces add up to `BATCH_BYTES` at most (or one object)."""
    group: list[LargeObject] = []
    size = 0
    for obj in objects:
        piece = min(obj.size, CHUNK)
        if group and size + piece > BATCH_BYTES:
            yield group
            group, size = [], 0
        group.append(obj)
        size += piece
    if group:
        yield group


def _copy_rest(src: Conn, dst: Conn, oid: int) -> int:
    """The pieces after the first of a large object, one round trip per `CHUNK` bytes."""
    offset, written = CHUNK, 0
    while True:
        row = src.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, CHUNK)).fetchone()
        data = bytes(row[0]) if row else b""
        if data:
            dst.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, data))
            written += len(data)
        if len(data) < CHUNK:
            return written
        offset += CHUNK


def _set_metadata(
    dst: Conn, objects: Sequence[LargeObject], owners: bool, privileges: bool
) -> None:
    """Owner, privileges and comment of each copied object, in one pipeline of statements."""
    row = dst.execute("SELECT current_user").fetchone()
    me = str(row[0]) if row else None
    statements = [s for o in objects for s in _metadata_statements(o, owners, privileges, me)]
    if statements:
        with dst.pipeline():
            for statement in statements:
                dst.execute(statement)


def _metadata_statements(
    obj: LargeObject, owners: bool, privileges: bool, me: str | None = None
) -> list[sql.Composed]:
    """Owner (unless ``me``, the destination's user who created it, owns it on the source too),
    privileges and comment."""
    target = sql.SQL("LARGE OBJECT {}").format(sql.SQL(str(int(obj.oid))))
    out: list[sql.Composed] = []
    if owners and obj.owner != me:
        out.append(sql.SQL("ALTER {} OWNER TO {}").format(target, sql.Identifier(obj.owner)))
    if privileges and obj.has_acl:
        out += _grants(obj, target, owners)
    if obj.comment is not None:
        out.append(sql.SQL("COMMENT ON {} IS {}").format(target, sql.Literal(obj.comment)))
    return out


def _grants(obj: LargeObject, target: sql.Composed, owners: bool) -> list[sql.Composed]:
    """The object's privileges as the source has them (without owners, the owner's own entries
    go to the destination's user, who owns it there)."""
    owner: sql.Composable = sql.Identifier(obj.owner) if owners else sql.SQL("CURRENT_USER")
    out = [sql.SQL("REVOKE ALL ON {} FROM PUBLIC, {}").format(target, owner)]
    for grantee, privilege, grantable in obj.acl:
        whom: sql.Composable = sql.Identifier(grantee)
        if grantee == "PUBLIC":
            whom = sql.SQL("PUBLIC")
        elif grantee == obj.owner:
            whom = owner
        out.append(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(_PRIVILEGES[privilege]),
                target,
                whom,
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return out


_PRIVILEGES = {"SELECT": "SELECT", "UPDATE": "UPDATE"}  # a large object's only two


def sync_pipeline(src: Conn, dst: Conn, settings: Settings) -> SyncResult | None:
    """`sync` for a migration pipeline (its clone, its switchover), which remembers in its state
    store the objects it copied; None when large objects are left out."""
    if not settings.large_objects:
        return None
    if count(src) == 0 and count(dst) == 0:
        return SyncResult()
    store = StateStore(dst, settings.name)
    store.ensure_schema()  # (a store made before large objects were copied lacks their table)
    return sync(
        src,
        dst,
        store.large_objects(),
        owners=settings.owners,
        privileges=settings.privileges,
        record=store.record_large_objects,
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    """The source's large objects against the destination's, by contents and comment."""

    source: int  # objects on the source
    dest: int  # on the destination
    source_sum: str  # md5 over every object's oid, size and digest, on each side
    dest_sum: str
    differing: tuple[int, ...]  # on the source, and missing or different on the destination
    dest_only: int  # on the destination only (its own, or unlinked on the source since)


def compare(src: Conn, dst: Conn) -> Comparison:
    """Compare both sides' large objects (reads every object's contents on each side)."""
    with src.transaction():
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        theirs, ours = both_listings(src, dst)
    differing = tuple(
        oid
        for oid, obj in theirs.items()
        if oid not in ours or _contents(obj) != _contents(ours[oid])
    )
    return Comparison(
        len(theirs),
        len(ours),
        _sum(theirs),
        _sum(ours),
        differing,
        len(set(ours) - set(theirs)),
    )


def _contents(obj: LargeObject) -> tuple[int, str, str | None]:
    return obj.size, obj.digest, obj.comment


def _sum(objects: dict[int, LargeObject]) -> str:
    return hashlib.md5(
        "".join(f"{o.oid}:{o.size}:{o.digest};" for o in objects.values()).encode(),
        usedforsecurity=False,
    ).hexdigest()
