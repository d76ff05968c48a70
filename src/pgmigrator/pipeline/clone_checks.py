"""What a fresh clone refuses before it creates anything: destination tables that exist, extensions,
roles and tablespaces the destination cannot give the schema (with ``--roles``, the roles it will
create), large objects it could not read or would overwrite. ``preflight`` reports the same checks."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.schema.rolecopy import RolePlan, plan_roles
from pgmigrator.schema.roles import named_roles, role_problems
from pgmigrator.schema.tablespaces import tablespace_problems
from pgmigrator.source.catalog import TableInfo


def refusals(
    src: Conn,
    dst: Conn,
    settings: Settings,
    tables: Sequence[TableInfo],
    excluded: Sequence[int],
    drop_if_exists: bool,
) -> RolePlan | None:
    """Raise `PreflightError` for the first refusal; the roles to create (``--roles``), if any."""
    source, dest = (str(c.execute(_ENCODING).fetchone()[0]) for c in (src, dst))  # type: ignore[index]
    if problem := encoding_problem(source, dest):
        raise problem
    check_destination(dst, tables, drop_if_exists)
    if problem := dangling_problem(src, dst, tables):
        raise problem
    _, lacking = lacking_extensions(src, dst)
    if lacking:
        raise PreflightError(
            f"extension(s) the source uses are not available on the destination: {listed(lacking)}",
            hint=EXTENSIONS_HINT,
        )
    plan, problem = role_plan(
        src,
        dst,
        excluded,
        owners=settings.owners,
        privileges=settings.privileges,
        copy=settings.roles,
        large_objects=settings.large_objects,
    )
    if problem is not None:
        raise problem
    if settings.tablespaces:
        tablespace_problems(src, dst, excluded).raise_if_any()
    if settings.large_objects:
        check_large_objects(src, dst, drop_if_exists)
    for _, problem in row_security_problems(src, dst, tables, settings.owners):
        raise problem
    return plan


def check_large_objects(src: Conn, dst: Conn, drop_if_exists: bool) -> None:
    """Refuse large objects the source's user may not read, and destination large objects that
    the source's would replace (the same oid), unless asked to."""
    if problem := _unreadable_problem(src):
        raise problem
    taken = [] if drop_if_exists else _collisions(src, dst)
    if taken:
        raise PreflightError(
            f"the destination already has large object(s) with the source's oids: {listed([str(o) for o in taken])}",
            hint="pass --drop-if-exists to replace them, unlink them on the destination, or"
            " leave large objects out (--no-large-objects)",
        )


EXTENSIONS_HINT = "install the extension packages on the destination server"


def lacking_extensions(src: Conn, dst: Conn) -> tuple[list[str], list[str]]:
    """The extensions the source database uses (plpgsql aside), and those the destination lacks."""
    used = sorted(
        str(r[0])
        for r in src.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'")
    )
    available = {str(r[0]) for r in dst.execute("SELECT name FROM pg_available_extensions")}
    return used, [name for name in used if name not in available]


def role_plan(
    src: Conn,
    dst: Conn,
    excluded: Sequence[int],
    *,
    owners: bool,
    privileges: bool,
    copy: bool,
    large_objects: bool = True,
) -> tuple[RolePlan | None, PreflightError | None]:
    """The roles ``--roles`` (``copy``) creates first, None without it; and what stops the clone
    for want of a role (a role the schema needs missing, or one the destination's user may not
    create or make an owner)."""
    named = named_roles(
        src, excluded, owners=owners, privileges=privileges, large_objects=large_objects
    )
    plan = plan_roles(src, dst, named) if copy else None
    if plan is not None and (problem := plan.problem()):
        return plan, problem
    return plan, role_problems(dst, named, plan.names if plan else frozenset()).problem()


def check_destination(dst: Conn, tables: Sequence[TableInfo], drop_if_exists: bool) -> None:
    """Refuse to copy into destination tables that exist, unless asked to drop them."""
    if drop_if_exists:
        return
    present = []
    for table in tables:
        regclass = dst.execute(
            "SELECT to_regclass(%s)", (sql.Identifier(table.schema, table.name).as_string(dst),)
        ).fetchone()
        if regclass and regclass[0] is not None:
            has_rows = (
                table.has_data
                and dst.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {})").format(table.ident)
                ).fetchone()
            )
            present.append(
                f"{table.qualified}{' (holds rows)' if has_rows and has_rows[0] else ' (empty)'}"
            )
    if present:
        raise PreflightError(
            f"destination already has table(s): {listed(present)}",
            hint="pass --drop-if-exists to drop and recreate them, or clone into an empty database",
        )


# Large objects the session's user may not read (PostgreSQL 15 has no has_largeobject_privilege).
_UNREADABLE_SQL = """
SELECT m.oid::bigint FROM pg_largeobject_metadata m
WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
  AND current_setting('lo_compat_privileges')::bool IS NOT TRUE
  AND NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(m.lomacl, acldefault('L', m.lomowner))) a
                  WHERE a.privilege_type = 'SELECT'
                    AND (a.grantee = 0 OR pg_has_role(a.grantee, 'USAGE')))
ORDER BY 1
"""


def _unreadable(src: Conn) -> list[int]:
    """The source's large objects that its user may not read (a clone would fail on them)."""
    return [int(r[0]) for r in src.execute(_UNREADABLE_SQL).fetchall()]


