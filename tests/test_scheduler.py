"""The scheduler, one tick at a time, with a manual clock."""
from __future__ import annotations

import threading

import pytest

from queue_service import JobQueue


@pytest.fixture
def env(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)
    hold = threading.Event()
    queue.job_type("NOOP")(lambda payload, job: "ok")
    app, _ = make_app(queue)
    state = app.extensions["queue_service"]
    return app, queue, state, hold


def abandon_claim(state, clock):
    """Claim a job as a worker that then dies (never reports back)."""
    return state.runtime.store.claim("dead:1:000000", "token-of-the-dead", clock.now())


def test_first_tick_sweeps_then_waits_for_the_interval(env, clock):
    app, queue, state, _ = env
    scheduler = state.runtime.make_scheduler(None)
    assert scheduler.tick() is not None  # start-up sweep
    clock.advance(299)
    assert scheduler.tick() is None
    clock.advance(1)
    assert scheduler.tick() is not None


def test_stalled_scheduler_sweeps_once_and_skips_missed_ticks(env, clock):
    app, queue, state, _ = env
    scheduler = state.runtime.make_scheduler(None)
    scheduler.tick()
    clock.advance(3600)  # the dyno slept for an hour
    assert scheduler.tick() is not None
    assert scheduler.tick() is None  # not 12 catch-up sweeps
    assert scheduler.seconds_until_next_tick() == 300


def test_stuck_job_requeued_after_ten_minutes_and_counts_as_retry(env, clock):
    app, queue, state, _ = env
    scheduler = state.runtime.make_scheduler(None)
    scheduler.tick()
    job_id = queue.add_job("NOOP", {}, app=app)
    abandon_claim(state, clock)
    clock.advance(599)
    scheduler.next_sweep_at = clock.now()
    assert scheduler.tick().requeued == 0
    clock.advance(2)
    scheduler.next_sweep_at = clock.now()
    assert scheduler.tick().requeued == 1
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "pending" and job["retryCount"] == 1
    assert job["attempts"][0]["outcome"] == "lost" and "worker lost" in job["attempts"][0]["error"]
    assert state.runtime.make_worker().run_once().id == job_id
    assert queue.get_job_status(job_id, app=app)["status"] == "completed"


def test_lost_worker_past_max_retries_fails_the_job(env, clock):
    app, queue, state, _ = env
    job_id = queue.add_job("NOOP", {}, max_retries=1, app=app)
    scheduler = state.runtime.make_scheduler(None)
    for _ in range(2):
        abandon_claim(state, clock)
        clock.advance(601)
        scheduler.next_sweep_at = None
        scheduler.tick()
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "failed" and job["error"].startswith("worker lost")
    assert job["retryCount"] == 1


def test_heartbeats_keep_a_long_job_from_being_requeued(env, clock):
    app, queue, state, _ = env
    seen = {}

    @queue.job_type("LONG")
    def long_job(payload, job):
        # 20 minutes of work; the scheduler ticks every 15 s of it.
        for _ in range(80):
            clock.advance(15)
            scheduler.tick()
        seen["status"] = queue.get_job_status(job.id, app=app)["status"]
        return "done"

    worker = state.runtime.make_worker()
    scheduler = state.runtime.make_scheduler(worker)
    job_id = queue.add_job("LONG", {}, app=app)
    worker.run_once()
    assert seen["status"] == "processing"
    job = queue.get_job_status(job_id, app=app)
    assert job["status"] == "completed" and job["retryCount"] == 0


def test_ttl_purge_completed_after_7_days_failed_after_30(env, clock):
    app, queue, state, _ = env
    done_id = queue.add_job("NOOP", {}, app=app)
    state.runtime.make_worker().run_once()
    failed_id = queue.add_job("NOOP", {}, max_retries=0, app=app)
    abandon_claim(state, clock)
    clock.advance(601)
    queue.cleanup_stuck_jobs(app=app)
    assert queue.get_job_status(failed_id, app=app)["status"] == "failed"
    failed_at = clock.now()
    scheduler = state.runtime.make_scheduler(None)
    clock.advance(7 * 86400 - 602)
    assert scheduler.tick().purged == 0
    clock.advance(2)
    scheduler.next_sweep_at = None
    assert scheduler.tick().purged == 1
    assert queue.get_job_status(done_id, app=app) is None
    clock.advance((failed_at - clock.now()).total_seconds() + 30 * 86400 - 1)
    scheduler.next_sweep_at = None  # the failed job is 30 days old minus a second
    assert scheduler.tick().purged == 0
    clock.advance(2)
    scheduler.next_sweep_at = None
    assert scheduler.tick().purged == 1
    assert queue.get_job_status(failed_id, app=app) is None


def test_concurrent_sweeps_recover_each_job_once(env, clock):
    app, queue, state, _ = env
    ids = [queue.add_job("NOOP", {}, app=app) for _ in range(20)]
    for _ in ids:
        abandon_claim(state, clock)
    clock.advance(601)
    totals = []
    sweepers = [state.runtime.make_scheduler(None) for _ in range(4)]
    threads = [threading.Thread(target=lambda s=s: totals.append(s.tick().requeued)) for s in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(totals) == 20
    assert all(queue.get_job_status(i, app=app)["retryCount"] == 1 for i in ids)


def test_scheduler_thread_survives_errors(env, clock):
    app, queue, state, _ = env
    scheduler = state.runtime.make_scheduler(None)
    calls = {"n": 0}
    original = scheduler.sweep

    def flaky_sweep(now):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("store down")
        return original(now)

    scheduler.sweep = flaky_sweep
    thread = threading.Thread(target=scheduler.run_forever, name="queue-scheduler", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if calls["n"] >= 2:
                break
            clock.advance(1)
            threading.Event().wait(0.01)
    finally:
        scheduler.stop()
        thread.join(5)
    assert calls["n"] >= 2 and not thread.is_alive()


def test_worker_scheduler_and_service_share_the_settings_retry_policy(make_app, clock):
    """One RetryPolicy per Settings (``Settings.retry_policy``), built from
    QUEUE_STUCK_AFTER, not one per user of it."""
    app, _ = make_app(JobQueue(clock=clock, builtins=False), QUEUE_STUCK_AFTER=120)
    state = app.extensions["queue_service"]
    policy = state.settings.retry_policy
    assert policy.stuck_after_seconds == 120
    assert state.runtime.make_worker().policy is policy
    assert state.runtime.make_scheduler(None).policy is policy
    assert state.service.policy is policy
