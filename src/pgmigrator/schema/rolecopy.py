"""Creating the source's roles on the destination (``clone --roles``).

Roles are cluster-wide: no database dump carries them, and the schema's owners and grantees must
exist before its pre-data script runs. The clone copies the roles *this database* involves, not
the source cluster's every role: the ones its schema names (owners, grantees, grantors, roles of
default privileges), every role that is a member of one of those, directly or not (the login
users of a group role), and the roles with settings for this database. Of those, it creates the
ones the destination lacks, with their attributes, comment, role-wide settings (those for this
database are the database's own: `dbsettings`) and password hash (readable when the source's user is a superuser), then grants the
memberships that involve a role it created. Roles the destination already has are left exactly
as they are. Everything runs in one transaction: a refused statement creates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from pgmigrator.errors import PreflightError, SchemaError, listed
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn
from pgmigrator.schema.dbsettings import DatabaseSetting, parse
from pgmigrator.schema.roles import existing_roles

log = get_logger("schema")

# The roles of `named`, their members (recursively) and the roles with this database's settings.
_RELEVANT_SQL = r"""
WITH RECURSIVE wanted(oid) AS (
  SELECT oid FROM (
    SELECT oid FROM pg_roles WHERE rolname = ANY(%(named)s)
    UNION SELECT setrole FROM pg_db_role_setting
      WHERE setrole <> 0
        AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  ) AS seed
  UNION SELECT m.member FROM pg_auth_members m JOIN wanted w ON m.roleid = w.oid
)
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, rolvaliduntil::text, shobj_description(oid, 'pg_authid')
FROM pg_roles WHERE oid IN (SELECT oid FROM wanted) AND rolname NOT LIKE 'pg\_%%'
ORDER BY rolname
"""

# Role-wide settings (for any database); those for this database are the database's own
# (`dbsettings`), copied with the schema whether the role was created or not.
_SETTINGS_SQL = """
SELECT r.rolname, s.setconfig
FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
WHERE r.rolname = ANY(%s) AND s.setdatabase = 0
ORDER BY 1
"""

_MEMBERS_SQL = """
SELECT r.rolname, m.rolname, a.admin_option
FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
WHERE r.rolname = ANY(%(names)s) OR m.rolname = ANY(%(names)s)
ORDER BY 1, 2
"""


@dataclass(frozen=True, slots=True)
class SourceRole:
    name: str
    superuser: bool
    inherit: bool
    createrole: bool
    createdb: bool
    login: bool
    replication: bool
    bypassrls: bool
    connlimit: int
    valid_until: str | None
    comment: str | None
    password: str | None = None  # the stored hash; None: none, or not readable

    def privileged(self) -> list[str]:
        """The attributes only a superuser may give."""
        flags = (
            ("SUPERUSER", self.superuser),
            ("REPLICATION", self.replication),
            ("BYPASSRLS", self.bypassrls),
        )
        return [name for name, on in flags if on]


@dataclass(frozen=True, slots=True)
class RolePlan:
    """What ``create_roles`` would do, computed without writing anything."""

    create: tuple[SourceRole, ...]
    settings: tuple[DatabaseSetting, ...]  # role-wide (for any database)
    grants: tuple[tuple[str, str, bool], ...]  # (role, member, with admin option)
    existing: tuple[str, ...]  # involved, already on the destination: left as they are
    refused: tuple[str, ...]  # why the destination's user cannot create them
    passwords_read: bool  # False: the source's user may not read the password hashes

    @property
    def names(self) -> frozenset[str]:
        return frozenset(r.name for r in self.create)

    def without_password(self) -> list[str]:
        """Login roles created without their password because it could not be read (a role
        that has none on the source is created without one too, rightly: not listed)."""
        if self.passwords_read:
            return []
        return [r.name for r in self.create if r.login]

    def problem(self) -> PreflightError | None:
        """What stops the plan (the destination's user may not create the roles), if anything."""
        if not self.refused:
            return None
        return PreflightError(
            "cannot create the source's roles on the destination: " + "; ".join(self.refused),
            hint="connect to the destination as a superuser, or create those roles there"
            " yourself (the clone leaves existing roles as they are)",
        )

    def describe(self) -> str:
        """One line for people: what will be created."""
        if not self.create:
            return "every role the schema involves exists on the destination"
        text = f"{len(self.create)} role(s) to create: {listed([r.name for r in self.create])}"
        if self.grants:
            text += f"; {len(self.grants)} membership(s)"
        if self.existing:
            text += f"; {len(self.existing)} already there, left as they are"
        return text


def plan_roles(src: Conn, dst: Conn, named: Iterable[str]) -> RolePlan:
    """The roles this database involves (see the module docstring) that the destination lacks."""
    roles = [SourceRole(*row) for row in src.execute(_RELEVANT_SQL, {"named": sorted(named)})]
    names = [r.name for r in roles]
    members = [(str(a), str(b), bool(c)) for a, b, c in src.execute(_MEMBERS_SQL, {"names": names})]
    involved = sorted({*names, *(a for a, _, _ in members), *(b for _, b, _ in members)})
    present = existing_roles(dst, involved)
    passwords = _passwords(src, [r.name for r in roles if r.name not in present])
    create = tuple(_with_password(r, passwords) for r in roles if r.name not in present)
    made = {r.name for r in create}
    grants = tuple(
        (role, member, admin)
        for role, member, admin in members
        if (role in made or member in made)
        and (role in made or role in present)
        and (member in made or member in present)
    )
    settings = tuple(
        setting
        for role, config in src.execute(_SETTINGS_SQL, (sorted(made),))
        for setting in parse(str(role), config, in_database=False)
    )
    return RolePlan(
        create,
        settings,
        grants,
        tuple(n for n in names if n in present),
        _refusals(dst, create),
        passwords is not None,
    )


def _with_password(role: SourceRole, passwords: dict[str, str | None] | None) -> SourceRole:
    hashed = (passwords or {}).get(role.name)
    return role if hashed is None else replace(role, password=hashed)


def _passwords(src: Conn, names: list[str]) -> dict[str, str | None] | None:
    """The roles' password hashes, or None when the source's user may not read them."""
    if not names:
        return {}
    row = src.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):  # pg_authid is for superusers only
        return None
    rows = src.execute(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (names,)
    ).fetchall()
    return {str(name): (str(pw) if pw is not None else None) for name, pw in rows}


