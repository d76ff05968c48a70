"""Preflight's checks of what the copied schema needs on the destination: roles, tablespaces,
whether the database's own settings can be copied, and the large objects."""

from __future__ import annotations

from collections.abc import Sequence

from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.pipeline import largeobjects
from pgmigrator.pipeline.checks import BLOCKER, OK, WARNING, Check
from pgmigrator.pipeline.clone_checks import (
    check_large_objects,
    dangling_problem,
    row_security_problems,
)
from pgmigrator.schema import dbacl
from pgmigrator.schema.dbsettings import may_alter_database, problems, read_settings
from pgmigrator.schema.extconfig import config_tables, user_rows
from pgmigrator.schema.rolecopy import RolePlan
from pgmigrator.schema.tablespaces import tablespace_problems
from pgmigrator.source.catalog import TableInfo


def settings_check(src: Conn, dst: Conn, planned: frozenset[str]) -> Check:
    """The database's settings (ALTER DATABASE / ALTER ROLE ... IN DATABASE ... SET) the clone
    copies, and what it cannot (``planned``: roles --roles creates first)."""
    found = read_settings(src)
    if not found:
        return Check("destination", "database settings", OK, "none on the source")
    blocked = problems(dst, found, planned)
    if blocked:
        return Check(
            "destination",
            "database settings",
            WARNING,
            f"{len(found)} setting(s), not all copied: " + "; ".join(blocked),
            "connect to the destination as the database's owner or a superuser, create the"
            " roles (--roles), or set them there yourself after the clone",
        )
    return Check("destination", "database settings", OK, f"{len(found)} copied with the schema")


def privileges_check(src: Conn, dst: Conn, privileges: bool) -> Check:
    """The database's own privileges (when copied) and comment, which the clone sets as the
    database's owner: what it will do, or why it cannot."""
    name = "database privileges"
    todo = dbacl.statements(dbacl.read_acl(src), "-", privileges)
    if not todo:
        return Check("destination", name, OK, "the default privileges, no comment: nothing to copy")
    what = "; ".join(what for what, _ in todo)
    if not may_alter_database(dst):
        return Check(
            "destination",
            name,
            WARNING,
            f"not copied (the destination's user neither owns the database nor is a superuser): {what}",
            "connect to the destination as the database's owner or a superuser, or set them there"
            " yourself after the clone",
        )
    return Check("destination", name, OK, f"copied with the schema: {what}")


def roles_check(
    plan: RolePlan | None, problem: PreflightError | None, copied: bool
) -> tuple[Check, frozenset[str]]:
    """The roles the schema's owners and GRANTs name must exist on the destination (or be
    created): `clone_checks.role_plan`'s outcome (``copied``: owners or privileges are)."""
    planned = plan.names if plan is not None else frozenset()
    if problem is not None:
        return Check("destination", "roles", BLOCKER, problem.message, problem.hint or ""), planned
    if plan is None:
        detail = (
            "every owner and grantee of the schema exists"
            if copied
            else "owners and privileges not copied (--no-owner --no-privileges)"
        )
        return Check("destination", "roles", OK, detail), planned
    if unset := plan.without_password():
        detail = f"{plan.describe()}; without a password (unreadable): {listed(unset)}"
        return Check("destination", "roles", WARNING, detail, "set them after the clone"), planned
    return Check("destination", "roles", OK, plan.describe()), planned


def tablespaces_check(src: Conn, dst: Conn, excluded: Sequence[int], copy: bool) -> Check:
    """The tablespaces the schema uses must exist on the destination (or be left out)."""
    if not copy:
        return Check("destination", "tablespaces", OK, "not copied (--no-tablespaces)")
    found = tablespace_problems(src, dst, excluded)
    if found:
        return Check("destination", "tablespaces", BLOCKER, found.message(), found.hint())
    if not found.used:
        return Check("destination", "tablespaces", OK, "only the database's default is used")
    return Check("destination", "tablespaces", OK, f"present: {listed(found.used)}")


def large_objects_check(src: Conn, dst: Conn, copy: bool) -> Check:
    """Large objects are copied by the clone and brought up to date at the switchover, not
    streamed; those the source's user may not read stop the clone."""
    name = "large objects"
    found = largeobjects.count(src)
    if not found:
        return Check("source", name, OK, "none on the source")
    if not copy:
        return Check("source", name, WARNING, f"{found} left out (--no-large-objects)")
    try:
        check_large_objects(src, dst, drop_if_exists=False)
    except PreflightError as exc:
        return Check("source", name, BLOCKER, exc.message, exc.hint or "")
    return Check(
        "source",
        name,
        WARNING,
        f"{found} large object(s): copied by the clone after the tables and brought up to date by"
        " the switchover; changes made to them in between are not streamed",
        "`pgmigrator switchover` carries their latest state while the source is fenced",
    )


def row_security_checks(
    src: Conn, dst: Conn, tables: Sequence[TableInfo], owners: bool
) -> list[Check]:
    """Row-level security must not restrict either side's user on a selected table."""
    found = row_security_problems(src, dst, tables, owners)
    if not found:
        return [Check("source", "row-level security", OK, "restricts neither side's user")]
    return [
        Check(side, "row-level security", BLOCKER, problem.message, problem.hint or "")
        for side, problem in found
    ]


def extension_rows_check(src: Conn) -> Check:
    """Rows users added to extensions' configuration tables: copied by the clone and the
    switchover, not streamed."""
    name = "extension configuration tables"
    found = [(t, user_rows(src, t)) for t in config_tables(src)]
    if not found:
        return Check("source", name, OK, "none")
    detail = "; ".join(f"{t} ({rows} user row(s))" for t, rows in found)
    if not any(rows for _, rows in found):
        return Check("source", name, OK, f"no user rows: {detail}")
    return Check(
        "source",
        name,
        WARNING,
        f"copied by the clone and again by the switchover, not streamed: {detail}",
        "change them before the clone or let the switchover carry them",
    )


def foreign_keys_check(src: Conn, dst: Conn, tables: Sequence[TableInfo]) -> Check:
    """A foreign key to a table the clone leaves out would fail after the whole copy."""
    problem = dangling_problem(src, dst, tables)
    if problem is None:
        return Check("source", "foreign keys", OK, "every referenced table is copied or present")
    return Check("source", "foreign keys", BLOCKER, problem.message, problem.hint or "")
