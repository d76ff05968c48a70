"""``pgmigrator preflight``: everything that would block or weaken a migration, checked up front.

Each check yields ``ok``, ``warning`` (the migration runs but something will not be carried or
needs attention) or ``blocker`` (the migration would fail), with a hint on how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import LiteralString, Protocol

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError, listed
from pgmigrator.pg import Conn, connect, server_major
from pgmigrator.pipeline.checks import BLOCKER, OK, WARNING, Check, render
from pgmigrator.pipeline.clone_checks import (
    EXTENSIONS_HINT,
    encoding_problem,
    lacking_extensions,
    role_plan,
)
from pgmigrator.pipeline.preflight_schema import (
    extension_rows_check,
    foreign_keys_check,
    large_objects_check,
    privileges_check,
    roles_check,
    row_security_checks,
    settings_check,
    tablespaces_check,
)
from pgmigrator.schema.dump import find_pg_dump
from pgmigrator.source import catalog
from pgmigrator.source.blockers import blockers
from pgmigrator.source.slots import keyless_error, keyless_tables

__all__ = ["BLOCKER", "OK", "WARNING", "Check", "render", "run"]


class _Add(Protocol):
    def __call__(self, name: str, status: str, detail: str, hint: str = "") -> None: ...


def _adder(out: list[Check], side: str) -> _Add:
    def add(name: str, status: str, detail: str, hint: str = "") -> None:
        out.append(Check(side, name, status, detail, hint))

    return add


def _one(conn: Conn, query: LiteralString, params: Sequence[object] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _connect(target: Target, out: list[Check]) -> Conn | None:
    try:
        conn = connect(target)
    except PgMigratorError as exc:
        out.append(Check(target.role, "connection", BLOCKER, exc.message, exc.hint or ""))
        return None
    version = conn.info.parameter_status("server_version") or "?"
    out.append(Check(target.role, "connection", OK, f"connected to PostgreSQL {version}"))
    return conn


def _keyless_check(add: _Add, tables: list[catalog.TableInfo], keyless: str) -> None:
    names = [t.qualified for t in keyless_tables(tables)]
    if not names:
        add("replica identity", OK, "every table has a usable replica identity", "")
        return
    if keyless == "full":
        add(
            "replica identity",
            WARNING,
            f"no primary key or replica identity: {listed(names)}; the clone will set REPLICA"
            " IDENTITY FULL on them (--keyless-tables full)",
            "their UPDATEs and DELETEs will log whole old rows; a key is cheaper",
        )
        return
    refused = keyless_error(names)
    add("replica identity", BLOCKER, refused.message, refused.hint or "")


def source_checks(
    src: Conn,
    everything: list[catalog.TableInfo],
    include: Sequence[str],
    exclude: Sequence[str],
    keyless: str = "refuse",
) -> list[Check]:
    out: list[Check] = []
    add = _adder(out, "source")
    wal = _one(src, "SHOW wal_level")
    add(
        "wal_level",
        OK if wal == "logical" else BLOCKER,
        f"wal_level = {wal}",
        "" if wal == "logical" else "ALTER SYSTEM SET wal_level = logical; then restart the source",
    )
    major = server_major(src)
    add(
        "version",
        OK if major >= 14 else BLOCKER,
        f"server major version {major}",
        "" if major >= 14 else "pgmigrator needs PostgreSQL 14 or newer on the source",
    )
    slots_max, slots_used = (
        int(str(_one(src, "SHOW max_replication_slots"))),
        int(str(_one(src, "SELECT count(*) FROM pg_replication_slots"))),
    )
    add(
        "replication slots",
        OK if slots_used < slots_max else BLOCKER,
        f"{slots_used} of max_replication_slots={slots_max} in use",
        ""
        if slots_used < slots_max
        else "raise max_replication_slots (restart) or drop unused slots",
    )
    senders_max = int(str(_one(src, "SHOW max_wal_senders")))
    senders_used = int(str(_one(src, "SELECT count(*) FROM pg_stat_replication")))
    add(
        "wal senders",
        OK if senders_used < senders_max else BLOCKER,
        f"{senders_used} of max_wal_senders={senders_max} in use",
        "" if senders_used < senders_max else "raise max_wal_senders (restart)",
    )
    keep = str(_one(src, "SHOW max_slot_wal_keep_size"))
    add(
        "slot WAL limit",
        OK if keep == "-1" else WARNING,
        f"max_slot_wal_keep_size = {keep}",
        ""
        if keep == "-1"
        else "the slot keeps all WAL written from the clone's start until `follow` applies it;"
        " past this limit the server invalidates it and the clone or follow stops: raise it"
        " for the migration if the source writes more than that meanwhile",
    )
    role = src.execute(
        "SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if role and (role[1] or role[2]):
        add(
            "replication privilege",
            OK,
            f"role {role[0]} is {'superuser' if role[1] else 'REPLICATION'}",
        )
    else:
        add(
            "replication privilege",
            BLOCKER,
            f"role {role[0] if role else '?'} has neither REPLICATION nor superuser",
            "ALTER ROLE <role> REPLICATION (as a superuser)",
        )
    out += _table_checks(src, everything, include, exclude, keyless)
    return out


def _table_checks(
    src: Conn,
    everything: list[catalog.TableInfo],
    include: Sequence[str],
    exclude: Sequence[str],
    keyless: str,
) -> list[Check]:
    out: list[Check] = []
    add = _adder(out, "source")
    missing = catalog.unmatched_patterns(everything, list(include))
    if missing:
        add(
            "table patterns",
            BLOCKER,
            f"pattern(s) matching no table: {', '.join(missing)}",
            "patterns are globs over schema.table",
        )
    tables = catalog.select(everything, include, exclude)
    add(
        "tables",
        OK if tables else BLOCKER,
        f"{len(tables)} table(s) selected, {sum(t.size_bytes for t in tables) // 1048576} MiB",
    )
    unreadable = [
        t.qualified
        for t in tables
        if not _one(src, "SELECT has_table_privilege(%s::oid, 'SELECT')", (t.oid,))
    ]
    if unreadable:
        add(
            "table privileges",
            BLOCKER,
            f"cannot SELECT: {listed(unreadable)}",
            "GRANT SELECT on them, or --exclude them",
        )
    is_super = bool(_one(src, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    not_owned = [
        t.qualified
        for t in tables
        if not is_super
        and not _one(
            src, "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = %s", (t.oid,)
        )
    ]
    if not_owned:
        add(
            "publication ownership",
            BLOCKER,
            f"not owner of: {listed(not_owned)}",
            "CREATE PUBLICATION FOR TABLE needs table ownership: run as the owner or a superuser",
        )
    _keyless_check(add, tables, keyless)
    unlogged = [t.qualified for t in tables if t.persistence == "u"]
    if unlogged:
        add(
            "unlogged tables",
            WARNING,
            f"copied once but never replicated: {listed(unlogged)}",
            "ALTER TABLE ... SET LOGGED to replicate them",
        )
    foreign = int(str(_one(src, "SELECT count(*) FROM pg_class WHERE relkind = 'f'")))
    if foreign:
        add(
            "foreign tables",
            WARNING,
            f"{foreign} foreign table(s): definitions copied, rows are not",
            "",
        )
    add(
        "sequences",
        OK,
        "sequence values are copied at the end of the clone and at switchover (not streamed)",
    )
    waits = blockers(src, OPEN_FOR_S)
    add(
        "open transactions",
        WARNING if waits else OK,
        "creating the slot waits for: " + "; ".join(waits)
        if waits
        else f"none prepared, none open for more than {OPEN_FOR_S:g} s",
        "COMMIT PREPARED / ROLLBACK PREPARED a forgotten prepared transaction, or end the"
        " session (pg_terminate_backend): the clone waits for them, in every database"
        if waits
        else "",
    )
    return out


#: Sessions with a transaction open for longer than this are named (a slot waits for them).
OPEN_FOR_S = 60.0


def dest_checks(src: Conn | None, dst: Conn) -> list[Check]:
    out: list[Check] = []
    add = _adder(out, "destination")
    can_create = bool(_one(dst, "SELECT has_database_privilege(current_database(), 'CREATE')"))
    add(
        "create privilege",
        OK if can_create else BLOCKER,
        "may create schemas" if can_create else "no CREATE privilege on the database",
        "" if can_create else "GRANT CREATE ON DATABASE <db> TO <role>",
    )
    is_super = bool(_one(dst, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    add(
        "superuser",
        OK if is_super else WARNING,
        "superuser"
        if is_super
        else "not a superuser: replication origins and session_replication_role need one for `follow`",
        ""
        if is_super
        else "use a superuser for the destination, or grant EXECUTE on pg_replication_origin_* functions",
    )
    if src is not None:
        s_major, d_major = server_major(src), server_major(dst)
        add(
            "versions",
            OK if d_major >= s_major else WARNING,
            f"source {s_major}, destination {d_major}",
            ""
            if d_major >= s_major
            else "a destination older than the source may reject newer syntax",
        )
        used, lacking = lacking_extensions(src, dst)
        add(
            "extensions",
            BLOCKER if lacking else OK,
            f"missing on the destination: {', '.join(lacking)}"
            if lacking
            else f"{len(used)} extension(s) available on both sides",
            EXTENSIONS_HINT if lacking else "",
        )
        _locale_checks(src, dst, add)
    return out


_LOCALE = (
    "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
    " WHERE datname = current_database()"
)


def _locale_checks(src: Conn, dst: Conn, add: _Add) -> None:
    """The databases' encodings and collations: what the copy can carry, and what sorts alike."""
    (s_enc, s_coll, s_ctype), (d_enc, d_coll, d_ctype) = (
        c.execute(_LOCALE).fetchone() or ("?", "?", "?") for c in (src, dst)
    )
    problem = encoding_problem(str(s_enc), str(d_enc))
    if problem is None:
        add("encoding", OK, f"source {s_enc}, destination {d_enc}")
    else:
        add("encoding", BLOCKER, problem.message, problem.hint or "")
    same = (s_coll, s_ctype) == (d_coll, d_ctype)
    add(
        "collation",
        OK if same else WARNING,
        f"source {s_coll}/{s_ctype}, destination {d_coll}/{d_ctype}",
        ""
        if same
        else "text sorts and compares differently on the two sides (ORDER BY results, range"
        " queries); create the destination database with the same LC_COLLATE and LC_CTYPE",
    )


