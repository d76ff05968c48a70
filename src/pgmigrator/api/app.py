"""The HTTP API: status, logs, config, a WebSocket feed, control, Prometheus metrics and probes.

:func:`create_app` builds a Starlette app over one :class:`~pgmigrator.metrics.Collector`. Every
read endpoint serves (a part of) the collector's snapshot, so the API, the dashboard, the TUI and
``/metrics`` always agree. Control requests (pause, resume, switchover, verify) go to a :class:`Control`
implemented by the pipeline and need ``Authorization: Bearer <token>``; with ``protect_reads``
the read endpoints need it too (probes, the dashboard page and the OpenAPI document never do).
Every error is a JSON body ``{"error": "<code>", "message": "<text>"}``.

The app holds no pipeline state of its own: it may run in the pipeline's event loop or in a
server thread (:mod:`pgmigrator.api.server`); in the latter case the control methods run in the
server thread's loop and must be thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from pgmigrator import __version__
from pgmigrator.api.openapi import openapi_document
from pgmigrator.api.prometheus import make_registry, render
from pgmigrator.config import Settings
from pgmigrator.errors import PgMigratorError
from pgmigrator.log import get_logger
from pgmigrator.metrics import Collector

log = get_logger("api")

STATIC_DIR = Path(__file__).parent / "static"
CONTROL_ACTIONS = ("pause", "resume", "switchover", "verify")
READY_PHASES = frozenset({"streaming", "done"})
STARTING_PHASES = frozenset({"idle", "connecting"})
DEFAULT_READY_MAX_LAG_S = 10.0
DEFAULT_READY_MAX_LAG_BYTES = 64 * 1024 * 1024
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey")
_DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
    "img-src 'self' data:; frame-ancestors 'none'",
}
Endpoint = Callable[[Request], Awaitable[Response]]


class Control(Protocol):
    """What the API asks of the pipeline; each method returns a short message for the operator.

    Raising :class:`~pgmigrator.errors.PgMigratorError` refuses the request (HTTP 409 with its
    message), e.g. "already paused" or "switchover needs the streaming phase".
    """

    async def pause(self) -> str: ...

    async def resume(self) -> str: ...

    async def switchover(self) -> str: ...

    async def verify(self) -> str: ...


class NoControl:
    """The :class:`Control` of commands that cannot be controlled: every request gets a 409."""

    async def pause(self) -> str:
        raise PgMigratorError("not supported by this command")

    async def resume(self) -> str:
        raise PgMigratorError("not supported by this command")

    async def switchover(self) -> str:
        raise PgMigratorError("not supported by this command")

    async def verify(self) -> str:
        raise PgMigratorError("not supported by this command")


class JsonResponse(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JsonResponse:
    """The JSON error body every failure of the API uses."""
    return JsonResponse({"error": code, "message": message}, status_code=status, headers=headers)


def readiness(snap: Mapping[str, Any], max_lag_s: float, max_lag_bytes: int) -> tuple[bool, str]:
    """Whether the pipeline is ready (streaming or done, lag under the thresholds), and why."""
    phase = str(snap.get("phase"))
    if phase not in READY_PHASES:
        return False, f"phase is {phase}, not {' or '.join(sorted(READY_PHASES))}"
    if phase == "done":
        return True, "done"
    slot = (snap.get("health") or {}).get("slot") or {}
    if slot.get("status") == "down":  # over the WAL budget's maximum (pipeline/walbudget.py)
        return False, str(slot.get("detail") or "the replication slot is down")
    lag_s, lag_bytes = snap.get("lag_s"), snap.get("lag_bytes")
    if lag_s is None and lag_bytes is None:
        return False, "lag not known yet"
    if lag_s is not None and lag_s > max_lag_s:
        return False, f"lag {lag_s:.1f}s is over {max_lag_s:g}s"
    if lag_bytes is not None and lag_bytes > max_lag_bytes:
        return False, f"lag {lag_bytes} bytes is over {max_lag_bytes} bytes"
    return True, f"streaming, lag {snap.get('lag_formatted', '?')}"


def scrub_secrets(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys replaced by ``***``."""
    if isinstance(value, Mapping):
        return {
            k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) and v else scrub_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    return value


