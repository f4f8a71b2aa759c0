"""The REST API through Flask's test client, on both stores (``make_app``).

Every route's success and each documented error: 400 (malformed, not an
object, invalid UTF-8, strict fields, bad query), 401/403, 404 (unknown and
non-UUID ids), 405, 409, 413 (Content-Length and chunked), 503.
"""
from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta

import marshmallow
import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from marshmallow import fields

from queue_service import JobQueue, PermanentJobError
from queue_service.core import limits
from queue_service.web import schemas

TOKEN = "s3cret-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/api/queue"
ISO_Z = "%Y-%m-%dT%H:%M:%SZ"


class EmailPayload(marshmallow.Schema):
    to = fields.Email(required=True)
    subject = fields.String(required=True)


def make_queue(clock) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("EMAIL", schema=EmailPayload)
    def email(payload, job):
        return {"sent": payload["to"]}

    @queue.job_type("NOOP")
    def noop(payload, job):
        return None

    @queue.job_type("BOOM", max_retries=0)
    def boom(payload, job):
        raise PermanentJobError("boom")

    return queue


class Api:
    """The app, its queue and a client that sends the admin token."""

    def __init__(self, app: Flask, queue: JobQueue):
        self.app, self.queue = app, queue
        self.client = app.test_client()
        self.state = app.extensions["queue_service"]

    def add(self, job_type: str = "NOOP", payload: dict | None = None, **options) -> str:
        with self.app.app_context():
            return self.queue.add_job(job_type, payload or {}, **options)

    def run_once(self):
        return self.state.runtime.make_worker().run_once()

    def total(self) -> int:
        with self.app.app_context():
            return self.queue.get_queue_stats()["total"]

    def get(self, path: str, **kw):
        return self.client.get(PREFIX + path, headers={**ADMIN, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw):
        return self.client.post(PREFIX + path, headers={**ADMIN, **kw.pop("headers", {})}, **kw)


@pytest.fixture
def api(make_app, clock) -> Api:
    app, queue = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    return Api(app, queue)


def assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    if field is not None:
        assert field in body["details"], body
    return body


# -- POST /jobs ---------------------------------------------------------------
def test_create_job(api, clock):
    response = api.post("/jobs", json={"type": "EMAIL", "payload": {"to": "a@example.com", "subject": "Hi"},
                                       "priority": 5})
    assert response.status_code == 201
    body = response.get_json()
    assert body == {"id": body["id"], "status": "pending"}
    assert uuid.UUID(body["id"]).version == 4
    assert response.headers["Location"].endswith(f"{PREFIX}/job/{body['id']}")
    job = api.get(f"/job/{body['id']}").get_json()
    assert job["type"] == "EMAIL" and job["priority"] == 5
    assert job["payload"] == {"to": "a@example.com", "subject": "Hi"}
    assert job["createdAt"] == clock.now().strftime(ISO_Z)


def test_create_job_location_under_a_non_ascii_mount_point_is_a_uri(api):
    """The Location is built once per mount point as a URI (not re-quoted by
    Werkzeug as the response is sent): the same as Werkzeug would send."""
    from werkzeug.urls import iri_to_uri

    payload = {"type": "NOOP", "payload": {}}
    for script_name in ("/caf\u00e9 app", "/plain"):
        response = api.client.post(PREFIX + "/jobs", json=payload, headers=ADMIN,
                                   environ_overrides={"SCRIPT_NAME": script_name.encode().decode("latin-1")})
        assert response.status_code == 201, response.get_data(as_text=True)
        job_id = response.get_json()["id"]
        location = response.headers["Location"]
        assert location.isascii() and " " not in location
        assert location == iri_to_uri(f"{script_name}{PREFIX}/job/{job_id}")


def test_create_job_location_set_by_an_after_request_hook_wins(api):
    @api.app.after_request
    def own_location(response):
        if response.status_code == 201:
            response.headers["Location"] = "/elsewhere"
        return response

    response = api.post("/jobs", json={"type": "NOOP", "payload": {}})
    assert response.status_code == 201
    assert response.headers.getlist("Location") == ["/elsewhere"]


def test_a_payload_with_dollar_and_dotted_keys_comes_back_identical(api, store_kind):
    """On both stores: MongoDB stores such keys escaped (stores/mongo_keys.py)."""
    payload = {"$ref": "things", "$id": 7, "a.b": {"$set": [{"c.d": 1, "\uff04x": None}]}, "x\uff3c": "y"}
    response = api.post("/jobs", json={"type": "NOOP", "payload": payload})
    assert response.status_code == 201, response.get_json()
    job_id = response.get_json()["id"]
    assert api.get(f"/job/{job_id}").get_json()["payload"] == payload
    api.run_once()
    assert api.get(f"/job/{job_id}").get_json()["payload"] == payload
    assert api.get("/jobs").get_json()["jobs"][0]["payload"] == payload


def test_create_job_options(api, clock):
    delayed = api.post("/jobs", json={"type": "NOOP", "payload": {}, "delay": 90, "maxRetries": 7}).get_json()
    job = api.get(f"/job/{delayed['id']}").get_json()
    assert job["runAt"] == (clock.now() + timedelta(seconds=90)).strftime(ISO_Z)
    assert job["maxRetries"] == 7
    later = api.post("/jobs", json={"type": "NOOP", "payload": {}, "runAt": "2030-06-01T12:00:00+02:00"})
    assert api.get(f"/job/{later.get_json()['id']}").get_json()["runAt"] == "2030-06-01T10:00:00Z"


def test_create_job_idempotency_key(api):
    first = api.post("/jobs", json={"type": "NOOP", "payload": {}, "idempotencyKey": "k1"}).get_json()
    second = api.post("/jobs", json={"type": "NOOP", "payload": {}, "idempotencyKey": "k1"})
    assert second.status_code == 201 and second.get_json()["id"] == first["id"]
    assert api.total() == 1


def test_create_job_idempotency_key_answers_the_running_jobs_status(api, clock):
    first = api.post("/jobs", json={"type": "NOOP", "payload": {}, "idempotencyKey": "k2"}).get_json()
    assert first["status"] == "pending"
    assert api.state.runtime.store.claim("w1", "token-1", clock.now()).id == first["id"]
    again = api.post("/jobs", json={"type": "NOOP", "payload": {}, "idempotencyKey": "k2"}).get_json()
    assert again == {"id": first["id"], "status": "processing"}


@pytest.mark.parametrize("body, field", [
    ({"type": "EMAIL", "payload": {"to": "nobody", "subject": "x"}}, "payload"),
    ({"type": "EMAIL", "payload": {"subject": "x"}}, "payload"),
    ({"type": "NOPE", "payload": {}}, "type"),
    ({"payload": {}}, "type"),
    ({"type": "NOOP"}, "payload"),
    ({"type": "NOOP", "payload": []}, "payload"),
    ({"type": "NOOP", "payload": {}, "priority": 1.0}, "priority"),
    ({"type": "NOOP", "payload": {}, "priority": "1"}, "priority"),
    ({"type": "NOOP", "payload": {}, "priority": True}, "priority"),
    ({"type": "NOOP", "payload": {}, "priority": 10**7}, "priority"),
    ({"type": "NOOP", "payload": {}, "delay": "5"}, "delay"),
    ({"type": "NOOP", "payload": {}, "delay": -1}, "delay"),
    ({"type": "NOOP", "payload": {}, "delay": 5, "runAt": "2031-01-01T00:00:00Z"}, "delay"),
    ({"type": "NOOP", "payload": {}, "runAt": "2031-01-01T00:00:00"}, "runAt"),
    ({"type": "NOOP", "payload": {}, "runAt": "0001-01-01T00:00:00+01:00"}, "runAt"),
    ({"type": "NOOP", "payload": {}, "maxRetries": 101}, "maxRetries"),
    ({"type": "NOOP", "payload": {}, "idempotencyKey": ""}, "idempotencyKey"),
    ({"type": "NOOP", "payload": {}, "extra": 1}, "extra"),
    ({"type": "NOOP", "payload": {}, "priority": None}, "priority"),
])
def test_create_job_invalid_fields(api, body, field):
    assert_error(api.post("/jobs", json=body), 400, field)
    assert api.total() == 0


def test_create_job_payload_error_names_nested_field(api):
    body = assert_error(api.post("/jobs", json={"type": "EMAIL", "payload": {"to": "x", "subject": "s"}}), 400)
    assert body["details"] == {"payload": {"to": ["Not a valid email address."]}}


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"{", b"{'type': 'NOOP'}", b"[]", b'"text"', b"null", b"42",
    b"\xff\xfe{}", b'{"type": "NOOP", "payload": {"x": "\xc3\x28"}}',
    b'{"type": "NOOP", "payload": {"x": NaN}}', b'{"type": "NOOP", "payload": {"x": 1e999}}',
    b'{"type": "NOOP", "payload": {"x": 123456789012345678901234567890}}',
    b'{"type": "NOOP", "payload": {"x": "\\ud800"}}',
    b'{"type": "NOOP", "payload": ' + b'[' * 40 + b']' * 40 + b'}',
    b'[' * 70000 + b']' * 70000,  # over the cap anyway: 413 is fine too
    b'{"type": "NOOP", "payload": {"x": ' + b'1' * 5000 + b'}}',
])
def test_create_job_bad_bodies(api, raw):
    response = api.post("/jobs", data=raw, content_type="application/json")
    assert response.status_code in (400, 413)
    assert_error(response, response.status_code)
    assert api.total() == 0


