"""Sentinels: proof that the follower applied everything the source committed before a point.

A sentinel is a transactional logical message, ``pg_logical_emit_message(true, 'pgmigrator',
{"type", "id", "pipeline"})``, emitted on the source. The follower of that pipeline writes its id
into ``pgmigrator.sentinels`` in the same destination transaction as every change committed
before it (see `commands.CommandRunner`), so once the row is visible on the destination, the
destination holds every source transaction that committed before the sentinel's. ``switchover``
uses one as its proof, ``verify --live`` one to line the destination up with a source snapshot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import orjson
import psycopg

from pgmigrator.lsn import Lsn
from pgmigrator.pg import Conn

POLL_S = 0.05  # the longest pause between two looks; the first ones come sooner


def emit(src: Conn, kind: str, pipeline: str) -> tuple[str, Lsn]:
    """Emit a sentinel of ``kind`` for ``pipeline`` (autocommit): its id and LSN."""
    sentinel_id = uuid.uuid4().hex
    content = orjson.dumps({"type": kind, "id": sentinel_id, "pipeline": pipeline})
    row = src.execute(
        "SELECT pg_logical_emit_message(true, 'pgmigrator', %s::bytea)::text", (content,)
    ).fetchone()
    return sentinel_id, Lsn.parse(row[0] if row else None)


def applied(dst: Conn, sentinel_id: str) -> bool:
    """Whether the follower committed the sentinel; a lock held on the table counts as not yet."""
    try:
        found = dst.execute("SELECT 1 FROM pgmigrator.sentinels WHERE id = %s", (sentinel_id,))
        return found.fetchone() is not None
    except psycopg.errors.LockNotAvailable:
        return False
    except psycopg.errors.UndefinedTable:  # no follower ever ran against this destination
        return False


def await_applied(
    dst: Conn, sentinel_id: str, timeout_s: float, on_timeout: Callable[[], Exception]
) -> float:
    """Poll ``dst`` (autocommit; never blocked by locks) until the sentinel is applied; the
    seconds it took. Raises ``on_timeout()`` after ``timeout_s``.

    A caught-up follower applies it within milliseconds, and `verify --live` holds the source's
    writers for that long: the pauses between looks start at 1 ms and double up to `POLL_S`."""
    started = time.monotonic()
    pause = 0.001
    dst.execute("SET lock_timeout = '200ms'")
    try:
        while not applied(dst, sentinel_id):
            if time.monotonic() - started > timeout_s:
                raise on_timeout()
            time.sleep(pause)  # polling another server's state: there is nothing to wait on
            pause = min(POLL_S, pause * 2)
    finally:
        dst.execute("RESET lock_timeout")
    return time.monotonic() - started


def parse(content: bytes, pipeline: str | None) -> tuple[str, str] | None:
    """(kind, id) of a sentinel message meant for ``pipeline``; None for anything else.

    A sentinel names its pipeline: followers of other pipelines reading the same source must not
    record it (the one meant for it would then find the row and conclude too early). Sentinels
    without a pipeline (older versions) are taken by every follower.
    """
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    value, kind, owner = doc.get("id"), doc.get("type", "switchover"), doc.get("pipeline")
    if not isinstance(value, str) or not isinstance(kind, str):
        return None
    if pipeline is not None and owner is not None and owner != pipeline:
        return None
    return kind, value
