"""The hand-written OpenAPI 3.1 document served at ``/api/v1/openapi.json``.

Written by hand rather than generated from docstrings so that it can say what matters to a client:
which endpoints need the bearer token, the error body, the probe semantics, and the WebSocket feed
(OpenAPI has no WebSocket operation; it is described as a GET with the ``101`` upgrade response).
The unit tests check that every route of the app appears here.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "1"
PREFIX = "/api/v1"

_JSON = "application/json"
_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


def _read(summary: str, schema: dict[str, Any], protect: bool, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": ["read"],
        "responses": {"200": _json("OK", schema)},
        **extra,
    }
    if protect:
        op["security"] = _BEARER
        op["responses"]["401"] = _error("missing or wrong bearer token")
    return {"get": op}


def _control(action: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": action,
            "tags": ["control"],
            "security": _BEARER,
            "responses": {
                "200": _json("the pipeline accepted the request", _ref("ControlResult")),
                "401": _error("missing or wrong bearer token"),
                "409": _error("refused in the current state, or not supported by this command"),
            },
        }
    }


def _probe(summary: str, ok: str, failing: str | None) -> dict[str, Any]:
    responses = {"200": _json(ok, _ref("Probe"))}
    if failing is not None:
        responses["503"] = _json(failing, _ref("Probe"))
    return {"get": {"summary": summary, "tags": ["probes"], "responses": responses}}


def _metrics(protect: bool) -> dict[str, Any]:
    op = _read("Prometheus metrics", {"type": "string"}, protect)
    op["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition format (OpenMetrics when negotiated)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return op


def _plain(summary: str, tag: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": [tag], "responses": {"200": response}}}


def _ws(protect: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": "WebSocket: a status snapshot every 500 ms (JSON text frames)",
        "description": "Upgrade with a WebSocket handshake. When read endpoints are protected, "
        "pass the token as ?token=... (browsers cannot set headers on WebSockets) or as a "
        "bearer Authorization header; a missing or wrong token closes the handshake (403).",
        "tags": ["read"],
        "parameters": [{"name": "token", "in": "query", "schema": {"type": "string"}}],
        "responses": {"101": {"description": "switching protocols; then Snapshot messages"}},
    }
    if protect:
        op["security"] = _BEARER
    return {"get": op}


_LOG_PARAMS = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 5000},
        "description": "newest N entries (default 200)",
    },
    {
        "name": "level",
        "in": "query",
        "schema": {"type": "string", "enum": ["debug", "info", "warning", "error"]},
        "description": "minimum level",
    },
]


def _paths(protect: bool) -> dict[str, Any]:
    html = {"description": "the dashboard page", "content": {"text/html": {}}}
    return {
        "/": _plain("Web dashboard (HTML)", "ui", html),
        f"{PREFIX}/status": _read("Current snapshot of the pipeline", _ref("Snapshot"), protect),
        f"{PREFIX}/tables": _read("Per-table progress", _ref("Tables"), protect),
        f"{PREFIX}/logs": _read(
            "Recent log lines, oldest first", _ref("Logs"), protect, parameters=_LOG_PARAMS
        ),
        f"{PREFIX}/config": _read("The settings, secrets masked", {"type": "object"}, protect),
        f"{PREFIX}/openapi.json": _plain(
            "This document", "meta", _json("OpenAPI 3.1", {"type": "object"})
        ),
        f"{PREFIX}/ws": _ws(protect),
        f"{PREFIX}/pause": _control("pause", "Pause the pipeline (keeps its position)"),
        f"{PREFIX}/resume": _control("resume", "Resume a paused pipeline"),
        f"{PREFIX}/switchover": _control(
            "switchover", "Start the switchover: wait for the destination to catch up, then stop"
        ),
        f"{PREFIX}/verify": _control(
            "verify",
            "Start a live verification (both sides lined up through the follower); its outcome "
            "shows as info.verification in the status",
        ),
        "/metrics": _metrics(protect),
        "/healthz": _probe(
            "Per-component health", "every component reports ok", "a component is degraded or down"
        ),
        "/livez": _probe("Liveness: the process serves requests", "alive", None),
        "/readyz": _probe(
            "Readiness: streaming or done, and the lag under the threshold",
            "ready",
            "not ready; the body says why",
        ),
        "/startupz": _probe("Startup: the pipeline left idle/connecting", "started", "starting"),
    }


_NUM_OR_NULL = {"type": ["number", "null"]}
_TABLE = {
    "type": "object",
    "properties": {
        "schema": {"type": "string"},
        "name": {"type": "string"},
        "state": {
            "type": "string",
            "examples": ["pending", "copying", "copied", "streaming", "errored"],
        },
        **{k: {"type": "integer"} for k in ("rows_total", "rows_copied", "rows_applied")},
        **{k: {"type": "integer"} for k in ("bytes_total", "bytes_copied")},
        "percent": {"type": "number"},
        **{k: _NUM_OR_NULL for k in ("rows_per_s", "eta_s", "elapsed_s")},
        "error": {"type": ["string", "null"]},
    },
}
_LOG_ENTRY = {
    "type": "object",
    "properties": {
        "time": {"type": "string", "format": "date-time"},
        **{k: {"type": "string"} for k in ("level", "component", "message")},
        "fields": {"type": "object"},
    },
}
_SNAPSHOT = {
    "type": "object",
    "description": "The metrics collector's snapshot; every surface shows these numbers.",
    "properties": {
        "version": {"type": "integer"},
        "timestamp": {"type": "string", "format": "date-time"},
        **{k: {"type": "string"} for k in ("pipeline", "phase", "state", "lag_formatted")},
        "uptime_s": {"type": "number"},
        **{k: {"type": ["string", "null"]} for k in ("applied_lsn", "confirmed_lsn", "latest_lsn")},
        "lag_bytes": {"type": ["integer", "null"]},
        "lag_s": _NUM_OR_NULL,
        **{k: {"type": "integer"} for k in ("tables_total", "tables_copied", "error_count")},
        "tables_by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
        "tables": {"type": "array", "items": _ref("Table")},
        **{k: {"type": "number"} for k in ("rows_per_s", "bytes_per_s")},
        **{k: {"type": "integer"} for k in ("total_rows", "total_bytes")},
        "last_error": {"type": ["object", "null"]},
        **{k: {"type": "object"} for k in ("sinks", "health", "info")},
        "logs": {"type": "array", "items": _ref("LogEntry")},
    },
}
_SCHEMAS: dict[str, Any] = {
    "Snapshot": _SNAPSHOT,
    "Table": _TABLE,
    "Tables": {
        "type": "object",
        "properties": {
            "tables_total": {"type": "integer"},
            "tables_copied": {"type": "integer"},
            "tables_by_state": {"type": "object"},
            "tables": {"type": "array", "items": _ref("Table")},
        },
    },
    "LogEntry": _LOG_ENTRY,
    "Logs": {
        "type": "object",
        "properties": {"logs": {"type": "array", "items": _ref("LogEntry")}},
    },
    "ControlResult": {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "action": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "Probe": {
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "reason": {"type": "string"},
            "components": {"type": "object"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "examples": ["unauthorized", "not_found", "conflict"]},
            "message": {"type": "string"},
        },
    },
}


def openapi_document(*, protect_reads: bool = False, version: str = "0") -> dict[str, Any]:
    """The OpenAPI document; ``protect_reads`` marks the read endpoints as needing the token."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pgmigrator API",
            "version": version,
            "description": "Status, metrics, probes and control of a running pgmigrator pipeline. "
            "Control endpoints need 'Authorization: Bearer <token>'. Errors are JSON: "
            '{"error": "<code>", "message": "<text>"}.',
        },
        "paths": _paths(protect_reads),
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