def test_body_over_cap_refused_by_content_length(api):
    response = api.post("/jobs", data=b"x" * 70_000, content_type="application/json")
    body = assert_error(response, 413)
    assert body["details"]["maxBodyBytes"] == 65536


def test_body_over_cap_refused_when_chunked(make_app, clock):
    app, _ = make_app(make_queue(clock), QUEUE_MAX_BODY_BYTES=1000)
    client = app.test_client()
    big = b'{"type": "NOOP", "payload": {"x": "' + b"a" * 5000 + b'"}}'
    # No Content-Length; the server marks the stream as terminated (chunked).
    response = client.post(f"{PREFIX}/jobs", input_stream=io.BytesIO(big), content_type="application/json",
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413)
    exact = b'{"type": "NOOP", "payload": {}}'.ljust(1000)  # exactly the cap: accepted
    for chunked in (True, False):
        extra = {"environ_overrides": {"wsgi.input_terminated": True}} if chunked else {}
        response = client.post(f"{PREFIX}/jobs", input_stream=io.BytesIO(exact), content_type="application/json",
                               content_length=None if chunked else len(exact), **extra)
        assert response.status_code == 201, response.get_data(as_text=True)
        over = exact + b" "
        response = client.post(f"{PREFIX}/jobs", input_stream=io.BytesIO(over), content_type="application/json",
                               content_length=None if chunked else len(over), **extra)
        assert_error(response, 413)


