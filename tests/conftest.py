"""Shared fixtures: a manual clock, a store per backend, an app factory.

The MongoDB store runs against mongomock by default and against a real
server when QUEUE_TEST_MONGO_URI is set: that one variable switches every
test that uses the ``store`` fixture.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest
from flask import Flask

from queue_service import JobQueue, ManualClock
from queue_service.stores.sqlite import SQLiteStore

MONGO_URI = os.environ.get("QUEUE_TEST_MONGO_URI")
STORE_KINDS = ["sqlite", "mongo"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (aiosmtpd cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_mongo_database():
    """A fresh database: real when QUEUE_TEST_MONGO_URI is set, else mongomock.
    Returns (database, cleanup)."""
    name = f"queue_test_{uuid.uuid4().hex[:12]}"
    if MONGO_URI:
        import pymongo

        client = pymongo.MongoClient(MONGO_URI, tz_aware=True, serverSelectionTimeoutMS=5000)
        db = client[name]
        return db, lambda: (client.drop_database(name), client.close())
    import mongomock

    client = mongomock.MongoClient(tz_aware=True)
    return client[name], lambda: None


def make_store(kind: str, tmp_path):
    if kind == "sqlite":
        store = SQLiteStore(str(tmp_path / "queue.db"))
        return store, store.close
    from queue_service.stores.mongo import MongoStore

    db, cleanup = make_mongo_database()
    store = MongoStore(lambda: db, "queue_jobs", completed_ttl_seconds=604800)
    return store, cleanup


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    return request.param


def opened_store(kind: str, tmp_path):
    """A set-up store of ``kind``, closed and dropped after the test."""
    store, cleanup = make_store(kind, tmp_path)
    store.setup()
    yield store
    store.close()
    cleanup()


@pytest.fixture
def store(store_kind, tmp_path):
    yield from opened_store(store_kind, tmp_path)


@pytest.fixture
def app_store(request, tmp_path):
    """The store ``make_app`` mounts: SQLite, or each store in turn for a test
    that asks for ``store_kind`` (the API, CLI and worker tests exercise the
    web and core layers, which are the same over every store; the store
    contract suite covers the stores)."""
    kind = request.getfixturevalue("store_kind") if "store_kind" in request.fixturenames else "sqlite"
    yield from opened_store(kind, tmp_path)


@pytest.fixture
def make_app(app_store, clock):
    """Build a Flask app with a JobQueue on the ``app_store`` fixture's store."""
    def factory(queue: JobQueue | None = None, **config) -> tuple[Flask, JobQueue]:
        app = Flask("test_app")
        # A dict, so a test may override the defaults (QUEUE_DEVELOPMENT=False).
        app.config.update({"TESTING": True, "QUEUE_AUTOSTART": False, "QUEUE_DEVELOPMENT": True, **config})
        queue = queue or JobQueue(clock=clock)
        queue.init_app(app, store=app_store)
        return app, queue
    return factory


@pytest.fixture(autouse=True)
def no_queue_settings_from_the_shell(monkeypatch):
    """Settings fall back to the environment (QUEUE_*, MAIL_*, MONGO_URI), so a
    variable exported in the shell that runs pytest must not reach the tests.
    QUEUE_TEST_* (the tests' own switches) stay."""
    from queue_service.core.settings import from_environment

    for name in list(os.environ):
        if from_environment(name) and not name.startswith("QUEUE_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_leftover_queue_threads():
    """A test that leaves a queue thread running fails."""
    yield
    leftovers = [t for t in threading.enumerate()
                 if t.name in ("queue-worker", "queue-scheduler") and t.is_alive()]
    for thread in leftovers:
        thread.join(2.0)
    alive = [t.name for t in leftovers if t.is_alive()]
    assert not alive, f"test left queue threads running: {alive}"
