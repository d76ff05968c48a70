"""Metrics: what a pipeline is doing, for the API, the TUI, the push feed and ``status``.

The pipeline reports to one :class:`Collector`; every consumer reads the same JSON-ready
:meth:`Collector.snapshot`. :class:`StatePersister` keeps the latest snapshot in a state file
that ``pgmigrator status`` reads with :func:`read_state` and prints with :func:`render_status`.
"""

from pgmigrator.metrics.collector import (
    COPIED_STATES,
    Collector,
    HealthStatus,
    Subscription,
    TableEstimate,
)
from pgmigrator.metrics.format import (
    STALE_AFTER_S,
    format_bytes,
    format_count,
    format_duration,
    format_lag,
    format_rate,
    progress_bar,
    render_status,
    snapshot_age,
)
from pgmigrator.metrics.logring import CollectorLogHandler, LogEntry, LogRing
from pgmigrator.metrics.persist import (
    StateFile,
    StateFileCorrupt,
    StateFileError,
    StateFileMissing,
    StatePersister,
    list_state_files,
    read_state,
    state_path,
    write_state_file,
)
from pgmigrator.metrics.window import SlidingWindow

__all__ = [
    "COPIED_STATES",
    "STALE_AFTER_S",
    "Collector",
    "CollectorLogHandler",
    "HealthStatus",
    "LogEntry",
    "LogRing",
    "SlidingWindow",
    "StateFile",
    "StateFileCorrupt",
    "StateFileError",
    "StateFileMissing",
    "StatePersister",
    "Subscription",
    "TableEstimate",
    "format_bytes",
    "format_count",
    "format_duration",
    "format_lag",
    "format_rate",
    "list_state_files",
    "progress_bar",
    "read_state",
    "render_status",
    "snapshot_age",
    "state_path",
    "write_state_file",
]
