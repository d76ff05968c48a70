"""The database's own privileges and comment: ``GRANT ... ON DATABASE``, ``COMMENT ON DATABASE``.

pg_dump writes them only with ``--create``, which the clone does not use (the destination database
exists). Left behind, a source that revoked CONNECT from PUBLIC and granted it to its application
roles would become a destination any role may connect to. The clone copies, with the pre-data:

- PUBLIC's privileges, when the source changed them from the default (revoked what the source
  revoked, granted what it granted);
- every other role's grants, added (the database owner's own privileges are left to the
  destination's owner; grants only the destination has are left alone);
- the comment.

Each statement runs on its own (a savepoint): one the destination refuses (a role it lacks, a user
that does not own the database) is reported with PostgreSQL's reason and skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from psycopg import sql

from pgmigrator.log import get_logger
from pgmigrator.pg import Conn
from pgmigrator.schema.dbsettings import DatabaseSetting, apply_each, apply_settings

log = get_logger("schema")

PUBLIC = "PUBLIC"
#: A database's privileges, and PUBLIC's by default (``acldefault('d', owner)``).
PRIVILEGES = ("CREATE", "CONNECT", "TEMPORARY")
DEFAULT_PUBLIC = frozenset({"CONNECT", "TEMPORARY"})

_READ_SQL = """
SELECT d.datacl IS NOT NULL,
       coalesce((SELECT array_agg(ARRAY[coalesce(r.rolname, 'PUBLIC'), a.privilege_type,
                                        a.is_grantable::text] ORDER BY 1, 2, 3)
                 FROM aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
                 WHERE a.grantee <> d.datdba), '{}'),
       shobj_description(d.oid, 'pg_database')
FROM pg_database d WHERE d.datname = current_database()
"""


@dataclass(frozen=True, slots=True)
class DatabaseAcl:
    """The database's privileges (its owner's aside) and comment."""

    changed: bool  # False: the default privileges (PUBLIC may CONNECT and create TEMP tables)
    grants: tuple[tuple[str, str, bool], ...]  # (role or PUBLIC, privilege, grantable)
    comment: str | None

    @property
    def public(self) -> frozenset[str]:
        if not self.changed:
            return DEFAULT_PUBLIC
        return frozenset(p for role, p, _ in self.grants if role == PUBLIC)

    def by_role(self) -> dict[str, tuple[str, ...]]:
        """Each role's privileges (``CONNECT``, ``CREATE*``: with grant option), PUBLIC's too."""
        out = {
            role: tuple(p + ("*" if grantable else "") for _, p, grantable in items)
            for role, items in groupby(self.grants, key=lambda g: g[0])
        }
        out.setdefault(PUBLIC, tuple(sorted(self.public)))  # (none: all revoked, a fact too)
        return out


def read_acl(conn: Conn) -> DatabaseAcl:
    row = conn.execute(_READ_SQL).fetchone()
    if row is None:  # (the connected database always has its row)
        return DatabaseAcl(False, (), None)
    changed, grants, comment = row
    return DatabaseAcl(
        bool(changed),
        tuple((str(r), str(p), g == "true") for r, p, g in grants),
        None if comment is None else str(comment),
    )


def statements(acl: DatabaseAcl, database: str, privileges: bool) -> list[tuple[str, sql.Composed]]:
    """What makes the destination database's privileges (when copied) and comment the source's:
    (what, statement) pairs."""
    db = sql.SQL("DATABASE {}").format(sql.Identifier(database))
    out: list[tuple[str, sql.Composed]] = []
    if privileges and acl.changed:
        if revoked := [p for p in PRIVILEGES if p not in acl.public]:
            out.append((f"REVOKE {', '.join(revoked)} FROM PUBLIC", _grant(db, revoked, None)))
        for role, items in groupby(acl.grants, key=lambda g: g[0]):
            for grantable, same in groupby(sorted(items, key=lambda g: g[2]), key=lambda g: g[2]):
                privs = [p for _, p, _ in same]
                what = f"GRANT {', '.join(privs)} TO {role}" + (
                    " WITH GRANT OPTION" if grantable else ""
                )
                out.append((what, _grant(db, privs, role, grantable)))
    if acl.comment is not None:
        out.append(("COMMENT", sql.SQL("COMMENT ON {} IS {}").format(db, sql.Literal(acl.comment))))
    return out


def _grant(
    db: sql.Composed, privs: Sequence[str], role: str | None, grantable: bool = False
) -> sql.Composed:
    """GRANT ``privs`` to ``role`` (PUBLIC: by name), or REVOKE them from PUBLIC (``role`` None)."""
    listed = sql.SQL(", ").join(sql.SQL(p) for p in privs if p in PRIVILEGES)
    if role is None:
        return sql.SQL("REVOKE {} ON {} FROM PUBLIC").format(listed, db)
    whom = sql.SQL(PUBLIC) if role == PUBLIC else sql.Identifier(role)
    option = sql.SQL(" WITH GRANT OPTION" if grantable else "")
    return sql.SQL("GRANT {} ON {} TO {}{}").format(listed, db, whom, option)


@dataclass(frozen=True)
class DatabaseOwn:
    """What belongs to the source database itself, which pg_dump leaves out without --create:
    its settings, its privileges and its comment (copied with the pre-data)."""

    settings: list[DatabaseSetting]
    acl: DatabaseAcl

    def apply(self, dst: Conn, privileges: bool) -> list[tuple[object, str]]:
        """Set them on the destination in the caller's transaction; those refused, and why."""
        acl = statements(self.acl, str(dst.info.dbname), privileges)
        return [*apply_settings(dst, self.settings), *apply_each(dst, acl)]

    def report(self, refused: list[tuple[object, str]]) -> None:
        for what, reason in refused:
            if isinstance(what, DatabaseSetting):
                log.warning("database setting not copied", setting=str(what), reason=reason)
            else:
                log.warning("database privilege or comment not copied", what=what, reason=reason)
        copied = len(self.settings) - sum(isinstance(w, DatabaseSetting) for w, _ in refused)
        if copied:
            log.info("database settings copied", count=copied)
