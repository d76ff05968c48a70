"""Conflict detection for bidirectional replication: one set-based query per table and batch.

A *conflict* is an incoming UPDATE or DELETE whose target row (found by its key) holds a version
committed on this side by a transaction with another replication origin than this applier's (a
local write, usually) later than the incoming change was committed on the other side; or an
incoming INSERT whose key holds such a version, whatever its time; or an incoming UPDATE whose row
is not here at all (deleted on this side while the other side updated it: PostgreSQL keeps no
trace of the deletion, so its time is unknown). Only versions committed after
bidirectional replication started count (``since``: rows written before, such as the clone's own
copy, are never conflicts). Commit times come from ``pg_xact_commit_timestamp_origin(xmin)``
(``track_commit_timestamp = on``); an applied transaction keeps its *source* commit time
(``pg_replication_origin_xact_setup``), so both sides compare the same clocks.

Policies: ``error`` stops the applier with a message naming the table, the key and both row
versions; ``last-writer-wins`` keeps the version with the later commit time: the incoming
changes to that key are skipped when the local version is newer, applied otherwise (an INSERT
then replaces the row); an UPDATE of a row deleted here is reported and applies to nothing (the
deletion stays here; the other side keeps the row when its update was the later write, and the
log names the key to reconcile). Every row the batch touches is locked (``FOR UPDATE``) by the check, so
that a local write cannot slip in between the check and the apply; a row inserted here after the
check makes the apply fail with a unique violation, which the applier turns into a retry of the
batch (the check then sees the row). Tables without a key (REPLICA IDENTITY FULL) are not
checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from psycopg import sql

from pgmigrator.destination._table import Table
from pgmigrator.errors import ApplyError, RetryableApplyError
from pgmigrator.events import (
    Delete,
    Insert,
    Truncate,
    TupleData,
    Update,
    pg_timestamp_to_datetime,
)
from pgmigrator.log import get_logger

log = get_logger("conflicts")

ConflictMode = Literal["error", "last-writer-wins"]

Change = Insert | Update | Delete
_GONE = "(the row is not here: deleted on this side)"
_SHOWN = 400  # characters of a row version shown in messages and logs
_US = sql.SQL(
    "((extract(epoch FROM c.timestamp) * 1000000)::int8 - 946684800000000)"
)  # a commit timestamp as µs since 2000-01-01, the unit pgoutput uses


@dataclass(frozen=True, slots=True)
class ConflictPolicy:
    """How the applier treats conflicts (see the module docstring)."""

    mode: ConflictMode = "error"
    since_us: int = 0  # server µs since 2000-01-01: older local versions are never conflicts
    on_conflict: Callable[[Conflict], None] | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    table: str
    key: dict[str, str | None]
    local: str  # the local row version, as JSON (`_GONE` when the row is not here)
    local_time: datetime | None  # None: the row is not here (deleted on this side)
    local_origin: str  # "local" or the replication origin's name
    incoming: str  # "UPDATE {...}", "INSERT {...}" or "DELETE"
    incoming_time: datetime
    winner: Literal["local", "incoming"] | None  # None: policy error

    def describe(self) -> str:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        here = (
            "the row is not here (deleted on this side meanwhile)"
            if self.local_time is None
            else f"the row here was changed at {self.local_time.isoformat()}"
            f" ({self.local_origin}): {self.local}"
        )
        return (
            f"conflict on {self.table} ({key}): {here}; the incoming change was committed on"
            f" the other side at {self.incoming_time.isoformat()}: {self.incoming}"
        )


@dataclass(slots=True)
class _Key:
    first: int  # commit time of the first incoming change to the key
    last: int  # ... and of the last one
    change: Change  # the last change, for messages
    insert: bool  # the first change is an INSERT: any existing local row conflicts
    update: bool  # the first change is an UPDATE: a missing local row conflicts


def check_batch(
    cur: Any,
    table_of: Callable[[int], Table],
    changes: Sequence[Insert | Update | Delete | Truncate],
    times: Sequence[int],
    own_origin: int,
    policy: ConflictPolicy,
) -> list[Insert | Update | Delete | Truncate]:
    """``changes`` (any relations, source order) after the check: one query per table between truncates."""
    out: list[Insert | Update | Delete | Truncate] = []
    groups: dict[int, tuple[list[Change], list[int]]] = {}

    def check_groups() -> None:
        for oid, (group, at) in groups.items():
            out.extend(check(cur, table_of(oid), group, at, own_origin, policy))
        groups.clear()

    for change, at in zip(changes, times, strict=True):
        if isinstance(change, Truncate):
            check_groups()
            out.append(change)
            continue
        group, group_times = groups.setdefault(change.relation_oid, ([], []))
        group.append(change)
        group_times.append(at)
    check_groups()
    return out


def check(
    cur: Any,
    t: Table,
    changes: Sequence[Change],
    times: Sequence[int],
    own_origin: int,
    policy: ConflictPolicy,
) -> list[Change]:
    """The changes of one relation to apply after the check (``times``: commit time per change).

    Raises `ApplyError` on a conflict under the ``error`` policy.
    """
    if not t.key:
        return list(changes)
    keys = _keys(t, changes, times)
    ordered = list(keys)
    rows = cur.execute(_query(t), _params(t, ordered, keys, own_origin, policy)).fetchall()
    if not rows:
        return list(changes)
    names = _origin_names(cur, {row[2] for row in rows if row[2] is not None})
    skip: set[tuple[bytes | None, ...]] = set()
    replace: set[tuple[bytes | None, ...]] = set()
    for ordinal, local_us, roident, local in rows:
        k = ordered[ordinal - 1]
        conflict = _conflict(t, k, keys[k], policy, local_us, names.get(roident, "local"), local)
        _report(policy, conflict)
        if conflict.winner is None:
            raise ApplyError(
                conflict.describe(),
                hint="the follower will stop here on every restart: run it once with "
                "--conflict last-writer-wins (bidi.conflict) to keep the newer version (a "
                "deletion here stays), then correct the row by hand if the other version was right",
            )
        if local_us is not None:  # (an UPDATE of a missing row applies to nothing anyway)
            (skip if conflict.winner == "local" else replace).add(k)
    return _resolve(t, changes, skip, replace)


def _keys(
    t: Table, changes: Sequence[Change], times: Sequence[int]
) -> dict[tuple[bytes | None, ...], _Key]:
    """Each key the changes touch, with the first and last commit times and the last change."""
    keys: dict[tuple[bytes | None, ...], _Key] = {}
    for change, at in zip(changes, times, strict=True):
        k = _key(t, change)
        found = keys.get(k)
        if found is None:
            keys[k] = _Key(at, at, change, isinstance(change, Insert), isinstance(change, Update))
        else:
            found.last, found.change = at, change
    return keys


def _conflict(
    t: Table,
    k: tuple[bytes | None, ...],
    found: _Key,
    policy: ConflictPolicy,
    local_us: int | None,
    local_origin: str,
    local: str | None,
) -> Conflict:
    """The conflict on key ``k``; ``local_us`` None: its row is not here (an UPDATE's)."""
    return Conflict(
        table=t.name,
        key={t.relation.columns[i].name: _text(v) for i, v in zip(t.key, k, strict=True)},
        local=_GONE if local is None else _shorten(local),
        local_time=None if local_us is None else pg_timestamp_to_datetime(local_us),
        local_origin=local_origin,
        incoming=_incoming(t, found.change),
        incoming_time=pg_timestamp_to_datetime(found.first),
        winner=_winner(policy, local_us, found.last),
    )


def concurrent_insert(table: str, exc: Exception) -> RetryableApplyError:
    """The retry for a unique violation in bidirectional mode (a row inserted here meanwhile)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RetryableApplyError(
        f"{table}: {detail}",
        hint="in bidirectional mode this means a row with the same key was inserted on this side "
        "after the conflict check: the batch is retried, and the check then sees that row",
    )


def _winner(
    policy: ConflictPolicy, local_us: int | None, last_us: int
) -> Literal["local", "incoming"] | None:
    if policy.mode == "error":
        return None
    if local_us is None:  # the deletion here stays: its time is unknown
        return "local"
    return "local" if local_us > last_us else "incoming"


def _report(policy: ConflictPolicy, conflict: Conflict) -> None:
    log.warning(
        "conflict",
        table=conflict.table,
        key=conflict.key,
        local=conflict.local,
        local_time=conflict.local_time.isoformat() if conflict.local_time else None,
        local_origin=conflict.local_origin,
        incoming=conflict.incoming,
        incoming_time=conflict.incoming_time.isoformat(),
        winner=conflict.winner or "none (policy error)",
    )
    if policy.on_conflict is not None:
        policy.on_conflict(conflict)


def _resolve(
    t: Table,
    changes: Sequence[Change],
    skip: set[tuple[bytes | None, ...]],
    replace: set[tuple[bytes | None, ...]],
) -> list[Change]:
    """Drop the changes to keys the local side wins; an incoming INSERT that wins replaces the row."""
    out: list[Change] = []
    for change in changes:
        k = _key(t, change)
        if k in skip:
            continue
        if k in replace and isinstance(change, Insert):
            out.append(Delete(change.relation_oid, change.new, "K"))
            replace.discard(k)  # later inserts of the key follow a delete in the stream itself
        out.append(change)
    return out


def expand_times(runs: Sequence[tuple[int, int]], n: int) -> list[int]:
    """Per-change commit times of ``n`` changes from ``(first index, time)`` runs (`Changes.times`)."""
    out: list[int] = []
    for j, (start, at) in enumerate(runs):
        end = runs[j + 1][0] if j + 1 < len(runs) else n
        out += [at] * (end - start)
    return out


def _key(t: Table, change: Change) -> tuple[bytes | None, ...]:
    if isinstance(change, Insert):
        row = change.new
    elif isinstance(change, Update):
        row = change.old or change.new
    else:
        row = change.old
    values = row.values
    return tuple(values[i] for i in t.key)


def _query(t: Table) -> bytes:
    found = t.cache.get(("conflicts",))
    if found is not None:
        return found  # type: ignore[no-any-return]
    knames = [sql.Identifier(f"k{n}") for n in range(len(t.key))]
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(t.casts[i]) for i in t.key)
    join = sql.SQL(" AND ").join(
        sql.SQL("d.{} = s.{}").format(t.pcolumns[i], k) for i, k in zip(t.key, knames, strict=True)
    )
    # Every matching row is locked, not only the conflicting ones: a row that does not conflict
    # yet could be changed here between this check and the apply. The keys an UPDATE comes
    # first for and that match no row come back with NULLs: rows deleted here.
    stmt = sql.SQL(
        "WITH s AS (SELECT * FROM unnest({arrays}, %s::int8[], %s::bool[], %s::bool[])"
        " WITH ORDINALITY AS s({knames}, t, ins, upd, ord)),"
        " locked AS MATERIALIZED (SELECT s.ord, s.t, s.ins, d.xmin AS x,"
        " row_to_json(d)::text AS r FROM s JOIN {table} AS d ON {join} FOR UPDATE OF d)"
        " SELECT l.ord, {us}, c.roident, l.r FROM locked AS l"
        " CROSS JOIN LATERAL pg_xact_commit_timestamp_origin(l.x) AS c"
        " WHERE c.roident <> %s::oid AND {us} > %s::int8 AND ({us} > l.t OR l.ins)"
        " UNION ALL SELECT s.ord, NULL::int8, NULL::oid, NULL::text FROM s"
        " WHERE s.upd AND NOT EXISTS (SELECT FROM locked AS l WHERE l.ord = s.ord)"
    ).format(
        us=_US,
        arrays=arrays,
        knames=sql.SQL(", ").join(knames),
        table=t.pident,
        join=join,
    )
    rendered = stmt.as_bytes(None)
    t.cache[("conflicts",)] = rendered
    return rendered


def _params(
    t: Table,
    ordered: list[tuple[bytes | None, ...]],
    keys: dict[tuple[bytes | None, ...], _Key],
    own_origin: int,
    policy: ConflictPolicy,
) -> list[object]:
    params: list[object] = [
        _array([k[n] for k in ordered]) for n in range(len(t.key))
    ]  # array literals built here: psycopg's list adaptation costs far more per value
    params.append(b"{" + b",".join(b"%d" % keys[k].first for k in ordered) + b"}")
    params.append(b"{" + b",".join(b"t" if keys[k].insert else b"f" for k in ordered) + b"}")
    params.append(b"{" + b",".join(b"t" if keys[k].update else b"f" for k in ordered) + b"}")
    params += [own_origin, policy.since_us]
    return params


def _array(values: Sequence[bytes | None]) -> bytes:
    return b"{" + b",".join(_element(v) for v in values) + b"}"


def _element(value: bytes | None) -> bytes:
    if value is None:
        return b"NULL"
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _origin_names(cur: Any, ids: set[int]) -> dict[int, str]:
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    rows = cur.execute(
        "SELECT roident::int8, roname FROM pg_replication_origin WHERE roident::int8 = ANY(%s::int8[])",
        (wanted,),
    ).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def _incoming(t: Table, change: Change) -> str:
    if isinstance(change, Delete):
        return "DELETE"
    op = "INSERT" if isinstance(change, Insert) else "UPDATE"
    return f"{op} {_shorten(_row_json(t, change.new))}"


def _row_json(t: Table, row: TupleData) -> str:
    doc = {
        c.name: ("<unchanged>" if row.is_unchanged_toast(i) else _text(row.values[i]))
        for i, c in enumerate(t.relation.columns)
    }
    return orjson.dumps(doc).decode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
