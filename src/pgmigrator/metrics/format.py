"""Formatting for metrics: JSON-ready values, human-readable sizes and durations, status report.

Two kinds of helpers live here. The machine side (:func:`iso_utc`, :func:`parse_iso`,
:func:`to_jsonable`) makes snapshots safe to serialise and read back. The human side
(:func:`format_bytes`, :func:`format_duration`, :func:`format_lag`, ...) and
:func:`render_status` turn a snapshot, live or read from the state file, into the plain-text
report printed by ``pgmigrator status``. The renderer is defensive: a snapshot written by an older
or newer version may lack keys, and the report must still come out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

STALE_AFTER_S = 10.0
"""A state file older than this probably belongs to a pipeline that is no longer running."""

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_LEVEL_COLOURS = {"warning": "33", "error": "31", "critical": "31"}


# -- machine formats -----------------------------------------------------------------------------


def iso_utc(ts: float) -> str:
    """Epoch seconds to ``2026-02-27T14:23:01.234Z``."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_iso(text: object) -> float | None:
    """The inverse of :func:`iso_utc` (any ISO 8601 form; naive means UTC); None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only; unknown objects become their ``str()``.

    ``Lsn`` (an int subclass) prints as ``X/Y`` rather than a bare number, and non-finite floats
    become None, since JSON has no NaN.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if type(value) is int else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)


# -- human formats -------------------------------------------------------------------------------


def format_bytes(n: float | None) -> str:
    """Binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``; None is ``-``."""
    if n is None:
        return "-"
    if n < 0:
        return "-" + format_bytes(-n)
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def format_duration(seconds: float | None) -> str:
    """``5s``, ``4m05s``, ``1h02m05s``, ``2d03h04m``; None is ``-``. Fractions are dropped."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_count(n: float | None) -> str:
    """``22,670,800``; None is ``-``."""
    return "-" if n is None else f"{round(n):,}"


def format_rate(per_s: float | None, unit: str = "rows") -> str:
    """``4,521 rows/s``; with ``unit="bytes"``, ``1.0 MiB/s``."""
    if per_s is None:
        return "-"
    if unit == "bytes":
        return f"{format_bytes(per_s)}/s"
    if 0 < per_s < 10:
        return f"{per_s:.1f} {unit}/s"
    return f"{format_count(per_s)} {unit}/s"


def format_lag(lag_bytes: int | None, lag_s: float | None = None) -> str:
    """How far the destination is behind the source.

    ``caught up`` at zero bytes, ``1.2 MiB behind`` without a time estimate,
    ``1.2 MiB, 3s behind`` with one, and ``unknown`` before the source reported its position.
    """
    if lag_bytes is None:
        return "unknown"
    if lag_bytes <= 0:
        return "caught up"
    if lag_s is None:
        return f"{format_bytes(lag_bytes)} behind"
    return f"{format_bytes(lag_bytes)}, {format_duration(lag_s)} behind"


def progress_bar(percent: float | None, width: int = 20) -> str:
    """``[#########-----------]``, in plain ASCII so any terminal and log file shows it."""
    pct = 0.0 if percent is None or not math.isfinite(percent) else min(max(percent, 0.0), 100.0)
    filled = int(width * pct / 100 + 1e-9)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


# -- the status report ---------------------------------------------------------------------------


def snapshot_age(snapshot: Mapping[str, Any], now: float) -> float | None:
    """Seconds between the snapshot's ``timestamp`` and ``now`` (epoch seconds)."""
    taken = parse_iso(snapshot.get("timestamp"))
    return None if taken is None else now - taken


