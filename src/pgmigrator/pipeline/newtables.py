"""Tables a pipeline means to carry that its publication lacks: created on the source since the clone.

A publication ``FOR TABLE`` names the tables the clone selected; a table created later is not in
it, so its rows are neither streamed nor proven by the switchover's sentinel, and a live
verification (which lines up the published tables only) does not look at it. The clone records
its table patterns in the state store; a table they select that the publication lacks is one the
pipeline silently misses. ``follow`` warns about each once (it looks again whenever the source's
tables change), ``switchover`` refuses before it fences. The fix: ``pgmigrator resync --add``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg

from pgmigrator.errors import PreflightError, listed
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn
from pgmigrator.source import catalog
from pgmigrator.source.slots import published_tables

log = get_logger("follow")

HINT = (
    "create it on the destination and add it to the pipeline with `pgmigrator resync --add"
    " TABLE` (it is copied and streamed from then on)"
)

Selection = tuple[Sequence[str], Sequence[str]]  # the clone's (include, exclude) patterns


def not_replicated(src: Conn, publication: str, selection: Selection) -> list[str]:
    """The tables (partitioned roots, not their leaves) the patterns select that ``publication``
    lacks."""
    include, exclude = selection
    chosen = catalog.select(catalog.list_tables(src), include, exclude)
    published = set(published_tables(src, publication))
    return sorted(
        {
            f"{t.root_schema}.{t.root_name}"
            for t in chosen
            if (t.root_schema, t.root_name) not in published
        }
    )


def refuse_unreplicated(
    src: Conn, publication: str, selection: Selection | None, also_exclude: Sequence[str] = ()
) -> None:
    """`PreflightError` naming the tables the pipeline misses (nothing for a clone that did not
    record its patterns); ``also_exclude``: patterns the operator leaves out on purpose now."""
    if selection is None:
        return
    include, exclude = selection
    missed = not_replicated(src, publication, (include, [*exclude, *also_exclude]))
    if missed:
        raise PreflightError(
            f"table(s) on the source that the pipeline does not replicate (created since the"
            f" clone?): {listed(missed)}",
            hint=HINT + "; the switchover would leave their rows behind (to leave them out on"
            " purpose: `exclude` in the config, or PGMIGRATOR_EXCLUDE)",
        )


# Changes when a table is created or dropped (temporary ones aside: an application may make
# them all the time): the full check runs only then.
_FINGERPRINT_SQL = (
    "SELECT count(*), max(oid::bigint) FROM pg_class"
    " WHERE relkind IN ('r', 'p') AND relpersistence <> 't'"
)


def watcher(
    publication: str,
    selection: Selection | None,
    report: Callable[[list[str]], None] | None = None,
) -> Callable[[Conn], None]:
    """A check for `sidetasks.watch_source`'s session (each second): when the source's set of
    tables changed, warns once about each table the pipeline misses, and ``report``s the list
    whenever it changes (the status shows it)."""
    warned: set[str] = set()
    seen: tuple[object, ...] | None = None

    def check(src: Conn) -> None:
        nonlocal seen
        if selection is None:
            return
        try:
            now = src.execute(_FINGERPRINT_SQL).fetchone()
            if now == seen:
                return
            missed = not_replicated(src, publication, selection)
        except psycopg.Error as exc:  # the monitoring session failed: it is reopened
            log.debug("could not look for new tables", error=str(exc).strip())
            return
        seen = now
        for table in missed:
            if table not in warned:
                log.warning("table not replicated", table=table, hint=HINT)
        if report is not None and set(missed) != warned:
            report(missed)
        warned.intersection_update(missed)
        warned.update(missed)

    return check
