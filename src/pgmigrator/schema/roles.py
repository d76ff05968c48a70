"""Owners and privileges of the copied schema: the roles it names, and whether the destination has them.

pg_dump writes ``ALTER ... OWNER TO role`` and ``GRANT ... TO role`` for every object it dumps,
but roles are cluster-wide objects that no database dump carries. A role the destination lacks
would fail the pre-data script, after the slot and publication were created; so the clone looks
the roles up in the source's catalogs first and refuses, naming them, before it creates anything.
Setting an owner also needs the destination's user to be a superuser or a member of that role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.source.catalog import SYSTEM_SCHEMAS

# Objects pg_dump writes an owner or grants for: relations (minus the tables left out), schemas,
# functions, types, collations, conversions, operators and their classes and families, text
# search dictionaries and configurations, statistics objects, foreign-data wrappers and servers,
# event triggers, procedural languages, default privileges. Members of extensions are dumped as
# the extension only. ``owns`` is true for a role that owns something, false for one only granted
# to (or granting).
_ROLES_SQL = """
WITH ns AS (
  SELECT oid FROM pg_namespace WHERE nspname <> ALL(%(system)s) AND nspname NOT LIKE 'pg\\_%%'
), objs AS (
  SELECT c.oid, 'pg_class'::regclass AS cls, c.relowner AS owner, c.relacl AS acl
  FROM pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
    AND c.relnamespace IN (SELECT oid FROM ns) AND c.oid <> ALL(%(excluded)s)
  UNION ALL SELECT oid, 'pg_namespace'::regclass, nspowner, nspacl FROM pg_namespace
  WHERE oid IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_proc'::regclass, proowner, proacl FROM pg_proc
  WHERE pronamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_type'::regclass, typowner, typacl FROM pg_type
  WHERE typnamespace IN (SELECT oid FROM ns) AND typtype IN ('e', 'd', 'r', 'b', 'm')
  UNION ALL SELECT oid, 'pg_collation'::regclass, collowner, NULL FROM pg_collation
  WHERE collnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_conversion'::regclass, conowner, NULL FROM pg_conversion
  WHERE connamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_operator'::regclass, oprowner, NULL FROM pg_operator
  WHERE oprnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_opclass'::regclass, opcowner, NULL FROM pg_opclass
  WHERE opcnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_opfamily'::regclass, opfowner, NULL FROM pg_opfamily
  WHERE opfnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_ts_dict'::regclass, dictowner, NULL FROM pg_ts_dict
  WHERE dictnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_ts_config'::regclass, cfgowner, NULL FROM pg_ts_config
  WHERE cfgnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_statistic_ext'::regclass, stxowner, NULL FROM pg_statistic_ext
  WHERE stxnamespace IN (SELECT oid FROM ns)
  UNION ALL SELECT oid, 'pg_foreign_data_wrapper'::regclass, fdwowner, fdwacl
  FROM pg_foreign_data_wrapper
  UNION ALL SELECT oid, 'pg_foreign_server'::regclass, srvowner, srvacl FROM pg_foreign_server
  UNION ALL SELECT oid, 'pg_event_trigger'::regclass, evtowner, NULL FROM pg_event_trigger
  UNION ALL SELECT oid, 'pg_language'::regclass, lanowner, lanacl FROM pg_language
  WHERE lanispl AND oid >= 16384
  UNION ALL SELECT oid, 'pg_default_acl'::regclass, defaclrole, defaclacl FROM pg_default_acl
), mine AS (
  SELECT * FROM objs o WHERE NOT EXISTS (
    SELECT 1 FROM pg_depend e WHERE e.classid = o.cls AND e.objid = o.oid AND e.deptype = 'e')
), named AS (
  SELECT owner AS role, true AS owns FROM mine
  UNION ALL SELECT a.grantee, false FROM mine, aclexplode(mine.acl) a WHERE %(privileges)s
  UNION ALL SELECT a.grantor, false FROM mine, aclexplode(mine.acl) a WHERE %(privileges)s
)
SELECT r.rolname, bool_or(owns) FROM named JOIN pg_roles r ON r.oid = named.role
WHERE r.rolname NOT LIKE 'pg\\_%%'
GROUP BY r.rolname ORDER BY 1
"""

_DEST_SQL = """
SELECT r.rolname, p.oid IS NOT NULL,
       CASE WHEN p.oid IS NULL THEN false
            ELSE (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                 OR pg_has_role(current_user, p.oid, 'MEMBER') END
FROM unnest(%s::text[]) AS r(rolname) LEFT JOIN pg_roles p ON p.rolname = r.rolname
ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class RoleProblems:
    missing: tuple[str, ...]  # named by the schema, absent on the destination
    not_assumable: tuple[str, ...]  # own something, and the destination's user may not set them

    def __bool__(self) -> bool:
        return bool(self.missing or self.not_assumable)

    def message(self) -> str:
        parts = []
        if self.missing:
            parts.append(
                "the destination lacks role(s) the schema names as owners or grantees: "
                + listed(self.missing)
            )
        if self.not_assumable:
            parts.append(
                "the destination's user may not make these roles owners (neither superuser nor"
                " a member): " + listed(self.not_assumable)
            )
        return "; ".join(parts)

    def raise_if_any(self) -> None:
        """`PreflightError` naming the roles, when there is a problem."""
        if self:
            raise PreflightError(self.message(), hint=self.hint())

    def hint(self) -> str:
        return (
            "create the roles on the destination first (e.g. from `pg_dumpall --roles-only` on"
            " the source) and connect as a superuser, or copy without them: --no-owner"
            " (objects owned by the destination's user) and --no-privileges (no GRANTs)"
        )


def role_problems(
    src: Conn,
    dst: Conn,
    excluded_oids: Sequence[int],
    *,
    owners: bool = True,
    privileges: bool = True,
) -> RoleProblems:
    """What would fail the pre-data script for want of a role on the destination."""
    if not (owners or privileges):
        return RoleProblems((), ())
    params = {
        "system": list(SYSTEM_SCHEMAS),
        "excluded": list(excluded_oids),
        "privileges": privileges,
    }
    named = {str(r[0]): bool(r[1]) for r in src.execute(_ROLES_SQL, params).fetchall()}
    if not owners:
        named = {role: False for role in named}
    named = {role: owns for role, owns in named.items() if owns or privileges}
    rows = dst.execute(_DEST_SQL, (sorted(named),)).fetchall()
    missing = tuple(str(r[0]) for r in rows if not r[1])
    not_assumable = tuple(str(r[0]) for r in rows if r[1] and named[str(r[0])] and not r[2])
    return RoleProblems(missing, not_assumable)