def test_the_documented_limits_are_the_ones_submit_checks():
    """The OpenAPI document's ranges come from core.limits, which core.service.submit checks."""
    fields = schemas.JobCreateSchema().fields
    priority = fields["priority"].validators[0]
    assert (priority.min, priority.max) == limits.PRIORITY_RANGE
    assert fields["delay"].validators[0].max == limits.MAX_DELAY_SECONDS
    assert fields["maxRetries"].validators[0].max == limits.MAX_RETRIES_LIMIT
    assert fields["idempotencyKey"].validators[0].max == limits.MAX_IDEMPOTENCY_KEY_CHARS


# -- GET /job/<id> ------------------------------------------------------------
def test_get_job_public_without_payload(api):
    job_id = api.add("EMAIL", {"to": "a@example.com", "subject": "s"}, idempotency_key="secret-key")
    response = api.client.get(f"{PREFIX}/job/{job_id}")
    assert response.status_code == 200
    job = response.get_json()
    assert job["id"] == job_id and job["status"] == "pending"
    assert "payload" not in job and "idempotencyKey" not in job
    assert set(job) == {"id", "type", "status", "retryCount", "maxRetries", "createdAt", "runAt", "processedAt",
                        "completedAt", "progress", "error"}  # status only (web.public)
    assert api.get(f"/job/{job_id}").get_json()["payload"]["to"] == "a@example.com"


