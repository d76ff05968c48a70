"""One exception tree for the whole project.

Every error knows whether retrying the same operation may succeed (``retryable``) and carries an
optional ``hint`` telling the operator how to fix it. The CLI prints ``message`` and ``hint`` and
never a traceback for these.
"""

from __future__ import annotations

from collections.abc import Sequence

# SQLSTATE classes and codes that a retry can cure: connection exceptions, operator intervention
# (admin shutdown, crash shutdown, cannot connect now), serialization failures and deadlocks,
# lock timeouts, statement and idle-in-transaction timeouts, and a server running out of
# connections. Everything else (authentication 28, privileges 42501, undefined objects 42P01 and
# 42703, data errors 22, integrity 23, disk full 53100) is fatal: trying again gives the same error.
_RETRYABLE_CLASSES = ("08", "57")
_RETRYABLE_CODES = frozenset({"40001", "40P01", "55P03", "57014", "25P03", "53300", "53400"})
_FATAL_CODES = frozenset({"57P04"})  # database_dropped: no retry brings it back


class PgMigratorError(Exception):
    """Base of every error raised on purpose by pgmigrator."""

    retryable: bool = False

    def __init__(
        self, message: str, *, hint: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class DatabaseError(PgMigratorError):
    """A server reported an error; ``retryable`` follows its SQLSTATE."""

    def __init__(self, message: str, *, sqlstate: str | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, retryable=sqlstate_is_retryable(sqlstate))
        self.sqlstate = sqlstate


class ConfigError(PgMigratorError):
    """Invalid or missing configuration (file, environment or flags)."""


class ConnectionFailed(PgMigratorError):
    """A server could not be reached or dropped the connection; trying again may work."""

    retryable = True


class AuthenticationFailed(PgMigratorError):
    """Wrong password, unknown role or a pg_hba.conf rule refusing us."""


class PrivilegeError(PgMigratorError):
    """The role lacks a privilege needed for the operation."""


class PreflightError(PgMigratorError):
    """A check that blocks a migration failed."""


class ToolMissing(PgMigratorError):
    """An external program (pg_dump, psql, ...) is missing or too old."""


class SchemaError(PgMigratorError):
    """Copying or comparing the schema failed."""


class CopyError(PgMigratorError):
    """Copying a table's rows failed."""


class RetryableCopyError(CopyError):
    """Copying a chunk failed in a way that a new attempt can cure."""

    retryable = True


class DiskFull(PgMigratorError):
    """The destination ran out of disk space: stop, free space, then resume."""


class StateError(PgMigratorError):
    """The persisted pipeline state is missing, inconsistent or of another pipeline."""


class ProtocolError(PgMigratorError):
    """Malformed or truncated replication protocol data."""

    def __init__(self, message: str, *, offset: int = 0, tag: str = "?") -> None:
        super().__init__(f"{message} (message {tag!r} at byte {offset})")
        self.offset = offset
        self.tag = tag


class ReplicationError(PgMigratorError):
    """The replication stream failed (slot, publication, walsender)."""


class RetryableReplicationError(ReplicationError):
    """The replication connection was lost; reconnecting resumes from the flushed LSN."""

    retryable = True


class ApplyError(PgMigratorError):
    """Applying changes to the destination failed."""


class RetryableApplyError(ApplyError):
    """The destination failed in a way that retrying the batch can cure."""

    retryable = True


class SinkError(PgMigratorError):
    """A sink could not deliver events.

    A sink that sends a batch in parts may say how far it got: ``delivered`` leading events of
    the batch were delivered, the next ``failed`` ones (None: all the rest) are what failed. The
    bus then re-sends, or dead-letters, only what was not delivered.
    """

    delivered: int = 0
    failed: int | None = None


class RetryableSinkError(SinkError):
    """A sink failed temporarily (timeout, 5xx, 408, 429)."""

    retryable = True


def sqlstate_is_retryable(sqlstate: str | None) -> bool:
    """Whether a PostgreSQL error with this SQLSTATE may succeed when tried again."""
    if not sqlstate:
        return True  # no SQLSTATE: the connection broke before the server could answer
    if sqlstate in _FATAL_CODES:
        return False
    return sqlstate in _RETRYABLE_CODES or sqlstate[:2] in _RETRYABLE_CLASSES


def is_retryable(exc: BaseException) -> bool:
    """Classify any exception: ours carry the answer, psycopg's are judged by SQLSTATE."""
    if isinstance(exc, PgMigratorError):
        return exc.retryable
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is not None or type(exc).__module__.startswith("psycopg"):
        return sqlstate_is_retryable(sqlstate)
    return isinstance(exc, (ConnectionError, TimeoutError))


def listed(names: Sequence[str], limit: int = 10) -> str:
    """``names`` for a message: the first ``limit``, then how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")
