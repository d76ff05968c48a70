"""Structured key-value logging on top of the standard library.

Each component takes its own logger with :func:`get_logger` and logs a short message plus fields::

    log = get_logger("copy")
    log.info("table copied", table="public.orders", rows=1200)

Output is ``text`` (``2026-01-01T12:00:00Z info copy: table copied table=public.orders rows=1200``)
or ``json`` (one object a line). Library code never prints.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_ROOT = "pgmigrator"


class KvLogger:
    """A thin wrapper that passes keyword arguments as structured fields."""

    __slots__ = ("_logger", "component")

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"{_ROOT}.{component}")

    def _log(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, msg, extra={"fields": fields, "component": self.component})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(component: str) -> KvLogger:
    return KvLogger(component)


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        component = getattr(record, "component", record.name.removeprefix(_ROOT + "."))
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            _iso(record.created),
            record.levelname.lower(),
            f"{component}:",
            record.getMessage(),
        ]
        parts.extend(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "component": getattr(record, "component", record.name),
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the ``pgmigrator`` logger tree once for a command-line run (writes to stderr)."""
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_pgmigrator_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._pgmigrator_console = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def set_level(level: str) -> None:
    logging.getLogger(_ROOT).setLevel(level.upper())
