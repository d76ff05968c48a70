"""Serving the API with uvicorn, inside an asyncio pipeline or next to a synchronous command.

:class:`ApiServer` binds its listening socket itself (so a busy port or a bad address raises a
clear :class:`~pgmigrator.errors.ConfigError` in the caller, and port 0 reports the port the
kernel chose), then runs a uvicorn :class:`~uvicorn.Server` that never touches signal handlers:
uvicorn 0.54 has no setting for that (``Server.serve`` always wraps itself in
``capture_signals``), so a subclass replaces that context manager with a no-op. The pipeline owns
SIGINT/SIGTERM and stops the server with :meth:`ApiServer.stop` / :meth:`ApiServer.stop_thread`.

Two ways to run it:

* ``await server.start()`` / ``await server.stop()``: a task in the caller's event loop (follow);
* ``server.start_in_thread()`` / ``server.stop_thread()``: a daemon thread with its own event
  loop, for commands that run synchronously (clone). Control calls then run in that thread.

:func:`parse_api_addr` reads ``--api-addr`` values and :func:`resolve_token` picks the bearer
token (a configured one, or a fresh random one the caller prints once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import threading
from collections.abc import Callable, Generator
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from pgmigrator.errors import ConfigError, PgMigratorError
from pgmigrator.log import get_logger

log = get_logger("api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
START_TIMEOUT_S = 10.0
_ADDR_HINT = "use HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080 or :8080 (localhost)"


def parse_api_addr(text: str) -> tuple[str, int]:
    """``'127.0.0.1:8080'`` -> ``('127.0.0.1', 8080)``; ``'[::1]:0'`` and ``':8080'`` work too.

    An empty host means the default, 127.0.0.1 (use ``0.0.0.0:PORT`` or ``[::]:PORT`` to listen
    on every interface). Port 0 asks the kernel for a free port. Raises :class:`ConfigError`.
    """
    raw = text.strip()
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or not raw[end + 1 :].startswith(":"):
            raise ConfigError(f"invalid --api-addr {text!r}: expected [IPV6]:PORT", hint=_ADDR_HINT)
        host, port_text = raw[1:end], raw[end + 2 :]
        _check_ipv6(host, text)
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise ConfigError(f"invalid --api-addr {text!r}: no port", hint=_ADDR_HINT)
        if ":" in host:
            raise ConfigError(
                f"invalid --api-addr {text!r}: put an IPv6 address in brackets", hint=_ADDR_HINT
            )
        host = host or DEFAULT_HOST
        if any(c.isspace() or c in "/?#@" for c in host):
            raise ConfigError(f"invalid --api-addr {text!r}: bad host {host!r}", hint=_ADDR_HINT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"invalid --api-addr {text!r}: port must be a number from 0 to 65535",
            hint=_ADDR_HINT,
        )
    return host, int(port_text)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(
            f"invalid --api-addr {text!r}: {host!r} is not an IPv6 address", hint=_ADDR_HINT
        ) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def resolve_token(configured: str | None) -> tuple[str, bool]:
    """The bearer token to require, and whether it was generated (the caller prints it once)."""
    if configured is not None and configured.strip():
        return configured.strip(), False
    return secrets.token_urlsafe(24), True


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; :class:`ConfigError` if that is impossible."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot resolve the API address {where}: {exc}", hint=_ADDR_HINT
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {where}: {exc.strerror or exc}",
            hint="choose another --api-addr (port 0 picks a free one)",
        ) from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host and reports when it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


class ApiServer:
    """The API's HTTP server; see the module docstring for the two ways to run it."""

    def __init__(self, app: ASGIApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._bound_port: int | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

    @classmethod
    def from_addr(cls, app: ASGIApp, addr: str) -> ApiServer:
        """An :class:`ApiServer` for an ``--api-addr`` value (see :func:`parse_api_addr`)."""
        host, port = parse_api_addr(addr)
        return cls(app, host, port)

    @property
    def port(self) -> int:
        """The bound port once started (the kernel's choice for port 0), else the asked one."""
        return self._port if self._bound_port is None else self._bound_port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server (loopback shown for wildcard hosts)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.started and not self._server.should_exit

    def _prepare(self, on_started: Callable[[], None]) -> tuple[_Server, socket.socket]:
        if self._server is not None:
            raise PgMigratorError("the API server is already running")
        sock = bind_socket(self.host, self._port)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            timeout_graceful_shutdown=3,
            server_header=False,
        )
        self._sock, self._server = sock, _Server(config, on_started)
        self._bound_port = int(sock.getsockname()[1])
        self._warn_if_exposed()
        return self._server, sock

    def _warn_if_exposed(self) -> None:
        if is_loopback(self.host):
            log.info("API listening", url=self.url)
            return
        state = getattr(self.app, "state", None)
        token = getattr(state, "token", None)
        protect_reads = bool(getattr(state, "protect_reads", False))
        log.info("API listening", url=self.url, host=self.host)
        if token is None:
            log.warning(
                "API bound to a non-loopback address without a token: anyone who can reach it "
                "can pause, resume and switch over",
                host=self.host,
            )
        elif not protect_reads:
            log.warning(
                "API bound to a non-loopback address without a token on read endpoints: "
                "status, logs and configuration are visible to anyone who can reach it",
                host=self.host,
            )

    # -- inside an event loop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and serve in a task of the running loop; returns once it accepts connections."""
        started = asyncio.Event()
        server, sock = self._prepare(started.set)
        self._task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name="api-server"
        )
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                {waiter, self._task}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if not started.is_set():
            await self.stop()
            raise PgMigratorError("the API server did not start", hint="see the log above")

    async def stop(self) -> None:
        """Stop accepting, close connections (WebSockets included) and wait for the task."""
        server, task = self._server, self._task
        if server is not None:
            server.should_exit = True
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
        self._reset()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- next to synchronous code -------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Serve from a daemon thread with its own event loop; returns once it listens."""
        started = threading.Event()
        server, sock = self._prepare(started.set)
        self._thread_error = None

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported to the thread that waits for the start
                self._thread_error = exc
                started.set()

        self._thread = threading.Thread(target=run, name="api-server", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S) or self._thread_error is not None:
            error = self._thread_error
            self.stop_thread()
            raise PgMigratorError(f"the API server did not start: {error or 'timeout'}")

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Ask the server thread to finish and wait for it (at most ``timeout`` seconds)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the API server thread did not stop in time")
        self._reset()

    def __enter__(self) -> ApiServer:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def _reset(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._server, self._task, self._thread = None, None, None, None