def test_get_job_after_run_shows_attempts(api):
    job_id = api.add("EMAIL", {"to": "a@example.com", "subject": "s"})
    api.run_once()
    job = api.get(f"/job/{job_id}").get_json()
    assert job["status"] == "completed" and job["result"] == {"sent": "a@example.com"}
    assert len(job["attempts"]) == 1
    for key in ("createdAt", "processedAt", "completedAt"):
        datetime.strptime(job[key], ISO_Z)  # ISO 8601 UTC with Z


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "x" * 5000, "%00", "ABC%20DEF",
                                    str(uuid.uuid4()).upper()])
def test_get_job_not_found(api, job_id):
    body = assert_error(api.client.get(f"{PREFIX}/job/{job_id}"), 404)
    assert len(body["details"]["id"]) <= 80


# -- GET /jobs ----------------------------------------------------------------
def test_list_jobs_pages_newest_first(api, clock):
    ids = []
    for i in range(5):
        ids.append(api.add("NOOP"))
        clock.advance(1)
    first = api.get("/jobs?limit=2").get_json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    assert first["nextBefore"] == ids[3]
    second = api.get(f"/jobs?limit=2&before={first['nextBefore']}").get_json()
    assert [j["id"] for j in second["jobs"]] == [ids[2], ids[1]]
    third = api.get(f"/jobs?limit=2&before={second['nextBefore']}").get_json()
    assert [j["id"] for j in third["jobs"]] == [ids[0]] and third["nextBefore"] is None
    assert len(api.get("/jobs").get_json()["jobs"]) == 5  # default limit 50


def test_list_jobs_filters(api):
    email = api.add("EMAIL", {"to": "a@example.com", "subject": "s"})
    noop = api.add("NOOP")
    api.post(f"/job/{noop}/cancel")
    assert [j["id"] for j in api.get("/jobs?type=EMAIL").get_json()["jobs"]] == [email]
    assert [j["id"] for j in api.get("/jobs?status=cancelled").get_json()["jobs"]] == [noop]
    assert api.get("/jobs?status=failed&type=EMAIL").get_json() == {"jobs": [], "nextBefore": None}


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=1.5", "limit"), ("limit=abc", "limit"),
    ("limit=%205", "limit"), ("limit=", "limit"), ("status=bogus", "status"), ("status=", "status"),
    ("colour=red", "colour"), ("limit=1&limit=2", "limit"), ("before=nope", "before"),
])
def test_list_jobs_bad_query(api, query, field):
    assert_error(api.get(f"/jobs?{query}"), 400, field)


def test_list_jobs_unknown_cursor_is_404(api):
    assert_error(api.get(f"/jobs?before={uuid.uuid4()}"), 404, "before")


