"""Preflight's checks of what the copied schema needs on the destination: roles and tablespaces."""

from __future__ import annotations

from collections.abc import Sequence

from pgmigrator.errors import listed
from pgmigrator.pg import Conn
from pgmigrator.pipeline.checks import BLOCKER, OK, WARNING, Check
from pgmigrator.schema.rolecopy import plan_roles
from pgmigrator.schema.roles import named_roles, role_problems
from pgmigrator.schema.tablespaces import tablespace_problems


def roles_check(
    src: Conn, dst: Conn, excluded: Sequence[int], owners: bool, privileges: bool, copy: bool
) -> Check:
    """The roles the schema's owners and GRANTs name must exist on the destination (or be created)."""
    named = named_roles(src, excluded, owners=owners, privileges=privileges) if copy else {}
    plan = plan_roles(src, dst, named) if copy else None
    if plan is not None and (problem := plan.problem()):
        return Check("destination", "roles", BLOCKER, problem.message, problem.hint or "")
    planned = plan.names if plan is not None else frozenset()
    found = role_problems(src, dst, excluded, owners=owners, privileges=privileges, planned=planned)
    if found:
        return Check("destination", "roles", BLOCKER, found.message(), found.hint())
    if plan is None:
        detail = (
            "every owner and grantee of the schema exists"
            if owners or privileges
            else "owners and privileges not copied (--no-owner --no-privileges)"
        )
        return Check("destination", "roles", OK, detail)
    if unset := plan.without_password():
        detail = f"{plan.describe()}; without a password (unreadable): {listed(unset)}"
        return Check("destination", "roles", WARNING, detail, "set them after the clone")
    return Check("destination", "roles", OK, plan.describe())


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
