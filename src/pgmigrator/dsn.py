"""Connection strings: parsing, redaction and derived variants (replication, other database).

Passwords never leave this module in clear text except inside the libpq connection string handed
to psycopg or to a child process's environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgmigrator.errors import ConfigError

_SECRET_KEYS = ("password", "sslpassword")


def parse(dsn: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception as exc:  # psycopg.ProgrammingError for bad syntax
        raise ConfigError(
            f"cannot parse connection string {redact(dsn)!r}: {exc}",
            hint="use a URI (postgresql://user:pass@host:5432/db) or key=value pairs (host=... dbname=...)",
        ) from None


def redact(dsn: str) -> str:
    """Return the connection string with every secret replaced by ``***``; never raises."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable connection string>"
    shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in params.items() if v is not None}
    return " ".join(f"{k}={v}" for k, v in shown.items())


def with_params(dsn: str, **params: str) -> str:
    return make_conninfo(dsn, **params)


@dataclass(frozen=True, slots=True)
class Target:
    """A PostgreSQL server and database we connect to, with a printable description."""

    dsn: str
    role: str  # "source" or "destination", for messages

    @property
    def safe(self) -> str:
        return redact(self.dsn)

    @property
    def database(self) -> str:
        params = parse(self.dsn)
        return (
            params.get("dbname") or params.get("user") or os.environ.get("PGDATABASE", "postgres")
        )

    def libpq_env(self) -> dict[str, str]:
        """Environment for a child libpq program (pg_dump, psql): secrets in env, not in argv."""
        env = dict(os.environ)
        params = parse(self.dsn)
        mapping = {
            "host": "PGHOST",
            "port": "PGPORT",
            "user": "PGUSER",
            "password": "PGPASSWORD",
            "dbname": "PGDATABASE",
            "sslmode": "PGSSLMODE",
            "sslrootcert": "PGSSLROOTCERT",
            "sslcert": "PGSSLCERT",
            "sslkey": "PGSSLKEY",
            "passfile": "PGPASSFILE",
            "options": "PGOPTIONS",
            "connect_timeout": "PGCONNECT_TIMEOUT",
        }
        for key, var in mapping.items():
            if key in params:
                env[var] = params[key]
        return env
