"""Transactions that hold up the creation of a logical replication slot.

``CREATE_REPLICATION_SLOT ... LOGICAL`` waits until every transaction that holds a transaction id
when it starts has ended, in every database of the cluster: a prepared transaction a transaction
manager left behind, or a session idle in a transaction, holds a clone in its schema phase for
as long as it lives, with nothing to show for it. `blockers` names them; ``preflight`` warns
about them, and the clone says which ones its slot waits for (`SlotWait`).
"""

from __future__ import annotations

import threading
from types import TracebackType

import psycopg

from pgmigrator.dsn import Target
from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger
from pgmigrator.pg import Conn, connect

log = get_logger("slots")

#: Seconds a slot's creation may wait before the clone names what it waits for (then as often).
REPORT_EVERY_S = 10.0

# Prepared transactions (all of them: they never end by themselves), then sessions with a
# transaction id open for longer than %(older)s seconds.
_SQL = """
SELECT format('prepared transaction %%L in database %%s, prepared %%s s ago by %%s',
              gid, database, round(extract(epoch FROM now() - prepared)), owner)
FROM pg_prepared_xacts
UNION ALL
SELECT format('session %%s of %%s in database %%s, %%s, its transaction open for %%s s',
              pid, coalesce(usename, '?'), coalesce(datname, '?'), coalesce(state, '?'),
              round(extract(epoch FROM now() - xact_start)))
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
  AND xact_start < now() - make_interval(secs => %(older)s)
"""


def blockers(conn: Conn, older_than_s: float = 0.0) -> list[str]:
    """What a slot created now would wait for (sessions: open for more than ``older_than_s``)."""
    return [str(r[0]) for r in conn.execute(_SQL, {"older": older_than_s})]


class SlotWait:
    """While a slot is being created: every `REPORT_EVERY_S`, a warning naming the transactions
    it waits for (on a session of its own; a failure to look is only logged)."""

    def __init__(self, source: Target, every_s: float = REPORT_EVERY_S) -> None:
        self.source = source
        self.every_s = every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="slot-wait", daemon=True)

    def __enter__(self) -> SlotWait:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        conn: Conn | None = None
        waited = 0.0
        try:
            while not self._done.wait(self.every_s):
                waited += self.every_s
                try:
                    conn = conn or connect(self.source)
                    found = blockers(conn, waited)
                except (PgMigratorError, psycopg.Error) as exc:
                    log.debug("could not look for what the slot waits for", error=str(exc))
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                log.warning(
                    "the slot's creation waits for these transactions to end",
                    waited_s=round(waited),
                    transactions="; ".join(found) or "(none open for that long)",
                    hint="COMMIT PREPARED / ROLLBACK PREPARED a forgotten prepared transaction,"
                    " or end the session (pg_terminate_backend)",
                )
        finally:
            if conn is not None:
                conn.close()