class _Api:
    """The endpoints, sharing the collector, control and authentication settings."""

    def __init__(
        self,
        collector: Collector,
        settings: Settings | None,
        control: Control,
        token: str | None,
        protect_reads: bool,
    ) -> None:
        self.collector = collector
        self.settings = settings
        self.control = control
        self.token = token
        self.protect_reads = protect_reads
        self.registry = make_registry(collector)
        self.ready_max_lag_s = DEFAULT_READY_MAX_LAG_S
        self.ready_max_lag_bytes = DEFAULT_READY_MAX_LAG_BYTES
        self.ws_interval = collector.publish_interval

    # -- authentication ----------------------------------------------------------------------------

    def authorized(self, conn: HTTPConnection, *, allow_query: bool = False) -> bool:
        if self.token is None:
            return True
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else ""
        if not given and allow_query:
            given = conn.query_params.get("token", "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def unauthorized() -> JsonResponse:
        return error_response(
            401,
            "unauthorized",
            "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
            headers={"WWW-Authenticate": 'Bearer realm="pgmigrator"'},
        )

    def reader(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            if self.protect_reads and not self.authorized(request):
                return self.unauthorized()
            return await endpoint(request)

        return guarded

    # -- reads -------------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        return JsonResponse(self.collector.snapshot())

    async def tables(self, request: Request) -> Response:
        snap = self.collector.snapshot()
        keys = ("tables_total", "tables_copied", "tables_by_state", "tables")
        return JsonResponse({k: snap[k] for k in keys})

    async def logs(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "200"))
        except ValueError:
            return error_response(400, "bad_request", "limit must be an integer")
        level = request.query_params.get("level", "debug").lower()
        if level not in _LEVELS:
            return error_response(400, "bad_request", f"level must be one of {', '.join(_LEVELS)}")
        entries = self.collector.logs(max(1, min(limit, 5000)))
        floor = _LEVELS[level]
        return JsonResponse({"logs": [e for e in entries if _LEVELS.get(e["level"], 100) >= floor]})

    async def config(self, request: Request) -> Response:
        data = {} if self.settings is None else self.settings.redacted()
        return JsonResponse(scrub_secrets(data))

    async def metrics(self, request: Request) -> Response:
        body, content_type = render(self.registry, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(self, request: Request) -> Response:
        return JsonResponse(openapi_document(protect_reads=self.protect_reads, version=__version__))

    async def dashboard(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_DASHBOARD_HEADERS)

    # -- WebSocket ---------------------------------------------------------------------------------

    async def ws(self, websocket: WebSocket) -> None:
        if self.protect_reads and not self.authorized(websocket, allow_query=True):
            # Closing before the handshake answers 403. (A 401 denial response would be nicer,
            # but uvicorn's sans-I/O WebSocket protocol then logs a spurious error.)
            await websocket.close(code=1008, reason="unauthorized")
            return
        await websocket.accept()
        closed = asyncio.ensure_future(_until_disconnect(websocket))
        try:
            while not closed.done():
                text = orjson.dumps(self.collector.snapshot()).decode()
                await websocket.send_text(text)
                await asyncio.wait({closed}, timeout=self.ws_interval)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the client went away between two snapshots
        finally:
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await closed

    # -- control -----------------------------------------------------------------------------------

    def controller(self, action: str) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            if not self.authorized(request):
                return self.unauthorized()
            method: Callable[[], Awaitable[str]] = getattr(self.control, action)
            try:
                message = await method()
            except PgMigratorError as exc:
                log.warning("control request refused", action=action, reason=exc.message)
                return error_response(409, "conflict", exc.message)
            except Exception as exc:
                log.error("control request failed", action=action, error=repr(exc))
                return error_response(500, "internal_error", f"{action} failed: {exc}")
            log.info("control request", action=action, result=message)
            return JsonResponse({"ok": True, "action": action, "message": message})

        return endpoint

    # -- probes ------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        health = self.collector.snapshot()["health"]
        failing = sorted(n for n, h in health.items() if h.get("status") != "ok")
        if failing:
            reason = ", ".join(f"{n} is {health[n]['status']}" for n in failing)
        else:
            reason = "all components ok" if health else "no component reported yet"
        body = {"status": "unhealthy" if failing else "ok", "reason": reason, "components": health}
        return JsonResponse(body, status_code=503 if failing else 200)

    async def livez(self, request: Request) -> Response:
        return JsonResponse({"status": "alive", "reason": "the process serves requests"})

    async def readyz(self, request: Request) -> Response:
        ok, reason = readiness(
            self.collector.snapshot(), self.ready_max_lag_s, self.ready_max_lag_bytes
        )
        body = {"status": "ready" if ok else "not ready", "reason": reason}
        return JsonResponse(body, status_code=200 if ok else 503)

    async def startupz(self, request: Request) -> Response:
        phase = self.collector.phase
        started = phase not in STARTING_PHASES
        body = {
            "status": "started" if started else "starting",
            "reason": f"phase is {phase}",
        }
        return JsonResponse(body, status_code=200 if started else 503)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until the client disconnects."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    if status == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    else:
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return error_response(status, codes.get(status, "error"), message, headers)


def create_app(
    collector: Collector,
    settings: Settings | None,
    control: Control,
    token: str | None,
    protect_reads: bool = False,
    *,
    ready_max_lag_s: float = DEFAULT_READY_MAX_LAG_S,
    ready_max_lag_bytes: int = DEFAULT_READY_MAX_LAG_BYTES,
    ws_interval: float | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The API app for one collector; see the module docstring.

    ``token`` None disables authentication altogether (only sensible on loopback, for tests).
    ``ready_max_lag_*`` are the ``/readyz`` thresholds; ``ws_interval`` (default: the collector's
    ``publish_interval``, 0.5 s) is the WebSocket push period. ``extra_routes`` are mounted too
    (sinks' endpoints, which read ``app.state.token`` / ``protect_reads`` for authentication).
    """
    api = _Api(collector, settings, control, token, protect_reads)
    api.ready_max_lag_s, api.ready_max_lag_bytes = ready_max_lag_s, ready_max_lag_bytes
    if ws_interval is not None:
        api.ws_interval = ws_interval
    v1 = "/api/v1"
    routes = [
        Route("/", api.dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route(f"{v1}/status", api.reader(api.status), methods=["GET"]),
        Route(f"{v1}/tables", api.reader(api.tables), methods=["GET"]),
        Route(f"{v1}/logs", api.reader(api.logs), methods=["GET"]),
        Route(f"{v1}/config", api.reader(api.config), methods=["GET"]),
        Route(f"{v1}/openapi.json", api.openapi, methods=["GET"]),
        WebSocketRoute(f"{v1}/ws", api.ws),
        *(Route(f"{v1}/{a}", api.controller(a), methods=["POST"]) for a in CONTROL_ACTIONS),
        Route("/metrics", api.reader(api.metrics), methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/livez", api.livez, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/startupz", api.startupz, methods=["GET"]),
        *extra_routes,  # e.g. the sse/websocket sinks' endpoints (SinkContext.routes)
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.token = token
    app.state.protect_reads = protect_reads
    app.state.collector = collector
    return app
