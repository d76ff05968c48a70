"""pgmigrator: move and stream PostgreSQL data without downtime.

The public API is deliberately small; the command line (`pgmigrator --help`) is the main entry point.
"""

from pgmigrator.errors import PgMigratorError
from pgmigrator.lsn import Lsn

__all__ = ["Lsn", "PgMigratorError", "__version__"]
__version__ = "0.1.0"
