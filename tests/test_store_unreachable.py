"""A store that cannot be reached or set up never takes the host app down
(issue 12, item 1), in one process: real pymongo against a closed port and a
silent listener, SQLite under a regular file, and a real store behind a
double that fails its first setups. The same through gunicorn is in
tests/test_gunicorn_unreachable.py.
"""
from __future__ import annotations

import logging
import socket
import threading

import pytest
from flask import Flask

from conftest import make_store
from mongo_servers import closed_mongo_uri, real_mongo_uri, silent_mongo_uri, silent_server  # noqa: F401
from queue_service import JobQueue
from queue_service.core.errors import ConfigurationError, StoreUnavailable
from queue_service.core.lazy_store import MAX_RETRY_SECONDS, StoreNotReady

TOKEN = "t0ken"


def host_app(clock=None, store=None, **config) -> tuple[Flask, JobQueue]:
    app = Flask("host")
    app.config.update({"TESTING": True, "QUEUE_ADMIN_TOKEN": TOKEN, **config})
    queue = JobQueue(clock=clock)

    @app.get("/")
    def index():
        return {"host": "up"}

    queue.init_app(app, store=store)
    return app, queue


def enqueue(client):
    return client.post("/api/queue/jobs", json={"type": "CLEANUP", "payload": {"task": "purge_jobs", "olderThan": "7d"}},
                       headers={"Authorization": f"Bearer {TOKEN}"})


def assert_queue_503(app) -> None:
    client = app.test_client()
    assert client.get("/").status_code == 200  # the host app's own route
    health = client.get("/api/queue/health")
    assert health.status_code == 503 and health.is_json
    assert health.get_json()["problems"] == ["store unreachable"]
    posted = enqueue(client)
    assert posted.status_code == 503 and posted.is_json
    assert posted.headers["Retry-After"]
    assert "127.0.0.1" not in health.get_data(as_text=True) + posted.get_data(as_text=True)


@pytest.mark.parametrize("which", ["closed", "silent"])
def test_unreachable_mongo_leaves_the_host_app_serving(which, request, clock, caplog):
    uri = request.getfixturevalue(f"{which}_mongo_uri")
    # Shorter server selection than the 5 s default: the point is the shape, not pymongo's wait.
    app, queue = host_app(clock, MONGO_URI=uri + "?timeoutMS=300", QUEUE_AUTOSTART=True)
    with caplog.at_level(logging.DEBUG, "queue_service"):
        assert queue.start(app=app) is True  # threads start although the store is down
        try:
            assert_queue_503(app)
            for _ in range(3):
                assert enqueue(app.test_client()).status_code == 503  # inside the backoff: no new attempt
            assert queue.state(app).runtime.lazy_store.failures == 1
        finally:
            queue.shutdown(timeout=1, app=app)
            queue.state(app).runtime.lazy_store.close()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and "setup failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # once per state change


def test_a_failed_setup_reuses_its_client(closed_mongo_uri, clock, monkeypatch):
    """One MongoClient per process, even while setup keeps failing."""
    import flask_pymongo.wrappers

    made = []
    real = flask_pymongo.wrappers.MongoClient

    class Counting(real):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(flask_pymongo.wrappers, "MongoClient", Counting)
    app, queue = host_app(clock, MONGO_URI=closed_mongo_uri + "?timeoutMS=200")
    for _ in range(3):
        with app.app_context(), pytest.raises(StoreUnavailable):
            queue.get_queue_stats()
        clock.advance(MAX_RETRY_SECONDS + 1)  # past the backoff: a new setup attempt each time
    lazy = queue.state(app).runtime.lazy_store
    assert len(made) == 1 and lazy.failures == 3
    lazy.close()


def test_the_queue_client_is_bounded_unless_the_uri_says(closed_mongo_uri):
    from queue_service.stores import mongo_uri

    assert mongo_uri.client_options(closed_mongo_uri) == {"serverSelectionTimeoutMS": 5000, "timeoutMS": 5000}
    assert mongo_uri.client_options(closed_mongo_uri + "?serverSelectionTimeoutMS=100&timeoutMS=200") == {}
    assert mongo_uri.client_options(closed_mongo_uri + "?timeoutMS=200") == {"serverSelectionTimeoutMS": 5000}
    assert mongo_uri.client_options(closed_mongo_uri + "?serverSelectionTimeoutMS=100") == {}


def test_sqlite_path_under_a_regular_file_answers_503(tmp_path, clock):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    app, queue = host_app(clock, QUEUE_DATABASE_URL=f"sqlite:///{blocker}/queue.db", QUEUE_AUTOSTART=True)
    assert queue.start(app=app) is True
    try:
        assert_queue_503(app)
    finally:
        queue.shutdown(timeout=1, app=app)


class FailingSetups:
    """The real store, whose first ``failures`` setup() calls raise as a down server would."""

    def __init__(self, store, failures: int):
        self._store = store
        self.left = failures
        self.calls = 0

    def setup(self) -> None:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise StoreUnavailable("connection refused (test double)")
        self._store.setup()

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize("store_kind", ["sqlite", "mongo"])
def test_the_queue_recovers_without_a_restart(store_kind, tmp_path, clock):
    """Real mongo when QUEUE_TEST_MONGO_URI is set (conftest.make_store), else mongomock."""
    real, cleanup = make_store(store_kind, tmp_path)
    double = FailingSetups(real, failures=2)
    app, queue = host_app(clock, store=double, QUEUE_AUTOSTART=True, QUEUE_POLL_INTERVAL=0.01)
    done = threading.Event()

    @queue.job_type("ECHO")
    def echo(payload, job):
        return payload

    @queue.on_complete("ECHO")
    def recorded(job):  # runs once the worker has stored the outcome
        done.set()

    queue.start(app=app)
    try:
        with app.app_context():
            assert_queue_503(app)
            assert double.calls == 1
            clock.advance(MAX_RETRY_SECONDS + 1)
            with pytest.raises(StoreNotReady):
                queue.add_job("ECHO", {"n": 1})
            clock.advance(MAX_RETRY_SECONDS + 1)
            job_id = queue.add_job("ECHO", {"n": 2})  # the third setup works
            assert app.test_client().get("/api/queue/health").status_code == 200
            assert done.wait(10)
            assert queue.get_job(job_id).result == {"n": 2}
            assert double.calls == 3
    finally:
        queue.shutdown(timeout=1, app=app)
        real.close()
        cleanup()


@pytest.mark.parametrize("uri", [
    "mongodb+srv://user:pw@cluster0.example.net/?retryWrites=true&w=majority&appName=Cluster0",
    "mongodb://user:pw@127.0.0.1:27017/?authSource=admin",
    "mongodb://127.0.0.1:27017",
])
def test_a_uri_without_a_database_fails_init_app_offline(uri, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the URI check used the network")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ConfigurationError, match="MONGO_URI names no database"):
        host_app(MONGO_URI=uri)


def test_an_srv_uri_with_a_database_is_accepted_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the URI check used the network")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    app, _ = host_app(MONGO_URI="mongodb+srv://u:p@cluster0.example.net/app?retryWrites=true&srvMaxHosts=2",
                      QUEUE_AUTOSTART=False)
    assert app.test_client().get("/").status_code == 200


@pytest.mark.skipif(not real_mongo_uri(), reason="QUEUE_TEST_MONGO_URI is not set")
def test_a_reachable_real_server_is_healthy(clock):
    app, queue = host_app(clock, MONGO_URI=real_mongo_uri(), QUEUE_AUTOSTART=False)
    assert app.test_client().get("/api/queue/health").status_code == 200