def _unreadable_problem(src: Conn) -> PreflightError | None:
    oids = _unreadable(src)
    if not oids:
        return None
    return PreflightError(
        f"the source's user may not read {len(oids)} large object(s): {listed([str(o) for o in oids])}",
        hint="GRANT SELECT ON LARGE OBJECT ... to it, connect as the objects' owner or a"
        " superuser, or leave large objects out (--no-large-objects)",
    )


def _collisions(src: Conn, dst: Conn) -> list[int]:
    """Oids that name a large object on both sides (a fresh clone would replace the destination's)."""
    on_source = [int(r[0]) for r in src.execute("SELECT oid FROM pg_largeobject_metadata")]
    if not on_source:
        return []
    rows = dst.execute(
        "SELECT oid::bigint FROM pg_largeobject_metadata WHERE oid = ANY(%s::oid[]) ORDER BY 1",
        (on_source,),
    )
    return [int(r[0]) for r in rows]


# Selected tables with row-level security that the session's user does not bypass: not a
# superuser nor BYPASSRLS, and not their owner (or the table forces it on its owner too).
_RLS_SQL = """
SELECT c.oid::regclass::text FROM pg_class c
WHERE c.oid = ANY(%s) AND c.relrowsecurity
  AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
  AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
ORDER BY 1
"""


def row_security_problems(
    src: Conn, dst: Conn, tables: Sequence[TableInfo], owners: bool = True
) -> list[tuple[str, PreflightError]]:
    """("source" or "destination", error) for each side whose user row-level security would
    restrict on a selected table: the copy would miss rows, the applier miss or refuse them.

    On the destination the user owns the copied tables without ``owners`` (else when a member of
    the source's owner there); an owner is restricted only by FORCE ROW LEVEL SECURITY.
    """
    oids = [t.oid for t in tables]
    out = []
    if hidden := [str(r[0]) for r in src.execute(_RLS_SQL, (oids,))]:
        out.append(("source", _rls_error("source", src, hidden)))
    protected = src.execute(
        "SELECT oid::regclass::text, pg_get_userbyid(relowner), relforcerowsecurity"
        " FROM pg_class WHERE oid = ANY(%s) AND relrowsecurity ORDER BY 1",
        (oids,),
    ).fetchall()
    if not protected:
        return out
    row = dst.execute(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row and row[0]:
        return out
    member = {
        str(r[0])
        for r in dst.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND pg_has_role(oid, 'USAGE')",
            (sorted({str(owner) for _, owner, _ in protected}),),
        )
    }
    restricted = [
        str(table)
        for table, owner, force in protected
        if force or (owners and str(owner) not in member)
    ]
    if restricted:
        out.append(("destination", _rls_error("destination", dst, restricted)))
    return out


def _rls_error(side: str, conn: Conn, tables: list[str]) -> PreflightError:
    user = str(conn.info.user)
    return PreflightError(
        f"row-level security would restrict the {side}'s user {user!r} on: {listed(tables)}",
        hint=f"ALTER ROLE {sql.Identifier(user).as_string(conn)} BYPASSRLS on the {side} (or"
        " connect as a superuser); native logical replication needs the same, and pgmigrator"
        " reads and writes every row or none",
    )


_ENCODING = (
    "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
)


def encoding_problem(source: str, dest: str) -> PreflightError | None:
    """Text the destination's encoding cannot hold fails to copy (UTF8 holds any but SQL_ASCII's
    bytes)."""
    if source == dest or (dest == "UTF8" and source != "SQL_ASCII"):
        return None
    return PreflightError(
        f"source {source}, destination {dest}: text the destination's encoding cannot hold"
        + (" (SQL_ASCII stores any bytes)" if source == "SQL_ASCII" else "")
        + " fails to copy",
        hint=f"create the destination database with ENCODING '{source}'"
        + (" (or UTF8)" if source != "SQL_ASCII" else "")
        + " (CREATE DATABASE ... TEMPLATE template0)",
    )


# Foreign keys of the selected tables that reference a table the selection leaves out.
_DANGLING_SQL = """
SELECT format('%%s.%%s', quote_ident(n.nspname), quote_ident(t.relname)), c.conname,
       fn.nspname, f.relname
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class f ON f.oid = c.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE c.contype = 'f' AND c.conparentid = 0
  AND c.conrelid = ANY(%(selected)s) AND NOT c.confrelid = ANY(%(selected)s)
ORDER BY 1, 2
"""


def dangling_foreign_keys(src: Conn, dst: Conn, tables: Sequence[TableInfo]) -> list[str]:
    """Foreign keys of the selected tables that reference a table neither selected nor already
    on the destination: pg_dump writes them, and they fail at the end of the copy."""
    rows = src.execute(_DANGLING_SQL, {"selected": [t.oid for t in tables]}).fetchall()
    out = []
    for table, name, schema, referenced in rows:
        ident = sql.Identifier(schema, referenced).as_string(dst)
        present = dst.execute("SELECT to_regclass(%s)", (ident,)).fetchone()
        if not (present and present[0]):
            out.append(f"{table} {name} -> {schema}.{referenced}")
    return out


def dangling_problem(src: Conn, dst: Conn, tables: Sequence[TableInfo]) -> PreflightError | None:
    found = dangling_foreign_keys(src, dst, tables)
    if not found:
        return None
    return PreflightError(
        f"foreign key(s) reference tables the clone leaves out: {listed(found)}",
        hint="select the referenced tables too (--tables / --exclude), or create them on the"
        " destination first",
    )
