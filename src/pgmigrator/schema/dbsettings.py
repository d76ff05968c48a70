"""Settings of the database itself: ``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ...
SET`` (a database-wide ``search_path``, a reporting role's ``statement_timeout``).

pg_dump writes them only with ``--create``, which the clone does not use (the destination
database exists), so an application could find its ``search_path`` gone after the switchover. The
clone copies them with the pre-data, each on its own (a savepoint): one the destination refuses (a
parameter its version lacks, one only a superuser may set, a role it lacks) is reported with the
reason and skipped. Settings only the destination has are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from psycopg import sql

from pgmigrator.pg import Conn
from pgmigrator.schema.roles import existing_roles

T = TypeVar("T")

_READ_SQL = """
SELECT r.rolname, s.setconfig
FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY r.rolname NULLS FIRST
"""

_MAY_ALTER_SQL = """
SELECT r.rolsuper OR pg_has_role(current_user, d.datdba, 'MEMBER')
FROM pg_database d, pg_roles r WHERE d.datname = current_database() AND r.rolname = current_user
"""

#: Left out, and said why: a read-only default (which the switchover's fence sets on the source)
#: would make the destination refuse the clone's own writes, then the application's.
NOT_COPIED = {
    "default_transaction_read_only": "a read-only default would stop the copy's own writes; set"
    " it on the destination yourself once it is meant to be read-only",
}

# Settings whose value is a list of names: each element is its own literal (as pg_dump does).
_LIST_SETTINGS = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}
)


@dataclass(frozen=True, slots=True)
class DatabaseSetting:
    """One ``pg_db_role_setting`` entry: for the database, a role in it, or a role anywhere."""

    role: str | None  # None: for the whole database
    name: str
    value: str
    in_database: bool = True  # False: the role's, for any database (``ALTER ROLE ... SET``)

    def __str__(self) -> str:
        if self.role is None:
            where = "the database"
        elif self.in_database:
            where = f"role {self.role} in the database"
        else:
            where = f"role {self.role}"
        return f"{self.name}={self.value} ({where})"

    def statement(self, database: str) -> sql.Composed:
        if self.role is None:
            target = sql.SQL("DATABASE {}").format(sql.Identifier(database))
        elif self.in_database:
            target = sql.SQL("ROLE {} IN DATABASE {}").format(
                sql.Identifier(self.role), sql.Identifier(database)
            )
        else:
            target = sql.SQL("ROLE {}").format(sql.Identifier(self.role))
        return sql.SQL("ALTER {} SET {}").format(target, assignment(self.name, self.value))


def parse(
    role: str | None, config: Sequence[str] | None, in_database: bool = True
) -> list[DatabaseSetting]:
    """``pg_db_role_setting.setconfig`` (``name=value`` items) as settings."""
    out = []
    for item in config or ():
        name, _, value = str(item).partition("=")
        out.append(DatabaseSetting(role, name, value, in_database))
    return out


def assignment(name: str, value: str) -> sql.Composed:
    """``name TO value`` as ``pg_db_role_setting`` stores it, everything quoted."""
    values = list_elements(value) if name.lower() in _LIST_SETTINGS else [value]
    return sql.SQL("{} TO {}").format(
        sql.SQL(".").join(sql.Identifier(part) for part in name.split(".")),
        sql.SQL(", ").join(sql.Literal(v) for v in values),
    )


def list_elements(value: str) -> list[str]:
    """A list setting's elements as stored (``a, "$user", "b c"``), double quotes removed."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            j, part = i + 1, []
            while j < n and not (value[j] == '"' and value[j + 1 : j + 2] != '"'):
                part.append(value[j])
                j += 2 if value[j] == '"' else 1  # "" is a quote inside the name
            out.append("".join(part))
            i = value.find(",", j)
        else:
            j = value.find(",", i)
            out.append(value[i : n if j < 0 else j].strip())
            i = j
        if i < 0:
            break
        i += 1
    return out


def read_settings(src: Conn) -> list[DatabaseSetting]:
    """The settings of the connected database, database-wide first."""
    return [
        setting
        for role, config in src.execute(_READ_SQL)
        for setting in parse(str(role) if role else None, config)
    ]


def may_alter_database(dst: Conn) -> bool:
    """Whether the session's user owns the connected database (or is a superuser)."""
    row = dst.execute(_MAY_ALTER_SQL).fetchone()
    return bool(row and row[0])


def problems(dst: Conn, settings: list[DatabaseSetting], planned: frozenset[str]) -> list[str]:
    """What will not be copied, known before trying: no right to ALTER DATABASE, missing roles
    (``planned``: roles the clone creates first)."""
    out = []
    if any(s.role is None for s in settings) and not may_alter_database(dst):
        out.append("the destination's user neither owns the database nor is a superuser")
    roles = sorted({s.role for s in settings if s.role} - planned)
    present = existing_roles(dst, roles)
    out += [
        f"role {role} does not exist on the destination" for role in roles if role not in present
    ]
    out += [
        f"{s.name} is not copied: {NOT_COPIED[s.name]}" for s in settings if s.name in NOT_COPIED
    ]
    return out


def apply_settings(dst: Conn, settings: list[DatabaseSetting]) -> list[tuple[DatabaseSetting, str]]:
    """Set each of ``settings`` on the destination database, in the caller's transaction, each in
    a savepoint; the ones refused, with PostgreSQL's reason."""
    database = str(dst.info.dbname)
    refused = [(s, NOT_COPIED[s.name]) for s in settings if s.name in NOT_COPIED]
    return refused + apply_each(
        dst, [(s, s.statement(database)) for s in settings if s.name not in NOT_COPIED]
    )


def apply_each(dst: Conn, items: Sequence[tuple[T, sql.Composed]]) -> list[tuple[T, str]]:
    """Run each statement in its own savepoint of the caller's transaction; the items whose
    statement the destination refused, with PostgreSQL's reason."""
    refused = []
    for item, statement in items:
        try:
            with dst.transaction():
                dst.execute(statement)
        except psycopg.Error as exc:
            refused.append((item, exc.diag.message_primary or type(exc).__name__))
    return refused
