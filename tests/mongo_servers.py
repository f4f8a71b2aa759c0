"""MongoDB servers that are not there, on 127.0.0.1, for real pymongo to fail against:

- ``closed_mongo_uri``: a port nothing listens on (connection refused at once);
- ``silent_mongo_uri``: a listener that accepts TCP connections and never
  answers a byte (what a firewall that lets the SYN through, or a hung
  server, looks like: pymongo waits on its timeouts).

Each is a URI with a database name. With QUEUE_TEST_MONGO_URI set, the tests
that use ``reachable_mongo_uri`` run against that real server as well.

    from mongo_servers import closed_mongo_uri, silent_mongo_uri  # noqa: F401  (pytest fixtures)
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Iterator

import pytest

DATABASE = "queue_unreachable_test"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: connections are refused


class SilentServer:
    """Accepts connections and holds them open without reading or writing."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-mongo", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted.append(conn)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self._sock.close()


@pytest.fixture
def closed_mongo_uri() -> str:
    return f"mongodb://127.0.0.1:{closed_port()}/{DATABASE}"


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.stop()


@pytest.fixture
def silent_mongo_uri(silent_server: SilentServer) -> str:
    return f"mongodb://127.0.0.1:{silent_server.port}/{DATABASE}"


def real_mongo_uri() -> str | None:
    """QUEUE_TEST_MONGO_URI with a database of its own, or None."""
    uri = os.environ.get("QUEUE_TEST_MONGO_URI")
    if not uri:
        return None
    from queue_service.stores import mongo_uri

    head, _, query = uri.partition("?")
    if not mongo_uri.parse(uri).get("database"):
        head = head.rstrip("/") + f"/{DATABASE}"
    return head + ("?" + query if query else "")