def render_status(
    snapshot: Mapping[str, Any],
    now: float | datetime,
    *,
    color: bool = False,
    max_tables: int = 30,
    log_lines: int = 8,
) -> str:
    """The multi-line report of ``pgmigrator status``; ``now``: epoch seconds or aware datetime.

    Tables that are still moving come first; ``max_tables`` caps the list (the rest are counted).
    ``color`` adds ANSI colours to warnings and error log lines.
    """
    if isinstance(now, datetime):
        now = now.timestamp()
    sections = [
        _header(snapshot, now, color),
        _tables_section(snapshot, max_tables),
        _stream_section(snapshot),
        _sinks_section(snapshot),
        _errors_section(snapshot, log_lines, color),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def _header(snap: Mapping[str, Any], now: float, color: bool) -> str:
    since, taken = parse_iso(snap.get("phase_since")), parse_iso(snap.get("timestamp"))
    during = "" if since is None or taken is None else f" for {format_duration(taken - since)}"
    lines = [
        f"pipeline  {snap.get('pipeline', '?')}",
        f"phase     {snap.get('phase', '?')}{during}  (state: {snap.get('state', '?')})",
        f"uptime    {format_duration(_num(snap.get('uptime_s')))}",
    ]
    age = snapshot_age(snap, now)
    if age is None:
        lines.append(_paint("warning: the state has no readable timestamp", "33", color))
    elif age > STALE_AFTER_S:
        warning = f"warning: state is {format_duration(age)} old: the pipeline may have stopped"
        lines.append(_paint(warning, "33", color))
    health = snap.get("health")
    if isinstance(health, Mapping) and health:
        parts = []
        for name, item in health.items():
            status = item.get("status", "?") if isinstance(item, Mapping) else "?"
            detail = item.get("detail") if isinstance(item, Mapping) else None
            parts.append(f"{name}={status}" + (f" ({detail})" if detail else ""))
        lines.append("health    " + ", ".join(parts))
    info = snap.get("info")
    if isinstance(info, Mapping):
        lines.extend(f"{key:<9} {value}" for key, value in info.items() if key not in FOR_METRICS)
    return "\n".join(lines)


#: Info keys kept for /metrics (alerts); their text is already in another key (``verification``).
FOR_METRICS = frozenset({"verification_differing", "verification_finished_at"})


def _tables_section(snap: Mapping[str, Any], max_tables: int) -> str:
    tables = [t for t in snap.get("tables") or () if isinstance(t, Mapping)]
    if not tables:
        return ""
    copied = snap.get("tables_copied", 0)
    lines = [f"tables    {copied}/{len(tables)} copied"]
    order = {"copying": 0, "errored": 1, "pending": 2}
    shown = sorted(tables, key=lambda t: order.get(str(t.get("state")), 3))[:max_tables]
    width = max(len(f"{t.get('schema')}.{t.get('name')}") for t in shown)
    for t in shown:
        lines.append("  " + _table_line(t, width))
    if len(tables) > len(shown):
        lines.append(f"  ... and {len(tables) - len(shown)} more")
    return "\n".join(lines)


def _table_line(t: Mapping[str, Any], width: int) -> str:
    name = f"{t.get('schema')}.{t.get('name')}"
    pct = _num(t.get("percent")) or 0.0
    rows = f"{format_count(_num(t.get('rows_copied')))}/{format_count(_num(t.get('rows_total')))}"
    line = f"{name:<{width}}  {t.get('state', '?'):<9} {progress_bar(pct)} {pct:5.1f}%  {rows} rows"
    rate = _num(t.get("rows_per_s"))
    if t.get("state") == "copying" and rate:
        line += f"  {format_rate(rate)}"
        eta = _num(t.get("eta_s"))
        if eta is not None:
            line += f"  eta {format_duration(eta)}"
    applied = _num(t.get("rows_applied"))
    if applied:
        line += f"  +{format_count(applied)} streamed"
    if t.get("error"):
        line += f"  error: {t['error']}"
    return line


def _stream_section(snap: Mapping[str, Any]) -> str:
    lag_s = _num(snap.get("lag_s"))
    lag_bytes = _num(snap.get("lag_bytes"))
    lag = snap.get("lag_formatted") or format_lag(
        None if lag_bytes is None else int(lag_bytes), lag_s
    )
    return "\n".join(
        [
            f"lsn       applied {snap.get('applied_lsn') or '-'}"
            f"  confirmed {snap.get('confirmed_lsn') or '-'}"
            f"  latest {snap.get('latest_lsn') or '-'}",
            f"lag       {lag}",
            f"rate      {format_rate(_num(snap.get('rows_per_s')))}"
            f", {format_rate(_num(snap.get('bytes_per_s')), 'bytes')} (last minute)",
            f"total     {format_count(_num(snap.get('total_rows')))} rows"
            f", {format_bytes(_num(snap.get('total_bytes')))}",
        ]
    )


def _sinks_section(snap: Mapping[str, Any]) -> str:
    sinks = snap.get("sinks")
    if not isinstance(sinks, Mapping) or not sinks:
        return ""
    lines = ["sinks"]
    for name, c in sinks.items():
        if not isinstance(c, Mapping):
            continue
        counts = "  ".join(
            f"{key} {format_count(_num(c.get(key)))}"
            for key in ("delivered", "failed", "retried", "dropped", "queue_depth")
        )
        lines.append(f"  {name}: {counts}")
    return "\n".join(lines)


def _errors_section(snap: Mapping[str, Any], log_lines: int, color: bool) -> str:
    lines = [f"errors    {snap.get('error_count', 0)}"]
    last = snap.get("last_error")
    if isinstance(last, Mapping):
        where = f"[{last['component']}] " if last.get("component") else ""
        lines.append(f"  last at {last.get('time', '?')}: {where}{last.get('message', '')}")
    logs = [e for e in snap.get("logs") or () if isinstance(e, Mapping)]
    if logs and log_lines > 0:
        lines.append("recent log")
        for e in logs[-log_lines:]:
            level = str(e.get("level", "?"))
            fields = e.get("fields") or {}
            extra = " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""
            text = f"{e.get('time', '?')} {level:<7} {e.get('component', '')}: {e.get('message')}"
            lines.append(
                "  " + _paint(f"{text} {extra}".rstrip(), _LEVEL_COLOURS.get(level), color)
            )
    return "\n".join(lines)


def _num(value: object) -> float | None:
    """A number from a snapshot value, or None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
