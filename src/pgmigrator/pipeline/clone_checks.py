"""What a fresh clone refuses before it creates anything: destination tables that exist, extensions,
roles and tablespaces the destination cannot give the schema (with ``--roles``, the roles it will
create), large objects it could not read or would overwrite. ``preflight`` reports the same checks."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from pgmigrator.config import Settings
from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.pipeline import largeobjects
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
    check_destination(dst, tables, drop_if_exists)
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
    return plan


def check_large_objects(src: Conn, dst: Conn, drop_if_exists: bool) -> None:
    """Refuse large objects the source's user may not read, and destination large objects that
    the source's would replace (the same oid), unless asked to."""
    if problem := largeobjects.unreadable_problem(src):
        raise problem
    taken = [] if drop_if_exists else largeobjects.collisions(src, dst)
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
