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
    r"^--\n-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<kind>.*?); Schema: (?P<schema>.*?); Owner: .*\n--\n",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    kind: str  # pg_dump's TOC type: INDEX, CONSTRAINT, FK CONSTRAINT, TRIGGER, ...
    name: str
    schema: str
    sql: str


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


def dump_section(
    pg_dump: Path,
    source: Target,
    section: str | None,
    *,
    snapshot: str | None,
    exclude: Sequence[TableInfo],
    clean: bool = False,
    owners: bool = True,
    privileges: bool = True,
) -> Script:
    """``pg_dump --schema-only`` of one section (None: pre-data and post-data in one run)."""
    what = "--schema-only" if section is None else f"--section={section}"
    args = [
        str(pg_dump),
        "--schema-only",
        *(() if section is None else (what,)),
        *(() if owners else ("--no-owner",)),
        *(() if privileges else ("--no-privileges",)),
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
    """Split pg_dump's plain output into a preamble and its entries (psql meta-commands removed)."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("\\")) + "\n"
    matches = list(_HEADER.finditer(text))
    if not matches:
        return Script(text, ())
    entries = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.start() : end]
        entries.append(Entry(i, m["kind"], m["name"], m["schema"], body))
    return Script(text[: matches[0].start()], tuple(entries))


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
