"""JobQueue: validation before insertion, wiring into Flask, start/shutdown."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from flask import Flask
from marshmallow import Schema, fields, validate

from queue_service import JobQueue, ManualClock, UnknownJobType, ValidationError
from queue_service.core.errors import ConfigurationError, DuplicateJobType, InvalidTransition, JobNotFound
from queue_service.core.settings import Settings


class EmailLike(Schema):
    to = fields.Email(required=True)
    subject = fields.String(required=True, validate=validate.Length(min=1, max=200))


@pytest.fixture
def app_queue(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("MAIL", schema=EmailLike)(lambda payload, job: "sent")
    app, _ = make_app(queue)
    return app, queue


def total(queue, app):
    return queue.get_queue_stats(app=app)["total"]


@pytest.mark.parametrize("kwargs, field", [
    ({"priority": 1.5}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 10**9}, "priority"),
    ({"delay": -1}, "delay"),
    ({"delay": "soon"}, "delay"),
    ({"delay": float("nan")}, "delay"),
    ({"delay": 5, "run_at": datetime(2031, 1, 1, tzinfo=timezone.utc)}, "delay"),
    ({"run_at": datetime(2031, 1, 1)}, "run_at"),  # naive
    ({"max_retries": -1}, "max_retries"),
    ({"max_retries": 2.0}, "max_retries"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"idempotency_key": 7}, "idempotency_key"),
])
def test_bad_options_name_the_field_and_write_nothing(app_queue, kwargs, field):
    app, queue = app_queue
    with pytest.raises(ValidationError) as err:
        queue.add_job("MAIL", {"to": "a@example.com", "subject": "hi"}, app=app, **kwargs)
    assert field in err.value.messages
    assert total(queue, app) == 0


@pytest.mark.parametrize("payload, field", [
    ({"to": "not-an-address", "subject": "hi"}, "to"),
    ({"subject": "hi"}, "to"),
    ({"to": "a@example.com", "subject": "hi", "extra": 1}, "extra"),
])
def test_invalid_payload_names_the_field_and_writes_nothing(app_queue, payload, field):
    app, queue = app_queue
    with pytest.raises(ValidationError) as err:
        queue.add_job("MAIL", payload, app=app)
    assert field in err.value.messages["payload"]
    assert total(queue, app) == 0


@pytest.mark.parametrize("payload", [None, [], "text", 3])
def test_payload_must_be_an_object(app_queue, payload):
    app, queue = app_queue
    with pytest.raises(ValidationError) as err:
        queue.add_job("MAIL", payload, app=app)
    assert "payload" in err.value.messages
    assert total(queue, app) == 0


def test_unknown_type_refused(app_queue):
    app, queue = app_queue
    with pytest.raises(UnknownJobType) as err:
        queue.add_job("NOPE", {}, app=app)
    assert "type" in err.value.messages and total(queue, app) == 0


def test_schemaless_payload_must_be_json(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("FREE")(lambda payload, job: None)
    app, _ = make_app(queue)
    with pytest.raises(ValidationError) as err:
        queue.add_job("FREE", {"when": datetime.now()}, app=app)
    assert "payload" in err.value.messages and total(queue, app) == 0


def test_delay_run_at_priority_and_idempotency(app_queue, clock):
    app, queue = app_queue
    good = {"to": "a@example.com", "subject": "hi"}
    delayed = queue.add_job("MAIL", good, delay=timedelta(seconds=90), app=app)
    assert queue.get_job(delayed, app=app).run_at == clock.now() + timedelta(seconds=90)
    at = clock.now() + timedelta(hours=2)
    scheduled = queue.add_job("MAIL", good, run_at=at.astimezone(timezone(timedelta(hours=5))), app=app)
    assert queue.get_job(scheduled, app=app).run_at == at
    past = queue.add_job("MAIL", good, run_at=clock.now() - timedelta(days=1), app=app)
    assert queue.get_job(past, app=app).run_at == clock.now()  # never before creation
    first = queue.add_job("MAIL", good, idempotency_key="welcome:42", app=app)
    assert queue.add_job("MAIL", good, idempotency_key="welcome:42", app=app) == first
    high = queue.add_job("MAIL", good, priority=5, app=app)
    worker = app.extensions["queue_service"].runtime.make_worker()
    assert worker.run_once().id == high


def test_cancel_and_retry_rules(app_queue, clock):
    app, queue = app_queue
    good = {"to": "a@example.com", "subject": "hi"}
    job_id = queue.add_job("MAIL", good, app=app)
    assert queue.cancel(job_id, app=app).status == "cancelled"
    with pytest.raises(InvalidTransition):
        queue.cancel(job_id, app=app)
    with pytest.raises(InvalidTransition):
        queue.retry(job_id, app=app)
    with pytest.raises(JobNotFound):
        queue.retry("00000000-0000-4000-8000-000000000000", app=app)
    assert queue.cancel_job(job_id, app=app) is False and queue.retry_job("x", app=app) is False


def test_stats_ages_in_whole_seconds(app_queue, clock):
    app, queue = app_queue
    queue.add_job("MAIL", {"to": "a@example.com", "subject": "hi"}, app=app)
    clock.advance(42.7)
    stats = queue.get_queue_stats(app=app)
    assert stats["pending"] == 1 and stats["oldestPendingAge"] == 42
    assert stats["oldestProcessingAge"] is None


def test_duplicate_and_malformed_type_names_refused():
    queue = JobQueue(builtins=False)
    queue.job_type("ONCE")(lambda p, j: None)
    with pytest.raises(DuplicateJobType):
        queue.job_type("ONCE")(lambda p, j: None)
    with pytest.raises(ValueError):
        queue.job_type("lower.case.path")(lambda p, j: None)


@pytest.mark.parametrize("bad", [-1, 101, True, 2.0, "3"])
def test_a_type_whose_max_retries_add_job_would_refuse_is_refused_at_registration(bad):
    queue = JobQueue(builtins=False)
    with pytest.raises(ValueError, match="max_retries must be an integer from 0 to 100"):
        queue.job_type("X", max_retries=bad)(lambda p, j: None)
    assert "X" not in queue.registry
    for good in (0, 100):
        queue.job_type(f"OK_{good}", max_retries=good)(lambda p, j: None)
    assert queue.registry.get("OK_100").max_retries == 100


def test_two_apps_in_one_process_keep_their_own_jobs(tmp_path):
    queue = JobQueue(builtins=False)
    queue.job_type("X")(lambda p, j: None)
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config.update(QUEUE_AUTOSTART=False, QUEUE_DATABASE_URL=f"sqlite:///{tmp_path}/{name}.db")
        queue.init_app(app)
        apps.append(app)
    queue.add_job("X", {}, app=apps[0])
    with apps[1].app_context():
        queue.add_job("X", {})
        queue.add_job("X", {})
    assert [queue.get_queue_stats(app=a)["total"] for a in apps] == [1, 2]
    with pytest.raises(RuntimeError):
        queue.add_job("X", {})  # two apps and no context: ambiguous, refused


def test_settings_accept_strings_and_python_values():
    from_strings = Settings.from_config({"QUEUE_RETRY_DELAYS": "0.5, 2", "QUEUE_MAX_RETRIES": "4",
                                         "QUEUE_AUTOSTART": "false", "QUEUE_POLL_INTERVAL": "0.25"})
    from_values = Settings.from_config({"QUEUE_RETRY_DELAYS": [0.5, 2], "QUEUE_MAX_RETRIES": 4,
                                        "QUEUE_AUTOSTART": False, "QUEUE_POLL_INTERVAL": 0.25})
    assert from_strings == from_values
    assert from_strings.retry_delays == (0.5, 2.0) and from_strings.autostart is False
    for bad in ({"QUEUE_MAX_RETRIES": "three"}, {"QUEUE_RETRY_DELAYS": "1,-5"},
                {"QUEUE_SQLITE_SYNCHRONOUS": "SOMETIMES"}, {"QUEUE_AUTOSTART": "maybe"},
                {"QUEUE_HEARTBEAT_INTERVAL": 700}):
        with pytest.raises(ConfigurationError):
            Settings.from_config(bad)


def test_mongo_uri_uses_flask_pymongo_client_and_leaves_host_json_alone():
    import mongomock

    app = Flask("host")
    provider = app.json
    app.config.update(QUEUE_AUTOSTART=False, MONGO_URI="mongodb://db.invalid:27017/shop")
    queue = JobQueue(builtins=False, clock=ManualClock())
    queue.job_type("X")(lambda p, j: None)
    with mock.patch("flask_pymongo.wrappers.MongoClient", mongomock.MongoClient):
        queue.init_app(app)
        job_id = queue.add_job("X", {}, app=app)
        state = app.extensions["queue_service"]
        assert state.runtime.store.kind == "mongodb" and state.runtime.store.db.name == "shop"
    assert app.json is provider  # PyMongo(app) would have replaced it
    assert queue.get_job_status(job_id, app=app)["status"] == "pending"


def test_reuses_the_host_apps_pymongo():
    import mongomock
    from flask_pymongo import PyMongo

    app = Flask("host")
    app.config.update(QUEUE_AUTOSTART=False, MONGO_URI="mongodb://db.invalid:27017/shop")
    with mock.patch("flask_pymongo.MongoClient", mongomock.MongoClient):
        mongo = PyMongo(app)
    queue = JobQueue(builtins=False, clock=ManualClock())
    queue.job_type("X")(lambda p, j: None)
    queue.init_app(app, mongo=mongo)
    job_id = queue.add_job("X", {}, app=app)
    assert mongo.db["queue_jobs"].find_one({"_id": job_id})["type"] == "X"


def test_a_pymongo_database_is_used_as_given_not_mistaken_for_pymongo():
    # A pymongo Database answers any attribute (db, cx) with a collection, so it
    # must be told apart from flask_pymongo.PyMongo by its class.
    import pymongo

    from queue_service.web.extension import _database_getter

    database = pymongo.MongoClient("mongodb://db.invalid:27017", connect=False, tz_aware=True)["shop"]
    assert _database_getter(database)() is database  # nothing connected: only picks the database


def test_a_mongomock_database_given_to_init_app_holds_the_jobs():
    import mongomock

    database = mongomock.MongoClient(tz_aware=True)["shop"]
    app = Flask("host")
    app.config.update(QUEUE_AUTOSTART=False)
    queue = JobQueue(builtins=False, clock=ManualClock())
    queue.job_type("X")(lambda p, j: None)
    queue.init_app(app, mongo=database)
    job_id = queue.add_job("X", {}, app=app)
    assert database["queue_jobs"].find_one({"_id": job_id})["type"] == "X"


def test_mongo_given_something_else_is_refused_at_init_app():
    app = Flask("host")
    app.config.update(QUEUE_AUTOSTART=False)
    with pytest.raises(ConfigurationError, match="not str"):
        JobQueue(builtins=False).init_app(app, mongo="mongodb://x/y")
    assert "queue_service" not in app.extensions


def test_start_is_idempotent_and_shutdown_hands_back_the_in_flight_job(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    running, release = threading.Event(), threading.Event()

    @queue.job_type("BLOCK")
    def block(payload, job):
        running.set()
        release.wait(10)
        return "late"

    app, _ = make_app(queue)
    state = app.extensions["queue_service"]
    job_id = queue.add_job("BLOCK", {}, app=app)
    assert queue.start(app=app) is True
    assert queue.start(app=app) is False
    assert sorted(t.name for t in state.runtime.threads) == ["queue-scheduler", "queue-worker"]
    try:
        assert running.wait(10)
        assert queue.shutdown(timeout=0.05, app=app) is False  # had to hand a job back
        job = queue.get_job_status(job_id, app=app)
        assert job["status"] == "pending" and job["retryCount"] == 0
        assert job["attempts"][-1]["outcome"] == "released"
    finally:
        release.set()
    for thread in state.runtime.threads:
        thread.join(5)
    # the handler finished after the hand-back: its late result is not recorded
    assert queue.get_job_status(job_id, app=app)["status"] == "pending"


def test_autostart_on_first_request_outside_gunicorn(tmp_path):
    queue = JobQueue(builtins=False)
    app = Flask("dev")
    app.config.update(QUEUE_DATABASE_URL=f"sqlite:///{tmp_path}/dev.db", QUEUE_POLL_INTERVAL=0.05)
    queue.init_app(app)
    state = app.extensions["queue_service"]
    assert not state.runtime.running
    try:
        app.test_client().get("/anything")
        assert state.runtime.running
    finally:
        queue.shutdown(timeout=5, app=app)
    assert not state.runtime.running


def test_health_check_shape(app_queue):
    app, queue = app_queue
    health = queue.health_check(app=app)
    assert health["healthy"] is True and health["initialized"] is True
    assert set(health["worker"]) >= {"isProcessing", "processingJobId", "maxRetries"}
    assert health["stats"]["total"] == 0 and health["timestamp"].endswith("Z")
