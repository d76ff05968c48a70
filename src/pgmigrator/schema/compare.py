"""Comparing the schemas of both sides, object by object (``verify --schema``).

Both databases are dumped schema-only by the same ``pg_dump``, with the options the clone used
(owners, privileges, excluded tables; never publications, subscriptions or the ``pgmigrator``
schema), and split into pg_dump's entries. An entry is keyed by its kind, schema and name and
compared by its SQL (the header comment aside), so what the clone rebuilt in its own way (keys
built as a unique index, then attached) compares equal when PostgreSQL describes it the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from pgmigrator.dsn import Target
from pgmigrator.pg import Conn, connect, server_major
from pgmigrator.schema.dbacl import read_acl
from pgmigrator.schema.dbsettings import NOT_COPIED, read_settings
from pgmigrator.schema.dump import (
    EVERYTHING,
    PLACEMENT,
    DumpOptions,
    Entry,
    Script,
    dump_section,
    find_pg_dump,
)
from pgmigrator.source import catalog

Key = tuple[str, str, str]  # kind, schema, name


@dataclass(frozen=True, slots=True)
class SchemaDifference:
    kind: str  # pg_dump's entry type: TABLE, INDEX, CONSTRAINT, TRIGGER, ...
    schema: str
    name: str
    status: str  # missing (on the destination), extra (only on the destination), differs
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SchemaComparison:
    compared: int  # entries on the source
    differences: tuple[SchemaDifference, ...]

    def to_dict(self) -> dict[str, object]:
        return {"compared": self.compared, "differences": [d.to_dict() for d in self.differences]}


def compare(
    source: Target,
    dest: Target,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    options: DumpOptions = EVERYTHING,
) -> SchemaComparison:
    """Dump both schemas and compare them entry by entry; tables the patterns leave out (as the
    clone did) are left out of both dumps. The source database's own settings, privileges and
    comment count too (as the clone copies them: those only the destination has are not
    differences)."""
    with connect(source) as src:
        everything = catalog.list_tables(src)
        left_out = catalog.left_out(everything, catalog.select(everything, include, exclude))
        major = server_major(src)
        wanted = _database_own(src, options.privileges)
    with connect(dest) as dst:
        found = {
            key: value
            for key, value in _database_own(dst, options.privileges).items()
            if key in wanted
        }
    pg_dump, _ = find_pg_dump(major)
    with ThreadPoolExecutor(max_workers=2) as pool:  # one pg_dump a side, both at once
        sides = pool.map(
            lambda target: keyed(
                dump_section(
                    pg_dump,
                    target,
                    None,
                    snapshot=None,
                    exclude=left_out,
                    options=options,
                )
            ),
            (source, dest),
        )
        source_side, dest_side = sides
        return diff({**source_side, **wanted}, {**dest_side, **found})


def _database_own(conn: Conn, privileges: bool) -> dict[Key, str]:
    """The database's settings (`dbsettings`, those never copied aside), privileges (its owner's
    aside) and comment (`dbacl`) as comparable entries."""
    out: dict[Key, str] = {
        ("ROLE SETTING", "-", f"{s.role} {s.name}")
        if s.role
        else ("DATABASE SETTING", "-", s.name): f"{s.name}={s.value}"
        for s in read_settings(conn)
        if s.name not in NOT_COPIED
    }
    acl = read_acl(conn)
    if privileges:
        for role, privs in acl.by_role().items():
            out[("DATABASE PRIVILEGES", "-", role)] = ", ".join(privs)
    if acl.comment is not None:
        out[("DATABASE COMMENT", "-", "-")] = acl.comment
    return out


def keyed(script: Script) -> dict[Key, str]:
    """``script``'s entries by (kind, schema, name), each as the SQL compared."""
    return {(e.kind, e.schema, e.name): _body(e) for e in script.entries}


def _body(entry: Entry) -> str:
    """The entry's SQL without pg_dump's header comment (which names the owner), blank lines or
    the placement settings in force (set for earlier entries), but with what places this one:
    its tablespace, and a table's access method."""
    lines = [
        line
        for line in entry.sql.splitlines()
        if line.strip()
        and not line.startswith("--")
        and not (_placement_of_others(line, entry.kind))
    ]
    if entry.tablespace:
        lines.append(f"-- in tablespace {entry.tablespace}")
    return "\n".join(lines)


def _placement_of_others(line: str, kind: str) -> bool:
    """A placement setting that does not describe an entry of ``kind`` (pg_dump sets the access
    method before each table or materialized view whose method differs from the last one's)."""
    found = PLACEMENT.match(line)
    if found is None:
        return False
    return not (found[1] == "default_table_access_method" and kind in _WITH_ACCESS_METHOD)


_WITH_ACCESS_METHOD = frozenset({"TABLE", "MATERIALIZED VIEW"})


def diff(source: dict[Key, str], dest: dict[Key, str]) -> SchemaComparison:
    """What differs between two sides' entries, in a stable order."""
    found: list[SchemaDifference] = []
    for key in sorted(source.keys() | dest.keys()):
        if key not in dest:
            found.append(SchemaDifference(*key, "missing", _first_line(source[key])))
        elif key not in source:
            found.append(SchemaDifference(*key, "extra", _first_line(dest[key])))
        elif source[key] != dest[key]:
            found.append(SchemaDifference(*key, "differs", _first_change(source[key], dest[key])))
    return SchemaComparison(len(source), tuple(found))


def _first_line(body: str) -> str:
    return body.splitlines()[0] if body else ""


def _first_change(a: str, b: str) -> str:
    """The first differing lines, as ``source: ... / destination: ...``."""
    lines_a, lines_b = a.splitlines(), b.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=lines_a, b=lines_b).get_opcodes():
        if tag != "equal":
            left = lines_a[i1].strip() if i1 < i2 else "(nothing)"
            right = lines_b[j1].strip() if j1 < j2 else "(nothing)"
            return f"source: {left} / destination: {right}"
    return ""


def render(result: SchemaComparison) -> str:
    if not result.differences:
        return f"schema: {result.compared} object(s) compared, all equal"
    lines = [f"schema: {result.compared} object(s) compared, {len(result.differences)} differ"]
    label = {"missing": "missing on the destination", "extra": "only on the destination"}
    for d in result.differences:
        what = f"{d.kind} {d.schema}.{d.name}" if d.schema != "-" else f"{d.kind} {d.name}"
        lines.append(f"  {label.get(d.status, d.status)}: {what}  {d.detail}".rstrip())
    return "\n".join(lines)
