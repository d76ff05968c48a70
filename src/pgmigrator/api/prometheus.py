"""Prometheus metrics computed from the collector's snapshot at scrape time.

:class:`SnapshotMetrics` is a custom prometheus-client collector: each scrape takes one
:meth:`~pgmigrator.metrics.Collector.snapshot` and turns it into metric families, so ``/metrics``
shows exactly the numbers the REST API, the dashboard and the TUI show. It lives in its own
:class:`~prometheus_client.CollectorRegistry` (:func:`make_registry`), never the global one, so
several pipelines (or tests) in one process do not collide.

Families (all prefixed ``pgmigrator_``; counters get the ``_total`` suffix on exposition):

=================================  =======  ============================================
``phase{phase}``                   gauge    1 for the current phase, 0 for the others
``pipeline_info{pipeline,state}``  info     pipeline name and run state
``uptime_seconds``                 gauge    seconds since the collector was created
``lag_bytes`` / ``lag_seconds``    gauge    how far the destination is behind (when known)
``applied_lsn`` / ``confirmed_lsn``  gauge  positions as byte offsets (when known)
``rows`` / ``bytes``               counter  everything written (copied + applied)
``rows_copied`` / ``bytes_copied`` counter  written by the initial COPY (sum over tables)
``rows_applied`` / ``bytes_applied``  counter  written otherwise (streamed changes)
``rows_per_second`` / ``bytes_per_second``  gauge  throughput over the last minute
``tables{state}``                  gauge    number of tables in each state
``table_*{schema,table}``          gauge    per-table rows/bytes copied and total, progress ratio,
                                            state; ``table_rows_applied`` counter
``sink_*{sink}``                   counter  delivered, failed, retried, dropped;
                                            ``sink_queue_depth`` gauge
``errors``                         counter  errors counted by the collector
``component_healthy{component}``   gauge    1 when the component reports ``ok``
``slot_retained_wal_bytes``        gauge    WAL the slot holds back on the source (when known)
``conflicts``                      counter  same row changed on both sides (bidirectional only)
``verify_tables_differing``        gauge    tables the last live verification found different
``verify_finished_timestamp_seconds``  gauge  when it finished (both only once one finished)
=================================  =======  ============================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector as PromCollector

from pgmigrator.lsn import Lsn
from pgmigrator.metrics import Collector

PREFIX = "pgmigrator_"
KNOWN_PHASES = (
    "idle",
    "connecting",
    "schema",
    "copy",
    "post-data",
    "sequences",
    "large objects",
    "streaming",
    "switchover",
    "switchover-complete",
    "done",
    "failed",
)
_TABLE_LABELS = ("schema", "table")
_SINK_COUNTERS = ("delivered", "failed", "retried", "dropped", "dead_lettered")


class SnapshotMetrics(PromCollector):
    """A prometheus-client collector reading one collector snapshot per scrape."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration: the names depend on the snapshot

    def collect(self) -> Iterable[Metric]:
        return list(snapshot_families(self.collector.snapshot()))


