"""Issue 13 in-process: what anonymous callers see, forged requests, and the
smaller holes (runAt bound, //stats, the admin token, SQLite files)."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask

from queue_service import JobQueue, PermanentJobError
from queue_service.core.errors import ConfigurationError, StoreUnavailable
from queue_service.stores.sqlite import SQLiteStore
from servers import smtp_server  # noqa: F401  (fixture)

TOKEN = "s3cret-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/api/queue"
CLEANUP = {"type": "CLEANUP", "payload": {"task": "purge_jobs", "olderThan": "30d"}}
PUBLIC_KEYS = {"id", "type", "status", "retryCount", "maxRetries", "createdAt", "runAt", "processedAt",
               "completedAt", "progress", "error"}


@pytest.fixture
def hardened(make_app, smtp_server):
    def factory(queue=None, **config):
        settings = {"QUEUE_DEVELOPMENT": False, "QUEUE_ADMIN_TOKEN": TOKEN, "MAIL_SERVER": smtp_server.host,
                    "MAIL_PORT": smtp_server.port, "MAIL_DEFAULT_SENDER": "shop@shop.example", "MAIL_TIMEOUT": 5}
        return make_app(queue, **{**settings, **config})
    return factory


def run_one(app):
    return app.extensions["queue_service"].runtime.make_worker().run_once()


# -- 1. anonymous reads ---------------------------------------------------------
def test_anonymous_read_of_a_completed_email_shows_status_only(hardened, smtp_server):
    app, queue = hardened()
    job_id = queue.add_job("EMAIL_SEND", {"to": "alice@private.example", "subject": "Your order", "body": "x"},
                           app=app, idempotency_key="order-77")
    run_one(app)
    client = app.test_client()
    response = client.get(f"{PREFIX}/job/{job_id}")
    assert response.status_code == 200
    job = response.get_json()
    assert set(job) == PUBLIC_KEYS and job["status"] == "completed" and job["error"] is None
    text = response.get_data(as_text=True)
    for secret in ("alice@private.example", "Your order", "order-77", "payload", "result", "worker", "attempts"):
        assert secret not in text
    admin = client.get(f"{PREFIX}/job/{job_id}", headers=ADMIN).get_json()
    assert "alice@private.example" in json.dumps(admin["payload"]) and admin["worker"] and admin["attempts"]
    assert "alice@private.example" in json.dumps(admin["result"])  # what the public view must not show


def test_anonymous_read_of_a_failed_job_says_failed_not_why(hardened, clock):
    queue = JobQueue(clock=clock)

    @queue.job_type("LEAKY", max_retries=0)
    def leaky(payload, job):
        raise PermanentJobError(f"could not reach {payload['dsn']}")

    app, queue = hardened(queue)
    job_id = queue.add_job("LEAKY", {"dsn": "postgres://bob:pw@10.0.0.5/db"}, app=app)
    run_one(app)
    response = app.test_client().get(f"{PREFIX}/job/{job_id}")
    job = response.get_json()
    assert job["status"] == "failed" and job["error"] == "failed" and set(job) == PUBLIC_KEYS
    assert "10.0.0.5" not in response.get_data(as_text=True)
    admin = app.test_client().get(f"{PREFIX}/job/{job_id}", headers=ADMIN).get_json()
    assert "10.0.0.5" in admin["error"]


def test_public_view_hook_widens_the_anonymous_view(hardened):
    queue = JobQueue()

    @queue.public_view
    def view(job, default):
        return {**default, "queue": job.queue}

    app, queue = hardened(queue)
    job_id = queue.add_job("CLEANUP", CLEANUP["payload"], app=app)
    job = app.test_client().get(f"{PREFIX}/job/{job_id}").get_json()
    assert job["queue"] == "default" and "payload" not in job


def test_health_hides_the_running_job_id_from_anonymous_callers(hardened, clock):
    queue = JobQueue(clock=clock)
    running, release = threading.Event(), threading.Event()

    @queue.job_type("HOLD")
    def hold(payload, job):
        running.set()
        release.wait(10)

    app, queue = hardened(queue)
    runtime = app.extensions["queue_service"].runtime
    runtime.start()
    try:
        job_id = queue.add_job("HOLD", {}, app=app)
        assert running.wait(10)
        client = app.test_client()
        public = client.get(f"{PREFIX}/health")
        assert public.get_json()["worker"]["isProcessing"] is True
        assert public.get_json()["worker"]["processingJobId"] is None and job_id not in public.get_data(as_text=True)
        assert client.get(f"{PREFIX}/health", headers=ADMIN).get_json()["worker"]["processingJobId"] == job_id
    finally:
        release.set()
        runtime.shutdown(timeout=5)


def test_media_names_are_not_job_ids_and_stable_per_job_and_index(hardened):
    from queue_service.handlers.image import media_name

    app, queue = hardened(SECRET_KEY="k1")

    class Context:  # the two attributes media_name reads of a JobContext
        def __init__(self, job_id, app):
            self.id, self.app = job_id, app
            self.settings = app.extensions["queue_service"].settings

    job_id = "84e62943-e03f-497d-9052-78be0e6419b7"
    first = media_name(Context(job_id, app), 1)
    assert first == media_name(Context(job_id, app), 1)  # a re-run overwrites its files
    assert first != media_name(Context(job_id, app), 2) and job_id[:8] not in first
    other_app, _ = hardened(SECRET_KEY="k2")
    assert media_name(Context(job_id, other_app), 1) != first  # keyed: not computable from the id


# -- 5. forged requests ---------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_post_bodies_must_be_json(hardened, content_type):
    app, _ = hardened()
    headers = {**ADMIN, **({"Content-Type": content_type} if content_type else {})}
    response = app.test_client().post(f"{PREFIX}/jobs", data=json.dumps(CLEANUP).encode(),
                                      headers=headers)
    assert response.status_code == 415 and response.mimetype == "application/json"
    assert "contentType" in response.get_json()["details"]
    assert app.extensions["queue_service"].service.stats()["total"] == 0


def test_json_with_charset_is_accepted(hardened):
    app, _ = hardened()
    response = app.test_client().post(f"{PREFIX}/jobs", data=json.dumps(CLEANUP).encode(),
                                      headers={**ADMIN, "Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201


@pytest.fixture
def cookie_app(hardened):
    queue = JobQueue()

    @queue.admin_check
    def by_cookie(request):
        return request.cookies.get("session") == "admin"

    app, queue = hardened(queue)
    client = app.test_client()
    client.set_cookie("session", "admin")
    return app, client


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "null"}, {"Origin": "http://localhost:9999"}])
def test_cross_origin_posts_refused_with_a_cookie_hook(cookie_app, headers):
    app, client = cookie_app
    response = client.post(f"{PREFIX}/jobs", json=CLEANUP, headers=headers)
    assert response.status_code == 403 and "origin" in response.get_json()["details"]
    assert client.post(f"{PREFIX}/cleanup", headers=headers).status_code == 403
    assert app.extensions["queue_service"].service.stats()["total"] == 0


def test_same_origin_and_non_browser_posts_pass_with_a_cookie_hook(cookie_app):
    app, client = cookie_app
    for headers in ({}, {"Origin": "http://localhost"}, {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}):
        response = client.post(f"{PREFIX}/jobs", json=CLEANUP, headers=headers)
        assert response.status_code == 201, headers
    # GET is not state-changing: a cross-origin read is the host's CORS business.
    assert client.get(f"{PREFIX}/stats", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_bearer_clients_unaffected_by_origin_headers(hardened):
    app, _ = hardened()
    response = app.test_client().post(f"{PREFIX}/jobs", json=CLEANUP,
                                      headers={**ADMIN, "Origin": "https://tool.example"})
    assert response.status_code == 201


# -- 6. smaller holes -----------------------------------------------------------
def test_run_at_beyond_366_days_is_400(hardened, clock):
    app, _ = hardened()
    client = app.test_client()
    far = (clock.now() + timedelta(days=367)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = client.post(f"{PREFIX}/jobs", json={**CLEANUP, "runAt": far}, headers=ADMIN)
    assert response.status_code == 400 and "runAt" in response.get_json()["details"]
    near = (clock.now() + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.post(f"{PREFIX}/jobs", json={**CLEANUP, "runAt": near},
                       headers=ADMIN).status_code == 201


@pytest.mark.parametrize("path", ["//stats", "//job//x", "/stats//"])
def test_double_slashes_get_json_not_a_redirect(hardened, path):
    app, _ = hardened()
    response = app.test_client().get(PREFIX + path, headers={**ADMIN, "Host": "evil.example"})
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert "Location" not in response.headers


@pytest.mark.parametrize("token", [" tok", "tok\n", "tök", "to k"])
def test_unusable_admin_tokens_refused_at_init(tmp_path, token):
    app = Flask("t")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_ADMIN_TOKEN=token,
                      QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'q.db'}")
    with pytest.raises(ConfigurationError, match="QUEUE_ADMIN_TOKEN"):
        JobQueue().init_app(app)


def test_sqlite_file_created_0600(tmp_path):
    store = SQLiteStore(str(tmp_path / "sub" / "q.db"))
    store.setup()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "sub" / "q.db").st_mode) == 0o600
    finally:
        store.close()


@pytest.mark.parametrize("make_path", [
    lambda tmp: [(tmp / "file").write_text("x"), tmp / "file" / "q.db"][1],  # NotADirectoryError
    lambda tmp: [(tmp / "dir.db").mkdir(), tmp / "dir.db"][1],  # IsADirectoryError
])
def test_filesystem_errors_are_store_unavailable(tmp_path, make_path):
    store = SQLiteStore(str(make_path(tmp_path)))
    with pytest.raises(StoreUnavailable):
        store.setup()


def test_not_a_directory_is_a_503_json(tmp_path, clock):
    (tmp_path / "file").write_text("x")
    app = Flask("t")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_ADMIN_TOKEN=TOKEN,
                      QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'file' / 'q.db'}")
    JobQueue(clock=clock).init_app(app)
    client = app.test_client()
    response = client.post(f"{PREFIX}/jobs", json=CLEANUP, headers=ADMIN)
    assert response.status_code == 503 and response.mimetype == "application/json"
    assert client.get(f"{PREFIX}/health").status_code == 503


def test_read_only_connection_is_dropped_and_the_store_recovers(tmp_path, clock):
    """As root, chmod does not make a file read-only, so the pool is handed a
    connection SQLite opened read-only (what it does on a file it cannot
    write): the real "attempt to write a readonly database" error."""
    path = str(tmp_path / "q.db")
    store = SQLiteStore(path)
    store.setup()
    try:
        pool = store._db
        pool.close()
        pool._idle.append(sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False))
        with pytest.raises(StoreUnavailable, match="readonly"):
            store.put_file("a", b"x", "image/webp", clock.now())
        assert pool._idle == []  # dropped, not pooled
        store.ping()  # writable again: health recovers, and so do writes
        store.put_file("a", b"x", "image/webp", clock.now())
        assert store.get_file("a").data == b"x"
        # While writes fail, ping (health) fails too.
        pool.close()
        pool._idle.append(sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False))
        store.refusing_writes = True  # what the refused write sets (core.write_watch)
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        store.close()
