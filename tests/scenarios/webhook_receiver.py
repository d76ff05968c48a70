"""A real HTTP webhook receiver for the tests: verifies HMAC signatures and fails on demand.

It runs ``http.server`` in a thread (HTTP/1.1 keep-alive, so the sink's connection reuse is
exercised). ``plan`` holds answers to give before accepting (a status, or ``(status, headers)``);
``stop()`` really takes the receiver down (listening socket and open connections closed) and
``start()`` brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Request:
    body: bytes
    headers: dict[str, str]
    status: int
    signature_ok: bool | None

    def documents(self) -> list[dict[str, Any]]:
        doc = orjson.loads(self.body)
        return doc if isinstance(doc, list) else [doc]


@dataclass
class Receiver:
    secret: bytes | None = None
    plan: deque[int | tuple[int, dict[str, str]]] = field(default_factory=deque)
    delay_first_s: float = 0.0  # answer the first request that late (to provoke a timeout)
    requests: list[Request] = field(default_factory=list)
    arrivals: int = 0  # requests received, counted before answering
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _conns: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        """Ids of every event accepted (2xx), in arrival order, duplicates included."""
        with self._lock:
            accepted = [r for r in self.requests if 200 <= r.status < 300]
        return [d["id"] for r in accepted for d in r.documents()]

    def statuses(self) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._conns.add(self.connection)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.arrivals += 1
                status, extra = receiver._answer()
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = None
                if receiver.secret is not None:
                    want = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                    ok = hmac.compare_digest(want, headers.get("x-pgmigrator-signature", ""))
                with receiver._lock:
                    receiver.requests.append(Request(body, headers, status, ok))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def _answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            if self.delay_first_s and self.arrivals == 1:
                delay, self.delay_first_s = self.delay_first_s, 0.0
            else:
                delay = 0.0
            step = self.plan.popleft() if self.plan else 200
        if delay:
            threading.Event().wait(delay)  # a slow receiver, on purpose
        return (step, {}) if isinstance(step, int) else step

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