# -- cancel / retry -----------------------------------------------------------
def test_cancel_and_conflict(api):
    job_id = api.add("NOOP")
    response = api.post(f"/job/{job_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    body = assert_error(api.post(f"/job/{job_id}/cancel"), 409)
    assert body["details"]["status"] == "cancelled"
    assert_error(api.post(f"/job/{uuid.uuid4()}/cancel"), 404)
    assert_error(api.post("/job/nope/cancel"), 404)


@pytest.mark.parametrize("path", ["/job/{id}/cancel", "/job/{id}/retry", "/cleanup"])
def test_routes_without_input_refuse_bodies(api, path):
    job_id = api.add("NOOP")
    target = path.format(id=job_id)
    assert_error(api.post(target, json={"reason": "x"}), 400, "reason")
    assert_error(api.post(target, data=b"{", content_type="application/json"), 400, "body")
    assert_error(api.post(target, data=b"[]", content_type="application/json"), 400, "body")
    assert api.get(f"/job/{job_id}").get_json()["status"] == "pending"  # nothing happened
    assert api.post(target, json={}).status_code in (200, 409)


def test_retry_failed_job_and_conflict(api):
    job_id = api.add("BOOM")
    api.run_once()
    assert api.get(f"/job/{job_id}").get_json()["status"] == "failed"
    response = api.post(f"/job/{job_id}/retry")
    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    assert assert_error(api.post(f"/job/{job_id}/retry"), 409)["details"]["operation"] == "retry"
    assert_error(api.post(f"/job/{uuid.uuid4()}/retry"), 404)


def test_cancel_processing_job_conflicts(api, clock):
    job_id = api.add("NOOP")
    assert api.state.runtime.store.claim("test-worker", "token", clock.now()).id == job_id
    assert assert_error(api.post(f"/job/{job_id}/cancel"), 409)["details"]["status"] == "processing"


# -- stats, cleanup, health ---------------------------------------------------
def test_stats(api, clock):
    api.add("NOOP")
    clock.advance(30)
    body = api.get("/stats").get_json()
    assert body["success"] is True
    assert body["stats"]["pending"] == 1 and body["stats"]["total"] == 1
    assert body["stats"]["oldestPendingAge"] == 30 and body["stats"]["oldestProcessingAge"] is None


def test_cleanup_requeues_stuck_jobs(api, clock):
    job_id = api.add("NOOP")
    api.state.runtime.store.claim("dead-worker", "token", clock.now())
    assert api.post("/cleanup").get_json() == {"success": True, "requeuedCount": 0}
    clock.advance(api.state.settings.stuck_after + 1)
    assert api.post("/cleanup").get_json() == {"success": True, "requeuedCount": 1}
    job = api.get(f"/job/{job_id}").get_json()
    assert job["status"] == "pending" and job["retryCount"] == 1


def test_health_public(api, clock):
    response = api.client.get(f"{PREFIX}/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["healthy"] is True and body["initialized"] is True and body["problems"] == []
    assert body["stats"]["total"] == 0
    assert body["worker"]["isProcessing"] is False and body["worker"]["maxRetries"] == 3
    assert body["timestamp"] == clock.now().strftime(ISO_Z)


def test_health_503_when_a_thread_died(api):
    api.state.runtime.start()
    try:
        api.state.runtime.scheduler.stop()
        api.state.runtime.threads[1].join(5)
        response = api.client.get(f"{PREFIX}/health")
        assert response.status_code == 503
        assert any("died" in p for p in response.get_json()["problems"])
    finally:
        api.state.runtime.shutdown(timeout=5)


def test_health_with_running_threads(api):
    api.state.runtime.start()
    try:
        body = api.client.get(f"{PREFIX}/health").get_json()
        assert body["healthy"] is True and body["worker"]["running"] is True
    finally:
        api.state.runtime.shutdown(timeout=5)


# -- a store that cannot be reached -------------------------------------------
@pytest.fixture
def broken_api(tmp_path, clock) -> Api:
    """SQLite pointed at a directory: every store call fails for real."""
    (tmp_path / "not-a-file.db").mkdir()
    app = Flask("broken")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_ADMIN_TOKEN=TOKEN,
                      QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'not-a-file.db'}")
    make_queue(clock).init_app(app)
    return Api(app, app.extensions["queue_service"].queue)


@pytest.mark.parametrize("method, path, body", [
    ("post", "/jobs", {"type": "NOOP", "payload": {}}), ("get", "/jobs", None), ("get", "/stats", None),
    ("post", "/cleanup", None), ("get", f"/job/{uuid.uuid4()}", None), ("post", f"/job/{uuid.uuid4()}/cancel", None),
    ("get", "/media/x.webp", None),
])
def test_store_unavailable_answers_503(broken_api, method, path, body):
    response = getattr(broken_api, method)(path, json=body)
    error = assert_error(response, 503)
    assert "unavailable" in error["error"] or "failed" in error["error"]
    assert "not-a-file" not in response.get_data(as_text=True)  # no paths leak to clients


def test_health_503_when_store_unavailable(broken_api):
    response = broken_api.client.get(f"{PREFIX}/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["healthy"] is False and body["stats"] is None and body["problems"]


# -- auth ---------------------------------------------------------------------
ADMIN_ROUTES = [("post", "/jobs"), ("get", "/jobs"), ("get", "/stats"), ("post", "/cleanup"),
                ("post", "/job/{id}/cancel"), ("post", "/job/{id}/retry"), ("get", "/openapi.json")]


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic " + TOKEN, "Bearer", TOKEN,
                                    "Bearer " + TOKEN + "x", "Bearer s3cret-admin-tokén"])
