"""CLEANUP on both stores, time moved by the manual clock."""
from __future__ import annotations

from datetime import timedelta

import pytest

from queue_service import JobQueue
from queue_service.core.errors import ValidationError
from queue_service.handlers.cleanup import parse_age


@pytest.fixture
def setup(make_app, clock):
    queue = JobQueue(clock=clock)

    @queue.job_type("NOOP")
    def noop(payload, job):
        if payload.get("fail"):
            from queue_service import PermanentJobError
            raise PermanentJobError("asked to fail")
        return {"ok": True}

    app, _ = make_app(queue)
    return app, queue, app.extensions["queue_service"]


def run_all(state, limit=50):
    worker = state.runtime.make_worker()
    for _ in range(limit):
        if worker.run_once() is None:
            return


def cleanup(app, queue, state, payload):
    job_id = queue.add_job("CLEANUP", payload, app=app)
    run_all(state)
    return queue.get_job_status(job_id, app=app)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("90s", 90)])
def test_parse_age(text, seconds):
    assert parse_age(text) == timedelta(seconds=seconds)


def test_purge_jobs_deletes_finished_jobs_older_than_the_age(setup, clock):
    app, queue, state = setup
    old_done = queue.add_job("NOOP", {}, app=app)
    old_failed = queue.add_job("NOOP", {"fail": True}, app=app)
    old_cancelled = queue.add_job("NOOP", {}, app=app, delay=10)
    queue.cancel_job(old_cancelled, app=app)
    run_all(state)
    clock.advance(3 * 3600)
    recent = queue.add_job("NOOP", {}, app=app)
    run_all(state)
    waiting = queue.add_job("NOOP", {}, app=app, delay=100_000)  # pending, old by the end: kept
    clock.advance(3600)
    job = cleanup(app, queue, state, {"task": "purge_jobs", "olderThan": "2h"})
    assert job["status"] == "completed", job["error"]
    assert job["result"]["deleted"] == 3 and job["result"]["task"] == "purge_jobs"
    assert job["result"]["cutoff"] == "2030-01-01T02:00:00Z"
    for gone in (old_done, old_failed, old_cancelled):
        assert queue.get_job_status(gone, app=app) is None
    assert queue.get_job_status(recent, app=app)["status"] == "completed"
    assert queue.get_job_status(waiting, app=app)["status"] == "pending"
    # Idempotent: running it again finds nothing more to delete.
    assert cleanup(app, queue, state, {"task": "purge_jobs", "olderThan": "2h"})["result"]["deleted"] == 0


def test_delete_old_files_deletes_media_older_than_the_age(setup, clock):
    app, queue, state = setup
    state.runtime.store.put_file("old.webp", b"old", "image/webp", clock.now())
    clock.advance(86400 * 2)
    state.runtime.store.put_file("new.webp", b"new", "image/webp", clock.now())
    clock.advance(60)
    job = cleanup(app, queue, state, {"task": "delete_old_files", "olderThan": "1d"})
    assert job["status"] == "completed" and job["result"]["deleted"] == 1
    assert state.runtime.store.get_file("old.webp") is None
    assert state.runtime.store.get_file("new.webp").data == b"new"


@pytest.mark.parametrize("payload, field", [
    ({"olderThan": "30d"}, "task"),
    ({"task": "drop_database", "olderThan": "30d"}, "task"),
    ({"task": "purge_jobs"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "30"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "30w"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "-5d"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "0d"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "1.5h"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "99999d"}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": 30}, "olderThan"),
    ({"task": "purge_jobs", "olderThan": "30d", "extra": True}, "extra"),
])
def test_malformed_payload_is_a_validation_error(setup, payload, field):
    app, queue, _ = setup
    with pytest.raises(ValidationError) as info:
        queue.add_job("CLEANUP", payload, app=app)
    assert field in info.value.messages["payload"]
    assert queue.get_queue_stats(app=app)["total"] == 0
