"""Real servers on 127.0.0.1 for tests: a threaded HTTP server with scripted
routes that records every request, and an aiosmtpd SMTP server with scripted
replies that records every message.

Use the fixtures by importing them into a test module::

    from servers import http_server, smtp_server  # noqa: F401  (pytest fixtures)
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest
from conftest import free_port  # noqa: F401  (re-exported for the tests that import it from here)

TRICKLE_MAX_SECONDS = 10.0  # a trickling route gives up on its own after this


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Custom behaviour: called with the request handler instead of the above.
    handler: Callable[[BaseHTTPRequestHandler], None] | None = None


class HTTPTestServer:
    """Routes are exact paths (query string ignored). Unknown paths get 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Recorded] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-http-server", daemon=True)

    # -- set-up -----------------------------------------------------------
    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", *, status: int = 200, content_type: str | None = None,
            headers: dict[str, str] | None = None) -> str:
        all_headers = dict(headers or {})
        if content_type:
            all_headers["Content-Type"] = content_type
        self.routes[path] = Route(status, body, all_headers)
        return self.url(path)

    def add_handler(self, path: str, handler: Callable[[BaseHTTPRequestHandler], None]) -> str:
        self.routes[path] = Route(handler=handler)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, status=status, headers={"Location": location})

    def trickle(self, path: str, total_bytes: int = 10_000, interval: float = 0.05,
                content_type: str = "image/jpeg") -> str:
        """A body that arrives one byte per ``interval``: every read succeeds
        in time, only an overall deadline stops it."""
        def handler(request: BaseHTTPRequestHandler) -> None:
            request.send_response(200)
            request.send_header("Content-Type", content_type)
            request.send_header("Content-Length", str(total_bytes))
            request.end_headers()
            started = time.monotonic()
            for _ in range(total_bytes):
                if self.stopping.is_set() or time.monotonic() - started > TRICKLE_MAX_SECONDS:
                    return
                try:
                    request.wfile.write(b"x")
                    request.wfile.flush()
                except OSError:  # the client hung up: that is the point
                    return
                self.stopping.wait(interval)
        return self.add_handler(path, handler)

    def stream(self, path: str, total_bytes: int, *, declare_length: bool,
               content_type: str = "image/jpeg") -> str:
        """``total_bytes`` of zeros, with or without a Content-Length header
        (without it the body ends when the connection closes)."""
        def handler(request: BaseHTTPRequestHandler) -> None:
            request.send_response(200)
            request.send_header("Content-Type", content_type)
            if declare_length:
                request.send_header("Content-Length", str(total_bytes))
            else:
                request.send_header("Connection", "close")
                request.close_connection = True
            request.end_headers()
            block = b"\0" * 65536
            sent = 0
            while sent < total_bytes and not self.stopping.is_set():
                try:
                    request.wfile.write(block[: min(len(block), total_bytes - sent)])
                except OSError:
                    return
                sent += len(block)
        return self.add_handler(path, handler)

    # -- inspection -------------------------------------------------------
    def hits(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.split("?")[0] == path]

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "HTTPTestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20)) if length else b""
                with server._lock:
                    server.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    route = Route(404, b'{"error": "not found"}', {"Content-Type": "application/json"})
                if route.handler is not None:
                    route.handler(self)
                    return
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(route.body)
                    except OSError:
                        pass

            do_GET = do_POST = do_HEAD = do_PUT = _serve

        return Handler


@pytest.fixture
def http_server() -> Iterator[HTTPTestServer]:
    server = HTTPTestServer().start()
    yield server
    server.stop()


# -- SMTP -------------------------------------------------------------------
class SMTPRecorder:
    """An aiosmtpd handler. ``replies`` is a list of SMTP replies given, one
    per DATA, before the server starts accepting ("451 ...", "550 ...");
    ``rcpt_replies`` refuses chosen recipients at RCPT."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.rcpt_replies: dict[str, str] = {}  # address -> reply refusing it
        self.messages: list[tuple[str, list[str], Message]] = []
        self.attempts = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: ANN001
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 (aiosmtpd's API)
        with self._lock:
            self.attempts += 1
            if self.replies:
                return self.replies.pop(0)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  message_from_bytes(envelope.original_content or envelope.content)))
        return "250 OK"


@dataclass
class SMTPTestServer:
    host: str
    port: int
    recorder: SMTPRecorder

    @property
    def messages(self) -> list[tuple[str, list[str], Message]]:
        return self.recorder.messages


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    from aiosmtpd.controller import Controller

    recorder = SMTPRecorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield SMTPTestServer("127.0.0.1", controller.port, recorder)
    controller.stop()