def test_admin_routes_need_the_token(api, method, path, header):
    job_id = api.add("NOOP")
    headers = {} if header is None else {"Authorization": header}
    response = getattr(api.client, method)(PREFIX + path.format(id=job_id), headers=headers,
                                           json={"type": "NOOP", "payload": {}} if method == "post" else None)
    assert_error(response, 401, "authorization")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.total() == 1 and api.get(f"/job/{job_id}").get_json()["status"] == "pending"


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
def test_admin_routes_403_without_configured_token(make_app, clock, method, path):
    app, _ = make_app(make_queue(clock), QUEUE_DEVELOPMENT=False)
    response = getattr(app.test_client(), method)(PREFIX + path.format(id=uuid.uuid4()), headers=ADMIN)
    assert_error(response, 403)


def test_development_config_opens_admin_routes_without_token(make_app, clock):
    app, _ = make_app(make_queue(clock))  # QUEUE_DEVELOPMENT on, no token
    assert app.test_client().get(f"{PREFIX}/stats").status_code == 200


def test_public_routes_need_no_token(api, clock):
    job_id = api.add("NOOP")
    api.state.runtime.store.put_file("a.webp", b"RIFF....WEBP", "image/webp", clock.now())
    assert api.client.get(f"{PREFIX}/job/{job_id}").status_code == 200
    assert api.client.get(f"{PREFIX}/health").status_code == 200
    assert api.client.get(f"{PREFIX}/media/a.webp").status_code == 200


def test_host_admin_check_replaces_the_token(make_app, clock):
    queue = make_queue(clock)

    @queue.admin_check
    def is_admin(request) -> bool:
        return request.headers.get("X-Role") == "admin"

    app, _ = make_app(queue, QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    client = app.test_client()
    assert client.get(f"{PREFIX}/stats", headers={"X-Role": "admin"}).status_code == 200
    assert_error(client.get(f"{PREFIX}/stats", headers=ADMIN), 401)  # the token no longer counts
    job_id = client.post(f"{PREFIX}/jobs", headers={"X-Role": "admin"},
                         json={"type": "NOOP", "payload": {"a": 1}}).get_json()["id"]
    assert client.get(f"{PREFIX}/job/{job_id}", headers={"X-Role": "admin"}).get_json()["payload"] == {"a": 1}


# -- routing errors, media, JSON provider -------------------------------------
@pytest.mark.parametrize("method, path, allowed", [
    ("delete", "/jobs", {"GET", "POST"}), ("put", "/job/{id}", {"GET"}), ("get", "/job/{id}/cancel", {"POST"}),
    ("post", "/stats", {"GET"}), ("patch", "/health", {"GET"}),
])
def test_method_not_allowed_is_json(api, method, path, allowed):
    response = getattr(api.client, method)(PREFIX + path.format(id=uuid.uuid4()), headers=ADMIN)
    body = assert_error(response, 405)
    assert allowed <= set(body["details"]["allowed"])
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize("path", ["", "/", "/nope", "/job", "/job/", "/jobs/extra", "/job/a/b/c"])
def test_unknown_paths_under_prefix_are_json(api, path):
    assert_error(api.client.get(PREFIX + path), 404)


def test_host_app_keeps_its_own_error_pages(make_app, clock):
    app = Flask("host")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_DEVELOPMENT=True)

    @app.errorhandler(404)
    def host_404(exc):
        return "host page", 404

    @app.get("/only-get")
    def only_get():
        return "ok"

    app2, _ = make_app(make_queue(clock))
    # A host 404 handler registered before init_app still answers outside the prefix.
    queue = make_queue(clock)
    queue.init_app(app, store=app2.extensions["queue_service"].runtime.store)
    client = app.test_client()
    assert client.get("/elsewhere").get_data(as_text=True) == "host page"
    assert client.get(f"{PREFIX}/nowhere").mimetype == "application/json"
    response = client.post("/only-get")  # no host 405 handler: Flask's own page
    assert response.status_code == 405 and response.mimetype == "text/html"
    plain, _ = make_app(make_queue(clock))
    assert plain.test_client().get("/elsewhere").mimetype == "text/html"


def test_custom_prefix(make_app, clock):
    app, _ = make_app(make_queue(clock), QUEUE_URL_PREFIX="/q/")
    client = app.test_client()
    assert client.get("/q/stats").status_code == 200
    assert_error(client.get("/q/unknown"), 404)
    assert client.get("/api/queue/stats").mimetype == "text/html"


