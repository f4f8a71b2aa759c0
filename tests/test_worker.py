"""The worker, one step at a time, with a manual clock (no sleeping)."""
from __future__ import annotations

import os
import platform
import threading
from datetime import timedelta

import pytest
from flask import current_app
from marshmallow import Schema, fields

from queue_service import JobQueue, JobStatus, PermanentJobError
from queue_service.core.jobs import Job, new_job_id
from queue_service.core.worker import Worker


class NumberSchema(Schema):
    n = fields.Integer(required=True, strict=True)


@pytest.fixture
def setup(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    calls: list[dict] = []
    behaviour: dict = {"fail_times": 0, "error": RuntimeError("boom")}

    @queue.job_type("FLAKY", schema=NumberSchema)
    def flaky(payload, job):
        calls.append({"payload": payload, "attempt": job.attempt, "app": current_app.name})
        if behaviour["fail_times"] > 0:
            behaviour["fail_times"] -= 1
            raise behaviour["error"]
        return {"double": payload["n"] * 2}

    app, _ = make_app(queue)
    state = app.extensions["queue_service"]
    worker = state.runtime.make_worker()
    return app, queue, state, worker, calls, behaviour


def test_runs_handler_in_app_context_and_records_result(setup):
    app, queue, state, worker, calls, _ = setup
    job_id = queue.add_job("FLAKY", {"n": 21}, app=app)
    assert worker.run_once().id == job_id
    assert calls == [{"payload": {"n": 21}, "attempt": 1, "app": app.name}]
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["result"] == {"double": 42}
    assert job["attempts"][0]["outcome"] == "completed" and job["attempts"][0]["worker"] == worker.worker_id
    assert worker.run_once() is None


def test_retries_after_1_5_15_seconds_then_succeeds(setup, clock):
    app, queue, state, worker, calls, behaviour = setup
    behaviour["fail_times"] = 3
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    for expected_delay in (1, 5, 15):
        assert worker.run_once().id == job_id
        clock.advance(expected_delay - 0.001)
        assert worker.run_once() is None, "claimed before its retry delay"
        clock.advance(0.001)
    assert worker.run_once().id == job_id
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["retryCount"] == 3
    assert [a.get("nextDelaySeconds") for a in job["attempts"]] == [1, 5, 15, None]
    assert [a["outcome"] for a in job["attempts"]] == ["retry", "retry", "retry", "completed"]
    assert job["attempts"][0]["error"] == "RuntimeError: boom"
    assert [c["attempt"] for c in calls] == [1, 2, 3, 4]


def test_retries_exhausted_fail_after_one_plus_max_retries_runs(setup, clock):
    app, queue, state, worker, calls, behaviour = setup
    behaviour["fail_times"] = 100
    job_id = queue.add_job("FLAKY", {"n": 1}, max_retries=2, app=app)
    for _ in range(10):
        worker.run_once()
        clock.advance(60)
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["retryCount"] == 2 and len(calls) == 3
    assert job["error"] == "RuntimeError: boom" and job["attempts"][-1]["outcome"] == "failed"


def test_configured_delays_per_type(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("SLOWRETRY", max_retries=5, retry_delays=[2, 4])
    def always_fails(payload, job):
        raise ValueError("nope")

    app, _ = make_app(queue)
    worker = app.extensions["queue_service"].runtime.make_worker()
    job_id = queue.add_job("SLOWRETRY", {}, app=app)
    for _ in range(3):
        worker.run_once()
        clock.advance(4)
    delays = [a["nextDelaySeconds"] for a in queue.get_job_status(job_id, app=app)["attempts"]]
    assert delays == [2, 4, 4]  # the last delay repeats


def test_app_wide_retry_settings(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("BAD")(lambda payload, job: 1 / 0)
    app, _ = make_app(queue, QUEUE_MAX_RETRIES="1", QUEUE_RETRY_DELAYS="0.5")
    worker = app.extensions["queue_service"].runtime.make_worker()
    job_id = queue.add_job("BAD", {}, app=app)
    worker.run_once()
    clock.advance(0.5)
    worker.run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["maxRetries"] == 1
    assert job["attempts"][0]["nextDelaySeconds"] == 0.5


def test_permanent_error_fails_at_once(setup):
    app, queue, state, worker, calls, behaviour = setup
    behaviour.update(fail_times=1, error=PermanentJobError("address rejected"))
    job_id = queue.add_job("FLAKY", {"n": 1}, app=app)
    worker.run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["retryCount"] == 0
    assert job["error"] == "PermanentJobError: address rejected"


def test_payload_that_no_longer_validates_fails_at_once(setup, clock):
    app, queue, state, worker, calls, _ = setup
    now = clock.now()
    state.runtime.store.insert(Job(id=new_job_id(), type="FLAKY", payload={"n": "not a number"},
                           created_at=now, run_at=now))
    job = worker.run_once()
    got = state.runtime.store.get(job.id)
    assert got.status is JobStatus.FAILED and "no longer validates" in got.error and calls == []


def test_unknown_type_in_this_process_is_retried(setup, clock):
    app, queue, state, worker, calls, _ = setup
    now = clock.now()
    state.runtime.store.insert(Job(id=new_job_id(), type="FROM_A_NEWER_DEPLOY", payload={},
                           created_at=now, run_at=now))
    job = worker.run_once()
    got = state.runtime.store.get(job.id)
    assert got.status is JobStatus.PENDING and got.retry_count == 1 and "no handler" in got.error


def test_non_json_result_fails_without_retry(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("SETS")(lambda payload, job: {1, 2})
    app, _ = make_app(queue)
    job_id = queue.add_job("SETS", {}, app=app)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and "not JSON" in job["error"] and job["retryCount"] == 0


def test_late_outcome_after_takeover_is_not_recorded(make_app, clock):
    """The handler outlives its lease; another worker takes over and finishes.
    The first worker's completion must change nothing."""
    queue = JobQueue(clock=clock, builtins=False)
    state_holder = {}

    @queue.job_type("SLOW")
    def slow(payload, job):
        if job.attempt == 1:  # simulate a stall long enough to be presumed dead
            clock.advance(601)
            state_holder["app"].extensions["queue_service"].queue.cleanup_stuck_jobs(app=state_holder["app"])
            taker = state_holder["app"].extensions["queue_service"].runtime.make_worker()
            assert taker.run_once() is not None  # second attempt completes inside
            return "first"
        return "second"

    app, _ = make_app(queue)
    state_holder["app"] = app
    job_id = queue.add_job("SLOW", {}, app=app)
    app.extensions["queue_service"].runtime.make_worker().run_once()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["result"] == "second" and job["retryCount"] == 1
    assert [a["outcome"] for a in job["attempts"]] == ["lost", "completed"]


def test_progress_and_heartbeat_if_due(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    seen = {}

    @queue.job_type("STEPS")
    def steps(payload, job):
        assert job.progress(done=1, total=2)
        seen["mid"] = queue.get_job_status(job.id, app=app)
        clock.advance(10)
        assert not worker.heartbeat_if_due(clock.now())  # 10 s < 30 s
        clock.advance(25)
        assert worker.heartbeat_if_due(clock.now())
        seen["heartbeat"] = queue.get_job(job.id, app=app).heartbeat_at
        return None

    app, _ = make_app(queue)
    worker = app.extensions["queue_service"].runtime.make_worker()
    queue.add_job("STEPS", {}, app=app)
    worker.run_once()
    assert seen["mid"]["progress"] == {"done": 1, "total": 2} and seen["mid"]["status"] == "processing"
    assert seen["heartbeat"] == clock.now()
    assert not worker.heartbeat_if_due(clock.now())  # nothing in flight


def test_claim_next_holds_the_following_job_until_the_next_step(setup, clock):
    app, queue, state, worker, calls, _ = setup
    a = queue.add_job("FLAKY", {"n": 1}, app=app)
    b = queue.add_job("FLAKY", {"n": 2}, app=app)
    assert worker.run_once(claim_next=True).id == a
    held = queue.get_job(b, app=app)
    assert held.status is JobStatus.PROCESSING and held.worker_id == worker.worker_id
    assert worker.current.id == b and [c["payload"]["n"] for c in calls] == [1]
    clock.advance(31)
    assert worker.heartbeat_if_due(clock.now())  # the scheduler renews the held claim
    assert queue.get_job(b, app=app).heartbeat_at == clock.now()
    assert worker.run_once(claim_next=True).id == b and worker.current is None
    assert [c["payload"]["n"] for c in calls] == [1, 2]
    assert queue.get_job_status(b, app=app)["result"] == {"double": 4}
    assert worker.run_once(claim_next=True) is None


def test_without_claim_next_a_step_holds_nothing(setup):
    app, queue, state, worker, calls, _ = setup
    queue.add_job("FLAKY", {"n": 1}, app=app)
    b = queue.add_job("FLAKY", {"n": 2}, app=app)
    worker.run_once()
    assert worker.current is None and queue.get_job(b, app=app).status is JobStatus.PENDING


def test_a_failed_attempt_claims_nothing_ahead(setup, clock):
    app, queue, state, worker, calls, behaviour = setup
    behaviour["fail_times"] = 1
    queue.add_job("FLAKY", {"n": 1}, app=app)
    b = queue.add_job("FLAKY", {"n": 2}, app=app)
    worker.run_once(claim_next=True)
    assert worker.current is None and queue.get_job(b, app=app).status is JobStatus.PENDING


def test_stopping_hands_back_the_job_claimed_for_the_next_step(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    ran: list[int] = []
    queue.job_type("STEP")(lambda payload, job: ran.append(payload["n"]))
    app, _ = make_app(queue)
    state = app.extensions["queue_service"]
    worker = state.runtime.make_worker()

    @queue.on_complete("STEP")
    def stop_after_first(job):  # runs after the next job was claimed with this one's completion
        worker.stop()

    queue.add_job("STEP", {"n": 1}, app=app)
    b = queue.add_job("STEP", {"n": 2}, app=app)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and ran == [1] and worker.current is None
    back = queue.get_job(b, app=app)
    assert back.status is JobStatus.PENDING and back.retry_count == 0 and back.lock_token is None
    assert back.attempts[-1]["outcome"] == "released"
    assert back.attempts[-1]["error"] == "worker stopped before the job started"


def test_worker_id_is_host_pid_random_and_new_each_time(make_app):
    app, queue = make_app()
    state = app.extensions["queue_service"]
    a, b = state.runtime.make_worker().worker_id, state.runtime.make_worker().worker_id
    host, pid, rand = a.split(":")
    assert int(pid) > 0 and len(rand) == 6 and a != b


class FlakyStore:
    """Delegates to a real store but fails the first N claims."""

    def __init__(self, store, failures):
        self._store, self.failures, self.claims = store, failures, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def claim(self, *args):
        self.claims += 1
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("store hiccup")
        return self._store.claim(*args)


def test_worker_thread_survives_errors_and_stops_on_request(make_app, clock, app_store):
    app, queue = make_app(QUEUE_POLL_INTERVAL=0.01)
    flaky = FlakyStore(app_store, failures=2)
    done = threading.Event()
    queue.job_type("PING")(lambda payload, job: done.set())
    worker = Worker(lambda: flaky, queue.registry, clock, app, queue.state(app).settings)
    queue.add_job("PING", {}, app=app)
    thread = threading.Thread(target=worker.run_forever, name="queue-worker", daemon=True)
    thread.start()
    try:
        assert done.wait(10), "worker thread died or never ran the job"
    finally:
        worker.stop()
        thread.join(5)
    assert not thread.is_alive() and flaky.claims >= 3


def test_add_job_wakes_the_local_worker(make_app):
    app, queue = make_app()
    state = app.extensions["queue_service"]
    state.runtime.worker = state.runtime.make_worker()
    assert not state.runtime.worker.wake.is_set()
    queue.job_type("WAKE")(lambda payload, job: None)
    queue.add_job("WAKE", {}, app=app)
    assert state.runtime.worker.wake.is_set()
    state.runtime.worker.wake.clear()
    queue.add_job("WAKE", {}, delay=60, app=app)  # not due: nothing to wake for
    assert not state.runtime.worker.wake.is_set()
    state.runtime.worker = None


def test_full_gc_after_long_jobs_and_when_idle(make_app, clock, monkeypatch):
    import queue_service.core.memory as memory

    app, queue = make_app()
    queue.job_type("QUICK")(lambda payload, job: None)
    worker = app.extensions["queue_service"].runtime.make_worker()
    collections, freezes, trims = [], [], []
    monkeypatch.setattr(memory.gc, "collect", lambda *a: collections.append(a))
    monkeypatch.setattr(memory.gc, "freeze", lambda: freezes.append(len(collections)))
    monkeypatch.setattr(memory, "_frozen_pid", None)
    monkeypatch.setattr(memory, "trim_heap", lambda: trims.append(len(collections)))
    queue.add_job("QUICK", {}, app=app)
    worker.run_once()
    assert collections == []  # a quick job in a burst: no 5-20 ms full collection yet
    monkeypatch.setattr(memory, "GC_AFTER_JOB_SECONDS", 0.0)
    queue.add_job("QUICK", {}, app=app)
    worker.run_once()
    assert len(collections) == 1  # a "long" job pays for its own collection
    assert freezes == [1]  # what survived the first collection is set aside, once per process
    assert trims == [1]  # and the long job's freed heap goes back to the OS
    monkeypatch.setattr(memory, "GC_AFTER_JOB_SECONDS", 3600.0)
    queue.add_job("QUICK", {}, app=app)
    thread = threading.Thread(target=worker.run_forever, name="queue-worker", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if len(collections) >= 2:
                break
            threading.Event().wait(0.01)
    finally:
        worker.stop()
        thread.join(5)
    assert len(collections) == 2  # collected once the queue ran dry
    assert freezes == [1] and trims == [1]  # no trim after small jobs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"),
                    reason="malloc_trim is glibc's")
def test_trim_heap_gives_freed_heap_pages_back_to_the_os():
    from queue_service.core.memory import trim_heap

    blocks = [bytes(4000 + i % 7) for i in range(20_000)]  # ~80 MB of malloc heap, not mmap
    pins = blocks[::50] + [blocks[-1]]  # live blocks all along it: the heap cannot just shrink
    del blocks
    held = _rss_bytes()
    assert trim_heap()
    released = held - _rss_bytes()
    assert released > 30 * 2**20, f"only {released / 2**20:.1f} MiB went back"
    assert len(pins) == 401