def make_registry(collector: Collector) -> CollectorRegistry:
    """A fresh registry holding only :class:`SnapshotMetrics` for ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotMetrics(collector))
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its content type, negotiated from an ``Accept`` header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def snapshot_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    """Every metric family for one snapshot (see the module docstring)."""
    yield from _pipeline_families(snap)
    yield from _volume_families(snap)
    yield from _table_families(snap.get("tables") or [])
    yield from _sink_families(snap.get("sinks") or {})
    yield from _health_families(snap)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    family = GaugeMetricFamily(PREFIX + name, doc)
    if value is not None:
        family.add_metric([], value)
    yield family


def _pipeline_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    current = str(snap.get("phase", "idle"))
    phase = GaugeMetricFamily(
        PREFIX + "phase", "Current pipeline phase (1 for the current one)", labels=["phase"]
    )
    for name in (*KNOWN_PHASES, *(() if current in KNOWN_PHASES else (current,))):
        phase.add_metric([name], 1.0 if name == current else 0.0)
    yield phase
    info = InfoMetricFamily(PREFIX + "pipeline", "Pipeline name and run state")
    info.add_metric(
        [], {"pipeline": str(snap.get("pipeline", "")), "state": str(snap.get("state", ""))}
    )
    yield info
    yield from _gauge(
        "uptime_seconds", "Seconds since the pipeline started", _num(snap.get("uptime_s"))
    )
    yield from _gauge(
        "lag_bytes",
        "Bytes of WAL the destination is behind the source",
        _num(snap.get("lag_bytes")),
    )
    yield from _gauge(
        "lag_seconds", "Seconds the destination is behind the source", _num(snap.get("lag_s"))
    )
    for key in ("applied", "confirmed"):
        yield from _gauge(
            f"{key}_lsn",
            f"The {key} LSN as a byte position",
            _lsn(snap.get(f"{key}_lsn")),
        )
    info_map = snap.get("info")
    retained = info_map.get("slot_retained_bytes") if isinstance(info_map, Mapping) else None
    yield from _gauge(
        "slot_retained_wal_bytes",
        "WAL bytes the replication slot retains on the source",
        _num(retained),
    )
    if isinstance(info_map, Mapping):
        yield from _gauge(
            "verify_tables_differing",
            "Tables the last live verification found different (or -1: it failed)",
            _num(info_map.get("verification_differing")),
        )
        yield from _gauge(
            "verify_finished_timestamp_seconds",
            "When the last live verification finished (Unix time)",
            _num(info_map.get("verification_finished_at")),
        )
    conflicts = _num(info_map.get("conflicts")) if isinstance(info_map, Mapping) else None
    if conflicts is not None:  # bidirectional replication only
        family = CounterMetricFamily(PREFIX + "conflicts", "Rows changed on both sides (bidi)")
        family.add_metric([], conflicts)
        yield family


def _volume_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    tables = [t for t in snap.get("tables") or [] if isinstance(t, Mapping)]
    rows_all = _num(snap.get("total_rows")) or 0.0
    bytes_all = _num(snap.get("total_bytes")) or 0.0
    rows_copied = sum(_num(t.get("rows_copied")) or 0.0 for t in tables)
    bytes_copied = sum(_num(t.get("bytes_copied")) or 0.0 for t in tables)
    counters = (
        ("rows", "Rows written to the destination (copied and applied)", rows_all),
        ("bytes", "Bytes written to the destination (copied and applied)", bytes_all),
        ("rows_copied", "Rows copied by the initial COPY", rows_copied),
        ("bytes_copied", "Bytes copied by the initial COPY", bytes_copied),
        (
            "rows_applied",
            "Rows written other than by COPY (changes)",
            max(0.0, rows_all - rows_copied),
        ),
        (
            "bytes_applied",
            "Bytes written other than by COPY (changes)",
            max(0.0, bytes_all - bytes_copied),
        ),
        ("errors", "Errors counted since the start", _num(snap.get("error_count")) or 0.0),
    )
    for name, doc, value in counters:
        yield CounterMetricFamily(PREFIX + name, doc, value=value)
    yield from _gauge(
        "rows_per_second", "Rows per second (last minute)", _num(snap.get("rows_per_s"))
    )
    yield from _gauge(
        "bytes_per_second", "Bytes per second (last minute)", _num(snap.get("bytes_per_s"))
    )
    by_state = GaugeMetricFamily(PREFIX + "tables", "Tables in each state", labels=["state"])
    for state, count in (snap.get("tables_by_state") or {}).items():
        by_state.add_metric([str(state)], float(count))
    yield by_state


def _table_families(tables: Iterable[Any]) -> Iterator[Metric]:
    gauges = {
        "rows_copied": GaugeMetricFamily(
            PREFIX + "table_rows_copied", "Rows copied", labels=_TABLE_LABELS
        ),
        "rows_total": GaugeMetricFamily(
            PREFIX + "table_rows_estimated", "Estimated rows", labels=_TABLE_LABELS
        ),
        "bytes_copied": GaugeMetricFamily(
            PREFIX + "table_bytes_copied", "Bytes copied", labels=_TABLE_LABELS
        ),
        "bytes_total": GaugeMetricFamily(
            PREFIX + "table_bytes_estimated", "Estimated size in bytes", labels=_TABLE_LABELS
        ),
    }
    progress = GaugeMetricFamily(
        PREFIX + "table_progress_ratio", "Copy progress from 0 to 1", labels=_TABLE_LABELS
    )
    state = GaugeMetricFamily(
        PREFIX + "table_state", "1 for the table's current state", labels=[*_TABLE_LABELS, "state"]
    )
    applied = CounterMetricFamily(
        PREFIX + "table_rows_applied", "Changed rows applied to the table", labels=_TABLE_LABELS
    )
    for t in tables:
        if not isinstance(t, Mapping):
            continue
        labels = [str(t.get("schema", "")), str(t.get("name", ""))]
        for key, family in gauges.items():
            family.add_metric(labels, _num(t.get(key)) or 0.0)
        progress.add_metric(labels, (_num(t.get("percent")) or 0.0) / 100.0)
        state.add_metric([*labels, str(t.get("state", ""))], 1.0)
        applied.add_metric(labels, _num(t.get("rows_applied")) or 0.0)
    yield from gauges.values()
    yield from (progress, state, applied)


def _sink_families(sinks: Mapping[str, Any]) -> Iterator[Metric]:
    counters = {
        key: CounterMetricFamily(
            PREFIX + f"sink_{key}", f"Events {key} by the sink", labels=["sink"]
        )
        for key in _SINK_COUNTERS
    }
    depth = GaugeMetricFamily(
        PREFIX + "sink_queue_depth", "Events waiting in the sink's queue", labels=["sink"]
    )
    for name, values in sinks.items():
        if not isinstance(values, Mapping):
            continue
        for key, family in counters.items():
            family.add_metric([str(name)], _num(values.get(key)) or 0.0)
        depth.add_metric([str(name)], _num(values.get("queue_depth")) or 0.0)
    yield from counters.values()
    yield depth


def _health_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        PREFIX + "component_healthy", "1 when the component reports ok", labels=["component"]
    )
    health = snap.get("health")
    for name, item in health.items() if isinstance(health, Mapping) else ():
        ok = isinstance(item, Mapping) and item.get("status") == "ok"
        family.add_metric([str(name)], 1.0 if ok else 0.0)
    yield family


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _lsn(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return float(Lsn.parse(value))
    except (ValueError, TypeError):
        return None
