"""Owners and privileges of the copied schema: the roles it names, and whether the destination has them.

pg_dump writes ``ALTER ... OWNER TO role`` and ``GRANT ... TO role`` for every object it dumps,
but roles are cluster-wide objects that no database dump carries. A role the destination lacks
would fail the pre-data script, after the slot and publication were created; so the clone looks
the roles up in the source's catalogs first and refuses, naming them, before it creates anything.
Setting an owner also needs the destination's user to be a superuser or a member of that role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from pgmigrator.errors import PreflightError, listed
from pgmigrator.pg import Conn
from pgmigrator.source.catalog import SYSTEM_SCHEMAS

# Objects pg_dump writes an owner or grants for, one row per catalog: (catalog, owner column,
# ACL column, namespace column, condition). Relations minus the tables left out; members of
# extensions are dumped as the extension only, so they are left out below.
_OWNED = (
    ("pg_class", "relowner", "relacl", "relnamespace",
     "relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND oid <> ALL(%(excluded)s)"),
    ("pg_namespace", "nspowner", "nspacl", "oid", ""),
    ("pg_proc", "proowner", "proacl", "pronamespace", ""),
    ("pg_type", "typowner", "typacl", "typnamespace", "typtype IN ('e', 'd', 'r', 'b', 'm')"),
    ("pg_collation", "collowner", None, "collnamespace", ""),
    ("pg_conversion", "conowner", None, "connamespace", ""),
    ("pg_operator", "oprowner", None, "oprnamespace", ""),
    ("pg_opclass", "opcowner", None, "opcnamespace", ""),
    ("pg_opfamily", "opfowner", None, "opfnamespace", ""),
    ("pg_ts_dict", "dictowner", None, "dictnamespace", ""),
    ("pg_ts_config", "cfgowner", None, "cfgnamespace", ""),
    ("pg_statistic_ext", "stxowner", None, "stxnamespace", ""),
    ("pg_foreign_data_wrapper", "fdwowner", "fdwacl", None, ""),
    ("pg_foreign_server", "srvowner", "srvacl", None, ""),
    ("pg_event_trigger", "evtowner", None, None, ""),
    ("pg_language", "lanowner", "lanacl", None, "lanispl AND oid >= 16384"),
    ("pg_default_acl", "defaclrole", "defaclacl", None, ""),
    ("pg_largeobject_metadata", "lomowner", "lomacl", None, "%(large_objects)s"),
)  # fmt: skip


def _objects() -> str:
    """The union of `_OWNED`: (oid, catalog, owner, ACL) of every object of this database's own."""
    selects = []
    for catalog, owner, acl, namespace, condition in _OWNED:
        where = [f"{namespace} IN (SELECT oid FROM ns)"] if namespace else []
        where += [condition] if condition else []
        selects.append(
            f"SELECT oid, '{catalog}'::regclass AS cls, {owner} AS owner,"
            f" {acl or 'NULL::aclitem[]'} AS acl FROM {catalog}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )
    return "\n  UNION ALL ".join(selects)


# Per role: whether it owns something, and whether a GRANT pg_dump writes names it. An owner's
# own privileges and the grants it made are written without naming it (a plain GRANT by whoever
# restores), so with --no-owner the owners need not exist; other grantors are named (SET SESSION
# AUTHORIZATION), and so is the role of default privileges (ALTER DEFAULT PRIVILEGES FOR ROLE).
# The grantees of the database's own privileges are named too (the clone copies those, `dbacl`).
_ROLES_SQL = f"""
WITH ns AS (
  SELECT oid FROM pg_namespace WHERE nspname <> ALL(%(system)s) AND nspname NOT LIKE 'pg\\_%%'
), objs AS (
  {_objects()}
), mine AS (
  SELECT * FROM objs o WHERE NOT EXISTS (
    SELECT 1 FROM pg_depend e WHERE e.classid = o.cls AND e.objid = o.oid AND e.deptype = 'e')
), named AS (
  SELECT owner AS role, true AS owns FROM mine
  UNION ALL SELECT a.grantee, false FROM mine, aclexplode(mine.acl) a WHERE a.grantee <> owner
  UNION ALL SELECT a.grantor, false FROM mine, aclexplode(mine.acl) a WHERE a.grantor <> owner
  UNION ALL SELECT owner, false FROM mine WHERE cls = 'pg_default_acl'::regclass  -- FOR ROLE
  UNION ALL SELECT a.grantee, false FROM pg_database d, aclexplode(d.datacl) a  -- the database's
    WHERE d.datname = current_database() AND a.grantee <> d.datdba
)
SELECT r.rolname, bool_or(owns), bool_or(NOT owns) FROM named JOIN pg_roles r ON r.oid = named.role
WHERE r.rolname NOT LIKE 'pg\\_%%'
GROUP BY r.rolname ORDER BY 1
"""

_DEST_SQL = """
SELECT r.rolname, p.oid IS NOT NULL,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       OR (p.oid IS NOT NULL AND pg_has_role(current_user, p.oid, 'MEMBER'))
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

    def problem(self) -> PreflightError | None:
        """`PreflightError` naming the roles, when there is a problem."""
        return PreflightError(self.message(), hint=self.hint()) if self else None

    def hint(self) -> str:
        fixes = []
        if self.missing:
            fixes.append(
                "let the clone create the missing roles (--roles), or create them on the"
                " destination yourself (e.g. from `pg_dumpall --roles-only` on the source)"
            )
        if self.not_assumable:
            fixes.append("connect to the destination as a superuser")
        return (
            "; ".join(fixes) + "; or copy without them: --no-owner"
            " (objects owned by the destination's user) and/or --no-privileges (no GRANTs)"
        )


def role_problems(
    dst: Conn, named: Mapping[str, bool], planned: AbstractSet[str] = frozenset()
) -> RoleProblems:
    """What would fail the pre-data script for want of a role on the destination (``named``:
    `named_roles`).

    ``planned``: roles the clone creates first (``--roles``); they count as present, and as
    assumable only by a superuser (PostgreSQL does not make a role's creator a member of it).
    """
    if not named:
        return RoleProblems((), ())
    rows = dst.execute(_DEST_SQL, (sorted(named),)).fetchall()
    missing = tuple(str(r[0]) for r in rows if not r[1] and str(r[0]) not in planned)
    not_assumable = tuple(
        str(r[0]) for r in rows if (r[1] or str(r[0]) in planned) and named[str(r[0])] and not r[2]
    )
    return RoleProblems(missing, not_assumable)


def named_roles(
    src: Conn,
    excluded_oids: Sequence[int],
    *,
    owners: bool = True,
    privileges: bool = True,
    large_objects: bool = True,
) -> dict[str, bool]:
    """The roles the schema's dump (and the large objects, when copied) will name: role ->
    whether it must be able to own objects."""
    if not (owners or privileges):
        return {}
    params = {
        "system": list(SYSTEM_SCHEMAS),
        "excluded": list(excluded_oids),
        "large_objects": large_objects,
    }
    return {
        str(role): owns and owners
        for role, owns, granted in src.execute(_ROLES_SQL, params).fetchall()
        if (owns and owners) or (granted and privileges)
    }


def existing_roles(conn: Conn, names: Iterable[str]) -> set[str]:
    """Which of ``names`` are roles of ``conn``'s cluster."""
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (sorted(names),))
    return {str(r[0]) for r in rows}
