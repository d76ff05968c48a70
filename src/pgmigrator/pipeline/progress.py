"""Copy progress: one place for the counters, shown live on a terminal or as periodic log lines.

The counters live in the metrics collector (the single source every surface reads); this module
adapts the copy's events to it and renders a per-table view (rows, bytes, percent, rate, ETA).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from pgmigrator.log import get_logger
from pgmigrator.metrics.format import format_bytes, format_duration

log = get_logger("progress")


class _Table:
    __slots__ = ("bytes", "chunks", "chunks_done", "error", "est_bytes", "est_rows", "finished", "rows", "started", "state")

    def __init__(self, est_bytes: int, est_rows: int, chunks: int) -> None:
        self.est_bytes, self.est_rows, self.chunks = est_bytes, est_rows, chunks
        self.bytes = self.rows = self.chunks_done = 0
        self.state = "pending"
        self.started = time.monotonic()
        self.finished: float | None = None
        self.error: str | None = None


class Progress:
    """Receives copy events (from the parent process only) and forwards them to the collector."""

    def __init__(self, collector: object | None = None, stream: TextIO | None = None, live: bool | None = None,
                 interval: float = 0.5) -> None:
        self.collector = collector
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval if self.live else 10.0
        self.tables: dict[str, _Table] = {}
        self.phase = "idle"
        self._lock = threading.Lock()
        self._last_render = 0.0
        self._lines = 0
        self._t0 = time.monotonic()

    def _c(self, method: str, *args: object, **kw: object) -> None:
        if self.collector is not None:
            getattr(self.collector, method)(*args, **kw)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._c("set_phase", phase)
        log.info("phase", phase=phase)

    def table_planned(self, name: str, est_bytes: int, est_rows: int, chunks: int = 1) -> None:
        with self._lock:
            self.tables[name] = _Table(est_bytes, est_rows, chunks)
        self._c("table_started", name, rows_total=est_rows, bytes_total=est_bytes)

    def add_bytes(self, name: str, nbytes: int) -> None:
        with self._lock:
            table = self.tables[name]
            table.bytes += nbytes
            table.state = "copying"
        self._c("table_progress", name, bytes_delta=nbytes)
        self.maybe_render()

    def chunk_done(self, name: str, rows: int, nbytes: int) -> None:
        with self._lock:
            table = self.tables[name]
            unreported = nbytes - table.bytes if table.chunks == 1 else 0
            table.rows += rows
            table.chunks_done += 1
            if table.chunks == 1:
                table.bytes = nbytes
        self._c("table_progress", name, rows_delta=rows, bytes_delta=max(0, unreported))
        self._c("add_rows", rows, max(0, unreported))
        self.maybe_render()

    def table_done(self, name: str) -> None:
        with self._lock:
            table = self.tables[name]
            table.state, table.finished = "copied", time.monotonic()
        self._c("table_done", name)
        log.info("table copied", table=name, rows=table.rows, bytes=table.bytes,
                 seconds=round(table.finished - table.started, 2))
        self.maybe_render(force=True)

    def table_errored(self, name: str, error: str) -> None:
        with self._lock:
            table = self.tables[name]
            table.state, table.error = "errored", error
        self._c("table_errored", name, error)

    def maybe_render(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_render < self.interval:
            return
        self._last_render = now
        if self.live:
            self._render_live()
        elif not force:
            self._log_summary()

    def _log_summary(self) -> None:
        done = sum(t.state == "copied" for t in self.tables.values())
        total_bytes = sum(t.bytes for t in self.tables.values())
        log.info("copy progress", tables_done=done, tables=len(self.tables), copied=format_bytes(total_bytes),
                 elapsed=format_duration(time.monotonic() - self._t0))

    def _render_live(self) -> None:
        lines = self.render_lines()
        out = self.stream
        if self._lines:
            out.write(f"\x1b[{self._lines}F")
        for line in lines:
            out.write("\x1b[2K" + line + "\n")
        out.flush()
        self._lines = len(lines)

    def render_lines(self, limit: int = 12) -> list[str]:
        now = time.monotonic()
        with self._lock:
            items = sorted(self.tables.items(), key=lambda kv: (kv[1].state != "copying", kv[1].state == "copied", kv[0]))
            lines = [f"phase {self.phase}  elapsed {format_duration(now - self._t0)}"]
            for name, t in items[:limit]:
                lines.append(_table_line(name, t, now))
            if len(items) > limit:
                rest = items[limit:]
                lines.append(f"  ... {len(rest)} more ({sum(t.state == 'copied' for _, t in rest)} copied)")
        return lines


def _table_line(name: str, t: _Table, now: float) -> str:
    elapsed = (t.finished or now) - t.started
    pct = 100.0 if t.state == "copied" else min(99.0, 100.0 * t.bytes / t.est_bytes) if t.est_bytes else 0.0
    rate = t.bytes / elapsed if elapsed > 0 else 0.0
    eta = (t.est_bytes - t.bytes) / rate if rate > 0 and t.state == "copying" and t.est_bytes > t.bytes else 0.0
    bar = "#" * int(pct / 5) + "." * (20 - int(pct / 5))
    rows = f"{t.rows:,} rows" if t.rows else f"~{t.est_rows:,} rows"
    tail = f"ETA {format_duration(eta)}" if eta else ("" if t.state != "errored" else f"ERROR {t.error}")
    return (f"  {name[:32]:<32} {t.state:<8} [{bar}] {pct:5.1f}%  {format_bytes(t.bytes):>10}  {rows:>16}  "
            f"{format_bytes(rate)}/s  {tail}")
