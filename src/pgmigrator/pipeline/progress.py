"""Copy progress: adapts the copy's events to the metrics collector and renders them.

The collector holds the counters (the single source every surface reads); this module only
forwards events to it and draws its snapshot: a live per-table view (rows, bytes, percent, rate,
ETA) on a terminal, or a periodic summary log line otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector
from pgmigrator.metrics.format import format_bytes, format_duration, progress_bar

log = get_logger("progress")
Key = tuple[str, str]


class Progress:
    def __init__(
        self,
        collector: Collector | None = None,
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float = 0.5,
    ) -> None:
        self.collector = collector or Collector()
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval if self.live else 10.0
        self._last_render = time.monotonic()
        self._lines = 0

    def set_phase(self, phase: str) -> None:
        self.collector.set_phase(phase)
        log.info("phase", phase=phase)

    def table_planned(self, key: Key, est_bytes: int, est_rows: int) -> None:
        self.collector.register_table(*key, rows_total=est_rows, bytes_total=est_bytes)

    def advance(self, key: Key, rows: int, nbytes: int) -> None:
        self.collector.table_advance(*key, rows, nbytes)
        self.maybe_render()

    def table_done(self, key: Key) -> None:
        table = self.collector.table_done(*key)
        log.info(
            "table copied",
            table=f"{key[0]}.{key[1]}",
            rows=table["rows_copied"],
            bytes=table["bytes_copied"],
            seconds=table["elapsed_s"],
        )
        # a live view shows a finished table at once, but is drawn at most every 0.1 s: each
        # drawing reads every table
        self.maybe_render(force=self.live and time.monotonic() - self._last_render >= 0.1)

    def table_errored(self, key: Key, error: str) -> None:
        self.collector.table_errored(*key, error)

    def maybe_render(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_render < self.interval:
            return
        self._last_render = now
        snap = self.collector.snapshot()
        if self.live:
            self._draw(render_lines(snap))
        else:
            done = snap["tables_by_state"].get("copied", 0)
            log.info(
                "copy progress",
                tables_done=done,
                tables=snap["tables_total"],
                copied=format_bytes(snap["total_bytes"]),
                rate=f"{format_bytes(snap['bytes_per_s'])}/s",
                elapsed=format_duration(snap["uptime_s"]),
            )

    def _draw(self, lines: list[str]) -> None:
        out = self.stream
        if self._lines:
            out.write(f"\x1b[{self._lines}F")
        for line in lines:
            out.write("\x1b[2K" + line + "\n")
        out.flush()
        self._lines = len(lines)


def render_lines(snap: dict[str, Any], limit: int = 12) -> list[str]:
    order = {"copying": 0, "pending": 1, "errored": 2}
    tables = sorted(
        snap["tables"], key=lambda t: (order.get(t["state"], 3), t["schema"], t["name"])
    )
    lines = [
        f"phase {snap['phase']}  {format_bytes(snap['total_bytes'])} copied  {format_bytes(snap['bytes_per_s'])}/s"
        f"  elapsed {format_duration(snap['uptime_s'])}"
    ]
    for t in tables[:limit]:
        name = f"{t['schema']}.{t['name']}"[:32]
        rows = f"{t['rows_copied']:,} rows" if t["rows_copied"] else f"~{t['rows_total']:,} rows"
        tail = (
            f"ETA {format_duration(t['eta_s'])}"
            if t.get("eta_s")
            else (f"ERROR {t['error']}" if t["error"] else "")
        )
        lines.append(
            f"  {name:<32} {t['state']:<8} {progress_bar(t['percent'], 20)} {t['percent']:5.1f}%"
            f"  {format_bytes(t['bytes_copied']):>10}  {rows:>16}  {tail}"
        )
    if len(tables) > limit:
        lines.append(f"  ... {len(tables) - limit} more")
    return lines
