"""Testing your own job types: QUEUE_EAGER, run_pending, queue_service.testing,
async handlers. Real SQLite files, a manual clock (no sleeping)."""
from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import pytest
from flask import current_app
from marshmallow import Schema, fields

from queue_service import ConfigurationError, JobQueue, PermanentJobError, UnknownJobType
from queue_service.pytest_plugin import make_queue_app  # noqa: F401  (a fixture, as a user would)
from queue_service.testing import TEST_ADMIN_TOKEN, make_test_app, test_config


class NumberSchema(Schema):
    n = fields.Integer(required=True, strict=True)


@pytest.fixture
def flaky(clock):
    """A queue with FLAKY (fails ``fail_times`` times, then doubles n)."""
    queue = JobQueue(clock=clock, builtins=False)
    behaviour = {"fail_times": 0, "error": RuntimeError("boom"), "attempts": []}

    @queue.job_type("FLAKY", schema=NumberSchema, max_retries=3)
    def flaky_handler(payload, job):
        behaviour["attempts"].append(job.attempt)
        if behaviour["fail_times"] > 0:
            behaviour["fail_times"] -= 1
            raise behaviour["error"]
        return {"double": payload["n"] * 2}

    return queue, behaviour


def outcomes(queue, job_id, app):
    return [a["outcome"] for a in queue.get_job_status(job_id, app=app)["attempts"]]


# -- eager ---------------------------------------------------------------------
def test_eager_success_runs_in_add_job(make_app, flaky):
    queue, behaviour = flaky
    app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("FLAKY", {"n": 21}, app=app)
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["result"] == {"double": 42}
    assert behaviour["attempts"] == [1]
    assert app.extensions["queue_service"].runtime.threads == []  # eager: no threads


def test_eager_retries_then_success_with_honest_attempts(make_app, flaky, clock):
    queue, behaviour = flaky
    behaviour["fail_times"] = 2
    app, _ = make_app(queue, QUEUE_EAGER=True, QUEUE_RETRY_DELAYS=[1, 5, 15])
    before = clock.now()
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    job = queue.get_job(job_id, app=app)
    assert job.status.value == "completed" and job.retry_count == 2
    assert outcomes(queue, job_id, app) == ["retry", "retry", "completed"]
    assert behaviour["attempts"] == [1, 2, 3]
    # Retries were not waited for, but the record keeps their delays: each
    # attempt starts where the previous one said the next try would be.
    starts = [a["startedAt"] for a in job.attempts]
    assert starts[1] - job.attempts[0]["endedAt"] == timedelta(seconds=1)
    assert starts[2] - job.attempts[1]["endedAt"] == timedelta(seconds=5)
    assert clock.now() == before  # the app's clock did not move


def test_eager_permanent_failure(make_app, flaky):
    queue, behaviour = flaky
    behaviour.update(fail_times=1, error=PermanentJobError("bad photo"))
    app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and "bad photo" in job["error"]
    assert outcomes(queue, job_id, app) == ["failed"]


def test_eager_retries_exhausted(make_app, flaky):
    queue, behaviour = flaky
    behaviour["fail_times"] = 99
    app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app, max_retries=2)
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["error"] == "RuntimeError: boom"
    assert outcomes(queue, job_id, app) == ["retry", "retry", "failed"]


def test_eager_raise_reraises_after_recording(make_app, flaky):
    queue, behaviour = flaky
    behaviour.update(fail_times=99, error=KeyError("photoId"))
    app, _ = make_app(queue, QUEUE_EAGER=True, QUEUE_EAGER_RAISE=True)
    with pytest.raises(KeyError, match="photoId"):
        queue.add_job("FLAKY", {"n": 1}, app=app, max_retries=1)
    [job] = queue.list_jobs(app=app)
    assert job.status.value == "failed" and len(job.attempts) == 2  # recorded as in production
    behaviour["fail_times"] = 1  # a flaky job that recovers raises nothing
    job_id = queue.add_job("FLAKY", {"n": 2}, app=app)
    assert queue.get_job_status(job_id, app=app)["status"] == "completed"