def run(
    source: Target,
    dest: Target,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    *,
    keyless: str = "refuse",
    owners: bool = True,
    privileges: bool = True,
    copy_roles: bool = False,
    tablespaces: bool = True,
    large_objects: bool = True,
) -> list[Check]:
    out: list[Check] = []
    src, dst = _connect(source, out), _connect(dest, out)
    try:
        everything = [] if src is None else catalog.list_tables(src)
        if src is not None:
            out += source_checks(src, everything, include, exclude, keyless)
            _guard(out, "tools", lambda: find_pg_dump(server_major(src)))
        if dst is not None:
            out += dest_checks(src, dst)
        if src is not None and dst is not None:
            chosen = catalog.select(everything, include, exclude)
            excluded = [t.oid for t in catalog.left_out(everything, chosen)]
            plan, problem = role_plan(
                src,
                dst,
                excluded,
                owners=owners,
                privileges=privileges,
                copy=copy_roles,
                large_objects=large_objects,
            )
            roles, planned = roles_check(plan, problem, owners or privileges)
            out += [
                roles,
                settings_check(src, dst, planned),
                privileges_check(src, dst, privileges),
            ]
            out.append(tablespaces_check(src, dst, excluded, tablespaces))
            out.append(large_objects_check(src, dst, large_objects))
            out.append(extension_rows_check(src))
            out.append(foreign_keys_check(src, dst, chosen))
            out += row_security_checks(src, dst, chosen, owners)
    finally:
        for conn in (src, dst):
            if conn is not None:
                conn.close()
    return out


def _guard(out: list[Check], name: str, fn: Callable[[], object]) -> None:
    try:
        result = fn()
        out.append(
            Check(
                "local",
                name,
                OK,
                f"pg_dump {result[1]} at {result[0]}" if isinstance(result, tuple) else "ok",
            )
        )
    except PgMigratorError as exc:
        out.append(Check("local", name, BLOCKER, exc.message, exc.hint or ""))