def test_media(api, clock):
    api.state.runtime.store.put_file("pic.webp", b"RIFF1234WEBPVP8 ", "image/webp", clock.now())
    response = api.client.get(f"{PREFIX}/media/pic.webp")
    assert response.status_code == 200 and response.data == b"RIFF1234WEBPVP8 "
    assert "immutable" in response.headers["Cache-Control"]
    again = api.client.get(f"{PREFIX}/media/pic.webp", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.headers["ETag"] == response.headers["ETag"]
    store = api.state.runtime.store
    store.get_file = None  # a 304 answers from the stored ETag: the file is not read
    assert api.client.get(f"{PREFIX}/media/pic.webp", headers={"If-None-Match": response.headers["ETag"]}
                          ).status_code == 304
    del store.get_file
    assert_error(api.client.get(f"{PREFIX}/media/missing.webp"), 404)
    assert_error(api.client.get(f"{PREFIX}/media/..%2Fetc"), 404)


class RefusingJSON(DefaultJSONProvider):
    """Stands in for flask-pymongo's provider: the queue must never use app.json."""

    def dumps(self, obj, **kwargs):
        raise AssertionError("the queue used app.json")

    def response(self, *args, **kwargs):
        raise AssertionError("the queue used app.json")


def test_answers_do_not_use_the_host_json_provider(api):
    api.app.json = RefusingJSON(api.app)
    # The test client's json= goes through app.json too: send bytes.
    job_id = json.loads(api.post("/jobs", data=b'{"type": "NOOP", "payload": {}}',
                                 content_type="application/json").data)["id"]
    for response in (api.get(f"/job/{job_id}"), api.get("/jobs"), api.get("/stats"),
                     api.client.get(f"{PREFIX}/health"), api.get("/openapi.json")):
        assert response.status_code == 200 and json.loads(response.data)
    for response in (api.get("/job/nope"), api.client.delete(f"{PREFIX}/jobs"), api.post("/jobs", data=b"{"),
                     api.client.get(f"{PREFIX}/media/none.webp")):
        assert 400 <= response.status_code < 500 and json.loads(response.data)["error"]


# -- OpenAPI ------------------------------------------------------------------
def test_openapi_document(api):
    response = api.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": PREFIX}]
    assert set(doc["paths"]) >= {"/jobs", "/job/{id}", "/job/{id}/cancel", "/job/{id}/retry", "/stats",
                                 "/health", "/cleanup", "/media/{name}", "/openapi.json"}
    components = doc["components"]["schemas"]
    email = components["EMAILPayload"]
    assert set(email["required"]) == {"to", "subject"} and email["properties"]["to"]["format"] == "email"
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {v["$ref"].rsplit("/", 1)[1] for v in body["oneOf"]} == {"JobCreateOne", "JobCreateMany"}
    one = components["JobCreateOne"]
    assert {v["$ref"].rsplit("/", 1)[1] for v in one["oneOf"]} == {"JobCreate_EMAIL", "JobCreate_NOOP",
                                                                      "JobCreate_BOOM"}
    assert components["JobCreateMany"]["properties"]["jobs"]["maxItems"] == 1000
    assert components["JobCreate_EMAIL"]["additionalProperties"] is False
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["paths"]["/stats"]["get"].get("security") is None  # the global bearer requirement


def test_openapi_document_with_builtin_types(make_app):
    app, queue = make_app()
    doc = app.test_client().get(f"{PREFIX}/openapi.json").get_json()
    for name in queue.registry.names():
        assert f"{name}Payload" in doc["components"]["schemas"]


def test_the_list_route_leaves_out_payloads_when_asked_for_a_summary(api):
    api.add("EMAIL", {"to": "a@example.com", "subject": "s"})
    brief = api.get("/jobs?fields=summary").get_json()["jobs"][0]
    assert "payload" not in brief and brief["result"] is None and brief["type"] == "EMAIL"
    assert api.get("/jobs").get_json()["jobs"][0]["payload"]["to"] == "a@example.com"
    assert_error(api.get("/jobs?fields=everything"), 400, "fields")