def test_eager_validates_before_writing(make_app, flaky):
    queue, _ = flaky
    app, _ = make_app(queue, QUEUE_EAGER=True)
    with pytest.raises(Exception) as err:
        queue.add_job("FLAKY", {"n": "x"}, app=app)
    assert "payload" in err.value.messages and queue.list_jobs(app=app) == []


def test_eager_runs_a_delayed_job_and_a_manual_retry(make_app, flaky):
    queue, behaviour = flaky
    behaviour["fail_times"] = 1
    app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app, delay=3600, max_retries=0)
    assert queue.get_job_status(job_id, app=app)["status"] == "failed"
    assert queue.retry(job_id, app=app).status.value == "completed"


def test_eager_refuses_autostart():
    with pytest.raises(ConfigurationError, match="QUEUE_EAGER"):
        make_test_app(JobQueue(builtins=False), None, QUEUE_EAGER=True, QUEUE_AUTOSTART=True)


# -- run_pending ---------------------------------------------------------------
def test_run_pending_runs_what_is_runnable(make_app, flaky):
    queue, behaviour = flaky
    app, _ = make_app(queue)
    ids = [queue.add_job("FLAKY", {"n": n}, app=app) for n in range(3)]
    assert queue.run_pending(app) == 3
    assert {queue.get_job_status(i, app=app)["status"] for i in ids} == {"completed"}
    assert queue.run_pending(app) == 0


def test_run_pending_delayed_job_with_and_without_include_delayed(make_app, flaky):
    queue, behaviour = flaky
    app, _ = make_app(queue)
    now_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    later_id = queue.add_job("FLAKY", {"n": 2}, app=app, delay=600)
    assert queue.run_pending(app) == 1
    assert queue.get_job_status(later_id, app=app)["status"] == "pending"
    assert queue.run_pending(app, include_delayed=True) == 1
    assert queue.get_job_status(later_id, app=app)["status"] == "completed"
    assert queue.get_job_status(now_id, app=app)["status"] == "completed"


def test_run_pending_retries_only_with_include_delayed(make_app, flaky):
    queue, behaviour = flaky
    behaviour["fail_times"] = 2
    app, _ = make_app(queue)
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    assert queue.run_pending(app) == 1  # failed once; its retry waits 1 s
    assert queue.get_job_status(job_id, app=app)["status"] == "pending"
    assert queue.run_pending(app, include_delayed=True) == 2
    assert outcomes(queue, job_id, app) == ["retry", "retry", "completed"]


