"""Running ``pg_dump`` for one section and splitting its output into entries.

The dump runs under the slot's exported snapshot (``--snapshot``), so the schema matches the rows.
psql meta-commands (``\\restrict`` in recent pg_dump releases) are stripped: the script is executed
through psycopg, not psql. Passwords reach pg_dump through its environment, never its arguments.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgmigrator.dsn import Target
from pgmigrator.errors import SchemaError, ToolMissing
from pgmigrator.source.catalog import TableInfo

_HEADER = re.compile(
    r"^--\n-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<kind>.*?); Schema: (?P<schema>.*?);"
    r" Owner: [^;\n]*(?:; Tablespace: (?P<tablespace>[^\n]*))?\n--\n",
    re.MULTILINE,
)
# What pg_dump sets, when it changes, just *before* the header of the entry that needs it.
PLACEMENT = re.compile(r"^SET (default_tablespace|default_table_access_method) = .*;$")


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    kind: str  # pg_dump's TOC type: INDEX, CONSTRAINT, FK CONSTRAINT, TRIGGER, ...
    name: str
    schema: str
    sql: str  # self-contained: starts with the placement settings in force for it
    tablespace: str = ""  # pg_dump's header: the object's tablespace ("": the default)


@dataclass(frozen=True, slots=True)
class Script:
    preamble: str  # SET statements every connection runs first
    entries: tuple[Entry, ...]

    @property
    def text(self) -> str:
        return self.preamble + "".join(e.sql for e in self.entries)


def find_pg_dump(min_major: int) -> tuple[Path, int]:
    """The newest pg_dump available; it must be at least the source server's major version."""
    override = os.environ.get("PGMIGRATOR_PG_DUMP")
    if override:
        candidates = [override]
    else:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
            key=lambda p: int(p.split("/")[-3]),
            reverse=True,
        )
        on_path = shutil.which("pg_dump")
        if on_path:
            candidates.append(on_path)
    best: tuple[Path, int] | None = None
    for cand in candidates:
        major = _major(cand)
        if major is not None and (best is None or major > best[1]):
            best = (Path(cand), major)
    if best is None:
        raise ToolMissing(
            "pg_dump not found",
            hint="install the PostgreSQL client: `apt-get install postgresql-client` (or set PGMIGRATOR_PG_DUMP)",
        )
    if best[1] < min_major:
        raise ToolMissing(
            f"pg_dump {best[1]} ({best[0]}) is older than the source server ({min_major})",
            hint=f"install postgresql-client-{min_major} or newer; pg_dump refuses newer servers",
        )
    return best


def _major(path: str) -> int | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class DumpOptions:
    """What of the source's schema the dump carries besides the objects (the clone's options)."""

    owners: bool = True  # ALTER ... OWNER TO (--no-owner)
    privileges: bool = True  # GRANT / REVOKE (--no-privileges)
    tablespaces: bool = True  # SET default_tablespace (--no-tablespaces)

    def flags(self) -> tuple[str, ...]:
        left_out = (
            ("--no-owner", self.owners),
            ("--no-privileges", self.privileges),
            ("--no-tablespaces", self.tablespaces),
        )
        return tuple(flag for flag, kept in left_out if not kept)


#: The default: owners, privileges and tablespaces all carried.
EVERYTHING = DumpOptions()


def dump_section(
    pg_dump: Path,
    source: Target,
    section: str | None,
    *,
    snapshot: str | None,
    exclude: Sequence[TableInfo],
    clean: bool = False,
    options: DumpOptions = EVERYTHING,
) -> Script:
    """``pg_dump --schema-only`` of one section (None: pre-data and post-data in one run)."""
    what = "--schema-only" if section is None else f"--section={section}"
    args = [
        str(pg_dump),
        "--schema-only",
        *(() if section is None else (what,)),
        *options.flags(),
        "--no-publications",
        "--no-subscriptions",
        "--exclude-schema=pgmigrator",
    ]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    if clean:
        args += ["--clean", "--if-exists"]
    for table in exclude:
        args.append(
            "--exclude-table=" + _quote_pattern(table.schema) + "." + _quote_pattern(table.name)
        )
    res = subprocess.run(args, capture_output=True, text=True, env=source.libpq_env(), check=False)
    if res.returncode != 0:
        raise SchemaError(
            f"pg_dump {what} failed: {res.stderr.strip()}",
            hint="check that the source role may read every table and schema (or exclude them)",
        )
    return split(res.stdout)


def _quote_pattern(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def split(text: str) -> Script:
    """Split pg_dump's plain output into a preamble and its entries (psql meta-commands removed).

    pg_dump writes ``SET default_tablespace`` / ``default_table_access_method`` only when they
    change, and before the header of the entry that needs them: text order. Entries run apart
    (post-data builds in parallel on several connections), so each entry starts with every
    placement setting in force for it, and none trails the entry before it.
    """
    text = "\n".join(line for line in text.splitlines() if not line.startswith("\\")) + "\n"
    matches = list(_HEADER.finditer(text))
    if not matches:
        return Script(text, ())
    preamble, carried = _trailing_placement(text[: matches[0].start()])
    in_force: dict[str, str] = {}
    entries = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        in_force.update(carried)
        body, carried = _trailing_placement(text[m.start() : end])
        settings = "".join(line + "\n" for line in in_force.values())
        entries.append(
            Entry(
                i,
                m["kind"],
                m["name"],
                m["schema"],
                (settings + "\n" if settings else "") + body,
                m["tablespace"] or "",
            )
        )
    return Script(preamble, tuple(entries))


def _trailing_placement(segment: str) -> tuple[str, dict[str, str]]:
    """``segment`` without its trailing placement SETs, and those SETs by setting name."""
    lines = segment.split("\n")
    keep = len(lines)
    found: dict[str, str] = {}
    while keep and (not lines[keep - 1].strip() or PLACEMENT.match(lines[keep - 1])):
        match = PLACEMENT.match(lines[keep - 1])
        if match:
            found.setdefault(match[1], lines[keep - 1])  # the last one written wins
        keep -= 1
    return "\n".join(lines[:keep]) + "\n\n", dict(reversed(list(found.items())))


PARALLEL_KINDS = frozenset({"INDEX", "CONSTRAINT", "FK CONSTRAINT"})


def waves(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Group consecutive entries of one parallel-safe kind into a wave; anything else runs alone.

    pg_dump orders post-data by dependency (indexes, then constraints, index attachments, foreign
    keys, triggers, rules...), so a barrier between waves keeps that order.
    """
    out: list[list[Entry]] = []
    for entry in entries:
        if out and entry.kind in PARALLEL_KINDS and out[-1][0].kind == entry.kind:
            out[-1].append(entry)
        else:
            out.append([entry])
    return out