def _refusals(dst: Conn, create: tuple[SourceRole, ...]) -> tuple[str, ...]:
    """What the destination's user may not create (checked before anything is written)."""
    if not create:
        return ()
    row = dst.execute(
        "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    superuser, createrole = bool(row and row[0]), bool(row and row[1])
    if superuser:
        return ()
    if not createrole:
        return (
            "the destination's user has neither CREATEROLE nor superuser; roles to create: "
            + listed([r.name for r in create]),
        )
    return tuple(
        f"{r.name} is {'/'.join(r.privileged())}, which only a superuser may give"
        for r in create
        if r.privileged()
    )


def _create_sql(role: SourceRole) -> sql.Composed:
    flags = [
        "SUPERUSER" if role.superuser else "NOSUPERUSER",
        "INHERIT" if role.inherit else "NOINHERIT",
        "CREATEROLE" if role.createrole else "NOCREATEROLE",
        "CREATEDB" if role.createdb else "NOCREATEDB",
        "LOGIN" if role.login else "NOLOGIN",
        "REPLICATION" if role.replication else "NOREPLICATION",
        "BYPASSRLS" if role.bypassrls else "NOBYPASSRLS",
    ]
    parts = [sql.SQL("CREATE ROLE {} WITH " + " ".join(flags)).format(sql.Identifier(role.name))]
    parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role.connlimit)))
    if role.valid_until is not None:
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(role.valid_until)))
    if role.password is not None:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(role.password)))
    return sql.SQL(" ").join(parts)


def _statements(plan: RolePlan, database: str) -> list[sql.Composed]:
    out: list[sql.Composed] = [_create_sql(r) for r in plan.create]
    out += [
        sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(r.name), sql.Literal(r.comment))
        for r in plan.create
        if r.comment is not None
    ]
    out += [setting.statement(database) for setting in plan.settings]
    out += [
        sql.SQL("GRANT {} TO {}{}").format(
            sql.Identifier(role),
            sql.Identifier(member),
            sql.SQL(" WITH ADMIN OPTION" if admin else ""),
        )
        for role, member, admin in plan.grants
    ]
    return out


def create_roles(dst: Conn, plan: RolePlan) -> None:
    """Carry ``plan`` out on the destination, in one transaction (nothing is logged but names)."""
    if not plan.create:
        return
    try:
        with dst.transaction():
            for statement in _statements(plan, str(dst.info.dbname)):
                dst.execute(statement)
    except psycopg.Error as exc:  # the primary message only: never the statement (a password)
        raise SchemaError(
            "creating the source's roles on the destination failed: "
            + (exc.diag.message_primary or type(exc).__name__),
            hint="nothing was created; create the roles yourself and run the clone without --roles",
        ) from exc
    log.info(
        "roles created",
        roles=",".join(sorted(plan.names)),
        memberships=len(plan.grants),
        settings=len(plan.settings),
    )
    if plan.without_password():
        log.warning(
            "login roles created without a password (the source's user may not read them)",
            roles=",".join(plan.without_password()),
        )
