"""The replication wire protocols, as pure functions over bytes (no I/O, no database driver).

`walsender` frames the CopyData stream of START_REPLICATION (XLogData, keepalives, standby
status updates); `pgoutput` decodes the logical replication messages inside XLogData into the
values of `pgmigrator.events`.
"""

from pgmigrator.protocol.pgoutput import PgOutputDecoder, decode_message
from pgmigrator.protocol.walsender import (
    PrimaryKeepalive,
    XLogData,
    build_standby_status_update,
    now_pg_us,
    parse_copy_data,
)

__all__ = [
    "PgOutputDecoder",
    "PrimaryKeepalive",
    "XLogData",
    "build_standby_status_update",
    "decode_message",
    "now_pg_us",
    "parse_copy_data",
]