# -- async handlers ------------------------------------------------------------
def test_async_handler_runs_to_completion(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("ASYNC")
    async def handler(payload, job):
        await asyncio.sleep(0)
        job.progress(step=1)
        return {"app": current_app.name, "attempt": job.attempt}

    app, _ = make_app(queue)
    job_id = queue.add_job("ASYNC", {}, app=app)
    assert queue.run_pending(app) == 1
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["result"] == {"app": "test_app", "attempt": 1}


def test_async_handler_eager_from_inside_an_event_loop(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("ASYNC")
    async def handler(payload, job):
        await asyncio.sleep(0)
        return current_app.name

    app, _ = make_app(queue, QUEUE_EAGER=True)

    async def main():
        return queue.add_job("ASYNC", {}, app=app)  # an async test calling add_job

    job_id = asyncio.run(main())
    assert queue.get_job_status(job_id, app=app)["result"] == "test_app"


def test_async_handler_failure_retries(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("ASYNC", max_retries=1)
    async def handler(payload, job):
        raise ValueError(f"attempt {job.attempt}")

    app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("ASYNC", {}, app=app)
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["error"] == "ValueError: attempt 2"


# -- errors that teach ---------------------------------------------------------
def test_unknown_job_type_lists_the_registered_types(make_app, flaky):
    queue, _ = flaky
    queue.job_type("REPORT")(lambda payload, job: None)
    app, _ = make_app(queue)
    with pytest.raises(UnknownJobType) as err:
        queue.add_job("FLAKEY", {}, app=app)
    assert err.value.registered == ["FLAKY", "REPORT"]
    assert "Registered types: FLAKY, REPORT." in err.value.messages["type"][0]
    response = app.test_client().post("/api/queue/jobs", json={"type": "FLAKEY", "payload": {}})
    assert response.status_code == 400
    assert "FLAKY, REPORT" in response.get_json()["details"]["type"][0]


# -- queue_service.testing, the way a user would -------------------------------
def make_user_queue():
    """What a user's myapp/jobs.py holds."""
    queue = JobQueue()
    sent = []

    @queue.job_type("WELCOME_EMAIL", max_retries=2)
    def welcome(payload, job):
        if payload.get("fail"):
            raise ConnectionError("smtp down")
        sent.append(payload["to"])
        return {"sent": True}

    return queue, sent


def test_make_test_app_with_run_pending(tmp_path):
    queue, sent = make_user_queue()
    app = make_test_app(queue, tmp_path)
    assert app.extensions["queue_service"].runtime.threads == []
    job_id = queue.add_job("WELCOME_EMAIL", {"to": "a@example.com"}, app=app)
    assert queue.run_pending(app) == 1
    assert sent == ["a@example.com"]
    assert queue.get_job_status(job_id, app=app)["status"] == "completed"
    assert (tmp_path / "queue.db").exists()
    headers = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
    assert app.test_client().get("/api/queue/stats", headers=headers).get_json()["stats"]["completed"] == 1


def test_make_test_app_eager_and_test_config(tmp_path):
    queue, sent = make_user_queue()
    app = make_test_app(queue, tmp_path, QUEUE_EAGER=True)
    job_id = queue.add_job("WELCOME_EMAIL", {"to": "b@example.com", "fail": True}, app=app)
    assert queue.get_job_status(job_id, app=app)["error"] == "ConnectionError: smtp down"
    config = test_config(tmp_path, QUEUE_EAGER=True)
    assert config["QUEUE_DATABASE_URL"].endswith("queue.db") and "QUEUE_AUTOSTART" not in config


def test_make_queue_app_fixture(make_queue_app):
    queue, sent = make_user_queue()
    make_queue_app(queue)
    job_id = queue.add_job("WELCOME_EMAIL", {"to": "c@example.com"})  # no app=: the context is pushed
    assert queue.run_pending() == 1 and sent == ["c@example.com"]
    assert queue.get_job_status(job_id)["status"] == "completed"


def test_testing_module_does_not_import_pytest():
    import subprocess

    code = "import sys, queue_service.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("uri", ["mongodb://127.0.0.1:1", "mongodb+srv://u:p@cluster0.example.mongodb.net/?retryWrites=true"])
def test_mongo_uri_without_a_database_name_is_refused_at_init_app(uri):
    with pytest.raises(ConfigurationError, match="MONGO_URI names no database"):
        make_test_app(JobQueue(builtins=False), None, MONGO_URI=uri)


def test_run_pending_and_eager_cover_every_named_queue(make_app, flaky):
    queue, behaviour = flaky
    app, _ = make_app(queue, QUEUE_WORKER_QUEUES="default")  # the thread's worker would take "default" only
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app, queue="reports")
    assert queue.run_pending(app) == 1
    assert queue.get_job_status(job_id, app=app)["status"] == "completed"
    eager_app, _ = make_app(queue, QUEUE_EAGER=True)
    job_id = queue.add_job("FLAKY", {"n": 2}, app=eager_app, queue="reports")
    assert queue.get_job_status(job_id, app=eager_app)["status"] == "completed"
