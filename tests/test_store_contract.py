"""The store contract, once, over every store (see stores/base.py).

Runs on SQLite and on MongoDB (mongomock, or a real server when
QUEUE_TEST_MONGO_URI is set). Time comes from a ManualClock.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from queue_service.core.jobs import Job, JobStatus, RetryPolicy, new_job_id, new_lock_token
from queue_service.core.scheduler import recover_stuck


def make_job(clock, job_type="T", priority=0, delay=0.0, max_retries=3, key=None, payload=None,
             queue="default") -> Job:
    now = clock.now()
    return Job(id=new_job_id(), type=job_type, payload=payload or {"n": 1}, priority=priority,
               max_retries=max_retries, created_at=now, run_at=now + timedelta(seconds=delay),
               idempotency_key=key, queue=queue)


def add(store, clock, **kwargs) -> Job:
    job = make_job(clock, **kwargs)
    job_id, created = store.insert(job)
    assert created and job_id == job.id
    return job


def claim(store, clock, worker="w1"):
    return store.claim(worker, new_lock_token(), clock.now())


# -- insert / get ---------------------------------------------------------------
def test_insert_then_get_round_trips_every_field(store, clock):
    job = add(store, clock, priority=5, payload={"to": "a@b.c", "nested": {"x": [1, 2]}})
    got = store.get(job.id)
    assert got.status is JobStatus.PENDING
    assert (got.type, got.priority, got.payload) == ("T", 5, {"to": "a@b.c", "nested": {"x": [1, 2]}})
    assert got.created_at == job.created_at and got.run_at == job.run_at
    assert got.created_at.tzinfo is not None
    assert got.retry_count == 0 and got.max_retries == 3 and got.attempts == []
    assert got.retry_delays == [1.0, 5.0, 15.0]


def test_schema_fingerprint_round_trips_and_survives_the_claim(store, clock):
    """The worker skips a second load only on the fingerprint stored at enqueue."""
    import dataclasses

    job = dataclasses.replace(make_job(clock), schema_fingerprint="abc123")
    store.insert(job)
    bulk = [dataclasses.replace(make_job(clock), schema_fingerprint="def456"), make_job(clock)]
    store.insert_many(bulk)
    assert store.get(job.id).schema_fingerprint == "abc123"
    assert store.get(bulk[0].id).schema_fingerprint == "def456"
    assert store.get(bulk[1].id).schema_fingerprint is None
    assert claim(store, clock).schema_fingerprint == "abc123"


def test_get_unknown_id_is_none(store):
    assert store.get(new_job_id()) is None


# -- claim ----------------------------------------------------------------------
def test_claim_empty_store_returns_none(store, clock):
    assert claim(store, clock) is None


def test_claim_takes_highest_priority_then_oldest(store, clock):
    low = add(store, clock, priority=0)
    clock.advance(0.01)
    high_new = add(store, clock, priority=10)
    clock.advance(0.01)
    high_newer = add(store, clock, priority=10)
    clock.advance(0.01)
    negative = add(store, clock, priority=-5)
    order = [claim(store, clock).id for _ in range(4)]
    assert order == [high_new.id, high_newer.id, low.id, negative.id]
    assert claim(store, clock) is None


def test_claim_waits_for_run_at(store, clock):
    later = add(store, clock, delay=30)
    assert claim(store, clock) is None
    clock.advance(29.999)
    assert claim(store, clock) is None
    clock.advance(0.001)
    assert claim(store, clock).id == later.id


def test_claim_records_worker_token_and_attempt(store, clock):
    job = add(store, clock)
    clock.advance(2)
    token = new_lock_token()
    got = store.claim("host:1:abc", token, clock.now())
    assert got.id == job.id and got.status is JobStatus.PROCESSING
    assert got.lock_token == token and got.worker_id == "host:1:abc"
    assert got.processed_at == clock.now() == got.heartbeat_at
    assert got.attempts == [{"startedAt": clock.now(), "worker": "host:1:abc"}]
    assert store.get(job.id).status is JobStatus.PROCESSING


def test_concurrent_claims_never_hand_out_a_job_twice(store, clock):
    ids = {add(store, clock).id for _ in range(200)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(name):
        while True:
            job = claim(store, clock, worker=name)
            if job is None:
                return
            assert store.complete(job, clock.now(), None)
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)  # each exactly once, none lost


# -- outcomes and fencing -----------------------------------------------------------
def test_complete_records_result_and_ends_attempt(store, clock):
    add(store, clock)
    job = claim(store, clock)
    clock.advance(1.5)
    assert store.complete(job, clock.now(), {"ok": True, "list": [1, "a"]})
    got = store.get(job.id)
    assert got.status is JobStatus.COMPLETED and got.result == {"ok": True, "list": [1, "a"]}
    assert got.completed_at == clock.now() and got.lock_token is None
    assert got.attempts[0]["endedAt"] == clock.now() and got.attempts[0]["outcome"] == "completed"
    assert set(got.attempts[0]) == {"startedAt", "worker", "endedAt", "outcome", "waitSeconds"}  # no null keys
    assert not store.complete(job, clock.now(), "again")  # recorded exactly once


def test_complete_and_claim_records_one_and_claims_the_next(store, clock):
    first = add(store, clock)
    low = add(store, clock, priority=-1)
    high = add(store, clock, priority=5)
    later = add(store, clock, priority=9, delay=60)  # not due: never the next one
    job = claim(store, clock)
    assert job.id == high.id
    clock.advance(2)
    completed, following = store.complete_and_claim(job, clock.now(), {"ok": 1}, "w1", "token-2")
    assert completed and following.id == first.id  # priority, then age, as claim() orders
    assert following.status is JobStatus.PROCESSING and following.lock_token == "token-2"
    assert following.processed_at == following.heartbeat_at == clock.now()
    assert following.attempts == [{"startedAt": clock.now(), "worker": "w1"}]
    done = store.get(high.id)
    assert done.status is JobStatus.COMPLETED and done.result == {"ok": 1} and done.completed_at == clock.now()
    assert done.attempts[0]["outcome"] == "completed"
    completed, following = store.complete_and_claim(following, clock.now(), None, "w1", new_lock_token())
    assert completed and following.id == low.id
    completed, following = store.complete_and_claim(following, clock.now(), None, "w1", new_lock_token())
    assert completed and following is None
    assert store.get(later.id).status is JobStatus.PENDING
    assert claim(store, clock) is None


def test_complete_and_claim_with_a_lost_claim_records_nothing_but_still_claims(store, clock):
    a = add(store, clock)
    b = add(store, clock)
    job = claim(store, clock)
    stale = Job(**{**job.__dict__, "lock_token": "not-mine"})
    completed, following = store.complete_and_claim(stale, clock.now(), None, "w1", new_lock_token())
    assert not completed and following.id == b.id
    assert store.get(a.id).status is JobStatus.PROCESSING  # untouched: its claim is someone else's


def test_retry_later_requeues_with_delay_and_counts(store, clock):
    add(store, clock)
    job = claim(store, clock)
    run_at = clock.now() + timedelta(seconds=5)
    assert store.retry_later(job, clock.now(), "boom", run_at)
    got = store.get(job.id)
    assert got.status is JobStatus.PENDING and got.retry_count == 1 and got.run_at == run_at
    assert got.error == "boom"
    assert got.attempts[0]["outcome"] == "retry" and got.attempts[0]["error"] == "boom"
    assert got.attempts[0]["nextDelaySeconds"] == 5
    assert claim(store, clock) is None
    clock.advance(5)
    again = claim(store, clock)
    assert again.id == job.id and len(again.attempts) == 2


def test_fail_is_terminal(store, clock):
    add(store, clock)
    job = claim(store, clock)
    assert store.fail(job, clock.now(), "bad")
    got = store.get(job.id)
    assert got.status is JobStatus.FAILED and got.error == "bad" and got.completed_at == clock.now()
    assert got.attempts[0]["outcome"] == "failed"
    assert claim(store, clock) is None


def test_release_hands_back_without_counting_a_retry(store, clock):
    add(store, clock)
    job = claim(store, clock)
    assert store.release(job, clock.now(), "shutdown")
    got = store.get(job.id)
    assert got.status is JobStatus.PENDING and got.retry_count == 0 and got.lock_token is None
    assert got.attempts[0]["outcome"] == "released"
    assert claim(store, clock).id == job.id


def test_heartbeat_renews_and_stores_progress(store, clock):
    add(store, clock)
    job = claim(store, clock)
    clock.advance(30)
    assert store.heartbeat(job, clock.now())
    assert store.heartbeat(job, clock.now(), {"done": 1, "total": 3})
    got = store.get(job.id)
    assert got.heartbeat_at == clock.now() and got.progress == {"done": 1, "total": 3}


def test_an_identical_heartbeat_in_the_same_millisecond_keeps_the_claim(store, clock):
    """A write that changes nothing still matched the fence: not a lost claim
    (MongoDB's modified_count is 0 for it; matched_count is 1)."""
    add(store, clock)
    job = claim(store, clock)
    assert store.heartbeat(job, clock.now())  # the same instant the claim wrote
    assert store.heartbeat(job, clock.now(), {"done": 1})
    assert store.heartbeat(job, clock.now(), {"done": 1})
    assert store.get(job.id).progress == {"done": 1}


def test_a_stale_token_changes_nothing(store, clock):
    """Fencing: after a takeover the old worker can write nothing."""
    add(store, clock, max_retries=3)
    old = claim(store, clock, worker="old")
    clock.advance(601)
    assert sweep(store, clock) == (1, 0)
    new = claim(store, clock, worker="new")
    assert new.id == old.id and new.lock_token != old.lock_token
    now = clock.now()
    assert not store.heartbeat(old, now)
    assert not store.complete(old, now, "old result")
    assert not store.fail(old, now, "old error")
    assert not store.retry_later(old, now, "old", now)
    assert not store.release(old, now, "old")
    assert store.get(new.id).status is JobStatus.PROCESSING
    assert store.complete(new, now, "new result")
    got = store.get(new.id)
    assert got.result == "new result" and got.retry_count == 1
    assert [a["worker"] for a in got.attempts] == ["old", "new"]
    assert got.attempts[0]["outcome"] == "lost"


# -- stuck jobs -------------------------------------------------------------------
def sweep(store, clock):
    """The scheduler's recovery (find_stuck, then recover_lost as the policy decides)."""
    return recover_stuck(store, RetryPolicy(600), clock.now())


def test_find_stuck_lists_stale_heartbeats_oldest_first(store, clock):
    for _ in range(3):
        add(store, clock)
    a = claim(store, clock)
    clock.advance(10)
    b = claim(store, clock)
    clock.advance(601)
    claim(store, clock)
    before = clock.now() - timedelta(seconds=600)
    assert [job.id for job in store.find_stuck(before)] == [a.id, b.id]
    assert [job.id for job in store.find_stuck(before, limit=1)] == [a.id]


def test_recover_lost_leaves_a_job_whose_heartbeat_came_back(store, clock):
    """A worker that renews its claim between find_stuck and recover_lost keeps its job."""
    add(store, clock)
    job = claim(store, clock)
    clock.advance(601)
    before = clock.now() - timedelta(seconds=600)
    [seen] = store.find_stuck(before)
    assert store.heartbeat(job, clock.now())
    assert not store.recover_lost(seen, before, clock.now(), "lost", retry=True)
    assert store.get(job.id).status is JobStatus.PROCESSING


def test_a_lost_attempt_keeps_its_queue_latency(store, clock):
    add(store, clock)
    clock.advance(3)
    job = claim(store, clock)
    clock.advance(601)
    before = clock.now() - timedelta(seconds=600)
    [seen] = store.find_stuck(before)  # may come without payload and with the last attempt only
    assert store.recover_lost(seen, before, clock.now(), "lost", retry=True)
    attempt = store.get(job.id).attempts[0]
    assert attempt["outcome"] == "lost" and attempt["waitSeconds"] == 3


def test_two_sweepers_recover_each_job_once(store, clock):
    add(store, clock)
    claim(store, clock)
    clock.advance(601)
    before = clock.now() - timedelta(seconds=600)
    [seen_by_a] = store.find_stuck(before)
    [seen_by_b] = store.find_stuck(before)
    assert store.recover_lost(seen_by_a, before, clock.now(), "lost", retry=True)
    assert not store.recover_lost(seen_by_b, before, clock.now(), "lost", retry=True)
    assert store.get(seen_by_a.id).retry_count == 1


def test_sweep_only_touches_stale_heartbeats(store, clock):
    add(store, clock)
    add(store, clock)
    stale = claim(store, clock)
    clock.advance(500)
    fresh = claim(store, clock)
    clock.advance(200)  # stale: 700 s old, fresh: 200 s old
    assert sweep(store, clock) == (1, 0)
    assert store.get(stale.id).status is JobStatus.PENDING
    assert store.get(stale.id).retry_count == 1
    assert store.get(fresh.id).status is JobStatus.PROCESSING
    # a second sweep (another process) finds nothing more to do
    assert sweep(store, clock) == (0, 0)


def test_sweep_fails_a_job_out_of_retries(store, clock):
    add(store, clock, max_retries=0)
    job = claim(store, clock)
    clock.advance(601)
    assert sweep(store, clock) == (0, 1)
    got = store.get(job.id)
    assert got.status is JobStatus.FAILED and got.error == "worker lost (no heartbeat for 600s)"
    assert got.attempts[-1]["outcome"] == "lost"


# -- cancel / manual retry --------------------------------------------------------------
def test_cancel_only_pending(store, clock):
    pending = add(store, clock)
    running = add(store, clock)
    assert claim(store, clock).id == pending.id  # oldest first: take `pending`, then cancel `running`
    assert store.cancel(running.id, clock.now())
    assert store.get(running.id).status is JobStatus.CANCELLED
    assert not store.cancel(running.id, clock.now())  # already cancelled
    assert not store.cancel(pending.id, clock.now())  # processing
    assert not store.cancel(new_job_id(), clock.now())


def test_requeue_failed_gives_a_fresh_budget(store, clock):
    add(store, clock)
    job = claim(store, clock)
    store.retry_later(job, clock.now(), "e1", clock.now())
    job = claim(store, clock)
    store.fail(job, clock.now(), "e2")
    clock.advance(10)
    assert store.requeue_failed(job.id, clock.now())
    got = store.get(job.id)
    assert got.status is JobStatus.PENDING and got.retry_count == 0 and got.error is None
    assert got.run_at == clock.now() and got.completed_at is None and len(got.attempts) == 2
    assert not store.requeue_failed(job.id, clock.now())  # pending now
    assert not store.requeue_failed(new_job_id(), clock.now())


# -- idempotency ----------------------------------------------------------------------
def test_idempotency_key_returns_the_active_job(store, clock):
    first = add(store, clock, key="order-42")
    dup = make_job(clock, key="order-42")
    assert store.insert(dup) == (first.id, False)
    assert store.get(dup.id) is None
    job = claim(store, clock)
    assert store.insert(make_job(clock, key="order-42")) == (first.id, False)  # processing still holds it
    store.complete(job, clock.now(), None)
    again = make_job(clock, key="order-42")
    assert store.insert(again) == (again.id, True)  # finished jobs release the key


def test_concurrent_inserts_with_one_key_create_one_job(store, clock):
    results = []

    def insert():
        results.append(store.insert(make_job(clock, key="same")))

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_manual_retry_refused_while_key_is_held_by_another_job(store, clock):
    add(store, clock, key="k")
    job = claim(store, clock)
    store.fail(job, clock.now(), "x")
    add(store, clock, key="k")  # the key is free again: a new job takes it
    assert not store.requeue_failed(job.id, clock.now())
    assert store.get(job.id).status is JobStatus.FAILED


# -- stats, listing, purge ---------------------------------------------------------------
def test_counts_and_oldest_times(store, clock):
    empty = store.counts(clock.now())
    assert empty["total"] == 0 and empty["oldestPendingAt"] is None and empty["oldestProcessingAt"] is None
    first = add(store, clock)
    clock.advance(10)
    add(store, clock)
    add(store, clock, delay=3600)  # not yet runnable: not "waiting"
    job = claim(store, clock)
    assert job.id == first.id
    started = clock.now()
    clock.advance(5)
    add(store, clock)
    c = store.counts(clock.now())
    assert (c["pending"], c["processing"], c["completed"], c["failed"], c["cancelled"], c["total"]) == \
        (3, 1, 0, 0, 0, 4)
    assert c["oldestPendingAt"] == started  # the second job became runnable when it was added
    assert c["oldestProcessingAt"] == started


def test_counts_by_type_groups_jobs_and_attempts(store, clock):
    assert store.counts_by_type().jobs == {} and store.counts_by_type().attempts == {}
    for _ in range(3):
        add(store, clock, job_type="MAIL")
    add(store, clock, job_type="IMG")
    add(store, clock, job_type="IMG", delay=3600)
    mail = claim(store, clock)                          # MAIL: one retried, then completed
    assert store.retry_later(mail, clock.now(), "451", clock.now())
    again = claim(store, clock)
    assert again.id == mail.id and store.complete(again, clock.now(), None)
    failed = claim(store, clock)                        # MAIL: one failed
    assert store.fail(failed, clock.now(), "550")
    running = claim(store, clock)                       # MAIL: one running (no outcome yet)
    img = claim(store, clock)
    assert (running.type, img.type) == ("MAIL", "IMG")
    store.cancel(add(store, clock, job_type="IMG").id, clock.now())
    counts = store.counts_by_type()
    assert counts.jobs == {("MAIL", "completed"): 1, ("MAIL", "failed"): 1, ("MAIL", "processing"): 1,
                           ("IMG", "processing"): 1, ("IMG", "pending"): 1, ("IMG", "cancelled"): 1}
    assert counts.attempts == {("MAIL", "retry"): 1, ("MAIL", "completed"): 1, ("MAIL", "failed"): 1,
                               ("MAIL", "running"): 1, ("IMG", "running"): 1}


def test_per_type_counts_of_jobs_with_many_attempts_of_mixed_outcomes(store, clock):
    """Three types, jobs of one to three attempts: retried, released, lost,
    failed, completed and one still running; both stores, the same numbers."""
    def lose(job, retry):
        clock.advance(3600)
        before = clock.now() - timedelta(seconds=60)
        [stuck] = [j for j in store.find_stuck(before) if j.id == job.id]
        assert store.recover_lost(stuck, before, clock.now(), "worker lost", retry=retry)

    add(store, clock, job_type="MAIL", max_retries=5)   # retry, released, completed
    job = claim(store, clock)
    assert store.retry_later(job, clock.now(), "451", clock.now())
    assert store.release(claim(store, clock), clock.now(), "deploy")
    assert store.complete(claim(store, clock), clock.now(), None)
    add(store, clock, job_type="MAIL")                  # failed
    assert store.fail(claim(store, clock), clock.now(), "550")
    add(store, clock, job_type="IMG")                   # lost, completed
    lose(claim(store, clock), retry=True)
    assert store.complete(claim(store, clock), clock.now(), {"ok": 1})
    add(store, clock, job_type="PDF", max_retries=0)    # lost: failed
    lose(claim(store, clock), retry=False)
    add(store, clock, job_type="MAIL")                  # retry, then running
    assert store.retry_later(claim(store, clock), clock.now(), "451", clock.now())
    running = claim(store, clock)
    add(store, clock, job_type="IMG")                   # released: pending again
    assert store.release(claim(store, clock), clock.now(), "deploy")
    add(store, clock, job_type="IMG", delay=3600)       # no attempt yet
    assert store.cancel(add(store, clock, job_type="IMG", delay=3600).id, clock.now())
    assert running.type == "MAIL" and running.attempts[-1].get("outcome") is None
    counts = store.counts_by_type()
    assert counts.jobs == {("MAIL", "completed"): 1, ("MAIL", "failed"): 1, ("MAIL", "processing"): 1,
                           ("IMG", "completed"): 1, ("IMG", "pending"): 2, ("IMG", "cancelled"): 1,
                           ("PDF", "failed"): 1}
    assert counts.attempts == {("MAIL", "retry"): 2, ("MAIL", "released"): 1, ("MAIL", "completed"): 1,
                               ("MAIL", "failed"): 1, ("MAIL", "running"): 1, ("IMG", "lost"): 1,
                               ("IMG", "completed"): 1, ("IMG", "released"): 1, ("PDF", "lost"): 1}
    recorded: dict = {}
    for job in store.list_jobs(limit=100):  # the same as the jobs themselves say
        for attempt in job.attempts:
            key = (job.type, attempt.get("outcome") or "running")
            recorded[key] = recorded.get(key, 0) + 1
    assert recorded == counts.attempts


def test_list_jobs_newest_first_with_filters_and_cursor(store, clock):
    jobs = []
    for i in range(7):
        jobs.append(add(store, clock, job_type="A" if i % 2 == 0 else "B"))
        clock.advance(1)
    newest_first = [j.id for j in reversed(jobs)]
    page1 = store.list_jobs(limit=3)
    assert [j.id for j in page1] == newest_first[:3]
    page2 = store.list_jobs(limit=3, before=(page1[-1].created_at, page1[-1].id))
    assert [j.id for j in page2] == newest_first[3:6]
    page3 = store.list_jobs(limit=3, before=(page2[-1].created_at, page2[-1].id))
    assert [j.id for j in page3] == newest_first[6:]
    assert [j.type for j in store.list_jobs(job_type="B")] == ["B"] * 3
    store.cancel(jobs[0].id, clock.now())
    assert [j.id for j in store.list_jobs(status="cancelled")] == [jobs[0].id]
    assert store.list_jobs(status="failed") == []


def test_purge_by_age_and_status(store, clock):
    done = add(store, clock)
    failed = add(store, clock)
    cancelled = add(store, clock)
    pending = add(store, clock)
    store.complete(claim(store, clock), clock.now(), None)
    store.fail(claim(store, clock), clock.now(), "x")
    store.cancel(cancelled.id, clock.now())
    clock.advance(8 * 86400)
    cutoff_completed = clock.now() - timedelta(days=7)
    cutoff_failed = clock.now() - timedelta(days=30)
    assert store.purge(cutoff_completed, cutoff_failed) == 1
    assert store.get(done.id) is None and store.get(failed.id) is not None
    clock.advance(23 * 86400)
    assert store.purge(clock.now() - timedelta(days=7), clock.now() - timedelta(days=30)) == 2
    assert store.get(failed.id) is None and store.get(cancelled.id) is None
    assert store.get(pending.id).status is JobStatus.PENDING  # never purged


def test_purge_with_failed_jobs_kept_shorter_than_completed_ones(store, clock):
    done = add(store, clock)
    failed = add(store, clock)
    store.complete(claim(store, clock), clock.now(), None)
    store.fail(claim(store, clock), clock.now(), "x")
    clock.advance(3 * 86400)
    assert store.purge(clock.now() - timedelta(days=7), clock.now() - timedelta(days=2)) == 1
    assert store.get(failed.id) is None and store.get(done.id) is not None


def test_purge_goes_by_when_a_job_finished_not_when_it_was_created(store, clock):
    old_but_just_done = add(store, clock)
    clock.advance(10 * 86400)
    store.complete(claim(store, clock), clock.now(), None)
    clock.advance(86400)
    assert store.purge(clock.now() - timedelta(days=7), clock.now() - timedelta(days=30)) == 0
    assert store.get(old_but_just_done.id) is not None
    clock.advance(7 * 86400)
    assert store.purge(clock.now() - timedelta(days=7), clock.now() - timedelta(days=30)) == 1


# -- media ----------------------------------------------------------------------------------
def test_files_put_get_replace_purge(store, clock):
    assert store.get_file("nope.webp") is None
    store.put_file("a.webp", b"\x00\x01first", "image/webp", clock.now())
    store.put_file("a.webp", b"second", "image/webp", clock.now())
    got = store.get_file("a.webp")
    assert got.data == b"second" and got.content_type == "image/webp" and got.created_at == clock.now()
    clock.advance(100)
    store.put_file("b.jpg", b"b", "image/jpeg", clock.now())
    assert store.purge_files(clock.now() - timedelta(seconds=50)) == 1
    assert store.get_file("a.webp") is None and store.get_file("b.jpg").data == b"b"


def test_setup_is_idempotent(store):
    store.setup()
    store.setup()
    store.ping()


# -- named queues ---------------------------------------------------------------------
def test_a_claim_restricted_to_queues_never_returns_another_queues_job(store, clock):
    images = add(store, clock, queue="images", priority=9)
    add(store, clock, queue="default")
    emails = add(store, clock, queue="emails")
    assert store.get(images.id).queue == "images"
    got = store.claim("w", new_lock_token(), clock.now(), ("emails", "reports"))
    assert got.id == emails.id and got.queue == "emails"
    assert store.claim("w", new_lock_token(), clock.now(), ("emails", "reports")) is None
    assert store.claim("w", new_lock_token(), clock.now(), ("images",)).id == images.id


def test_within_its_queues_a_claim_takes_priority_then_age(store, clock):
    old_low = add(store, clock, queue="a", priority=0)
    clock.advance(1)
    new_high = add(store, clock, queue="b", priority=5)
    clock.advance(1)
    other = add(store, clock, queue="c", priority=100)
    clock.advance(1)
    newer_low = add(store, clock, queue="a", priority=0)
    order = [store.claim("w", new_lock_token(), clock.now(), ("a", "b")).id for _ in range(3)]
    assert order == [new_high.id, old_low.id, newer_low.id]
    assert store.get(other.id).status is JobStatus.PENDING


def test_complete_and_claim_keeps_to_the_workers_queues(store, clock):
    first = add(store, clock, queue="a")
    add(store, clock, queue="b")
    job = store.claim("w", new_lock_token(), clock.now(), ("a",))
    done, following = store.complete_and_claim(job, clock.now(), None, "w", new_lock_token(), ("a",))
    assert done and job.id == first.id and following is None


def test_counts_by_queue_and_listing_by_queue(store, clock):
    add(store, clock, queue="a")
    add(store, clock, queue="a", delay=60)
    add(store, clock, queue="b")
    claim(store, clock)
    clock.advance(5)
    counts = store.counts_by_queue(clock.now())
    assert counts["a"].get("pending", 0) + counts["a"].get("processing", 0) == 2
    assert sum(row.get("pending", 0) + row.get("processing", 0) for row in counts.values()) == 3
    assert counts["b"]["oldestPendingAt"] is not None or counts["b"].get("processing") == 1
    assert {job.queue for job in store.list_jobs(queue="a")} == {"a"}
    assert len(store.list_jobs(queue="b")) == 1


# -- bulk insert ---------------------------------------------------------------------------
def test_insert_many_stores_all_in_order_and_honours_keys(store, clock):
    held = add(store, clock, key="k-held")
    jobs = [make_job(clock), make_job(clock, key="k-new"), make_job(clock, key="k-held"),
            make_job(clock, key="k-new"), make_job(clock, queue="images")]
    answers = store.insert_many(jobs)
    assert answers[0] == (jobs[0].id, True) and answers[1] == (jobs[1].id, True)
    assert answers[2] == (held.id, False)          # held by an active job
    assert answers[3] == (jobs[1].id, False)       # held by an earlier job of the same call
    assert answers[4] == (jobs[4].id, True)
    assert store.get(jobs[2].id) is None and store.get(jobs[3].id) is None
    assert store.get(jobs[4].id).queue == "images"
    assert store.counts(clock.now())["pending"] == 4


# -- keys MongoDB refuses or reinterprets (stores/mongo_keys.py) -----------------------------
# "$ref"+"$id" come back from a real server as a DBRef, "$" leads an operator and "." is a
# path in updates; U+FF04 / U+FF0E / U+FF3C are the escape's own characters.
ODD_KEYS = {"$ref": "things", "$id": 7, "a.b": {"c.d": 1}, "\uff04x": "fullwidth dollar",
            "\uff0ey\uff3c": 2, "$set": {"$inc": 1}, "list": [{"$ref": "x", "$id": 1}, [{"k.l": None}], 3],
            "plain": "a$b.c"}


def test_odd_keys_round_trip_in_payload_progress_and_result(store, clock):
    job = add(store, clock, payload=ODD_KEYS)
    assert store.get(job.id).payload == ODD_KEYS
    claimed = claim(store, clock)
    assert claimed.payload == ODD_KEYS
    assert store.heartbeat(claimed, clock.now(), {"$done": 1, "of.total": 3})
    assert store.get(job.id).progress == {"$done": 1, "of.total": 3}
    assert store.complete(claimed, clock.now(), {"echo": ODD_KEYS, "$ref": "r", "$id": "i"})
    got = store.get(job.id)
    assert got.result == {"echo": ODD_KEYS, "$ref": "r", "$id": "i"} and got.payload == ODD_KEYS
    assert list(got.payload) == list(ODD_KEYS)  # the order of keys too


def test_odd_keys_round_trip_through_bulk_insert_and_complete_and_claim(store, clock):
    jobs = [make_job(clock, payload=ODD_KEYS), make_job(clock, payload={"$only": {"x.y": [ODD_KEYS]}})]
    store.insert_many(jobs)
    first = claim(store, clock)
    assert first.payload == ODD_KEYS
    completed, following = store.complete_and_claim(first, clock.now(), [{"$ref": "a", "$id": 2}],
                                                    "w1", new_lock_token())
    assert completed and following.id == jobs[1].id
    assert following.payload == {"$only": {"x.y": [ODD_KEYS]}}
    assert store.get(first.id).result == [{"$ref": "a", "$id": 2}]
    listed = {j.id: j.payload for j in store.list_jobs()}
    assert listed == {jobs[0].id: ODD_KEYS, jobs[1].id: {"$only": {"x.y": [ODD_KEYS]}}}


# -- periodic slots (enqueue_slot) ------------------------------------------------
def slot_job(clock, name, slot) -> Job:
    from queue_service.core.periodic import slot_job_id

    now = clock.now()
    return Job(id=slot_job_id(name, slot), type="T", payload={}, created_at=now, run_at=now,
               scheduled_by=name, slot=slot)


def test_enqueue_slot_records_schedule_and_slot(store, clock):
    slot = clock.now()
    job = slot_job(clock, "nightly", slot)
    assert store.enqueue_slot("nightly", slot, job, clock.now())
    got = store.get(job.id)
    assert (got.scheduled_by, got.slot, got.status) == ("nightly", slot, JobStatus.PENDING)
    state = store.schedule_states()["nightly"]
    assert (state.last_slot, state.last_job_id, state.seen_at) == (slot, job.id, clock.now())
    assert claim(store, clock).id == job.id
    plain = add(store, clock)
    assert (store.get(plain.id).scheduled_by, store.get(plain.id).slot) == (None, None)


def test_two_schedulers_racing_for_one_slot_enqueue_one_job(store, clock):
    slot = clock.now()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def race() -> None:
        job = slot_job(clock, "racy", slot)
        barrier.wait()
        results.append(store.enqueue_slot("racy", slot, job, clock.now()))
    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.counts(clock.now())["total"] == 1
    assert store.schedule_states()["racy"].runs == 1


def test_an_older_slot_after_a_newer_one_is_refused(store, clock):
    older, newer = clock.now(), clock.now() + timedelta(seconds=60)
    assert store.enqueue_slot("s", newer, slot_job(clock, "s", newer), clock.now())
    assert not store.enqueue_slot("s", older, slot_job(clock, "s", older), clock.now())
    assert not store.enqueue_slot("s", newer, slot_job(clock, "s", newer), clock.now())  # the same slot again
    assert store.counts(clock.now())["total"] == 1
    assert store.schedule_states()["s"].last_slot == newer
    later = newer + timedelta(seconds=60)
    assert store.enqueue_slot("s", later, slot_job(clock, "s", later), clock.now())
    assert store.schedule_states()["s"].runs == 2
    assert store.enqueue_slot("other", older, slot_job(clock, "other", older), clock.now())  # per schedule


def test_touch_and_purge_schedules(store, clock):
    store.touch_schedules(["a", "b"], clock.now())
    slot = clock.now()
    assert store.enqueue_slot("a", slot, slot_job(clock, "a", slot), clock.now())  # a touched state has no slot
    clock.advance(100)
    store.touch_schedules(["b"], clock.now())
    assert store.purge_schedules(clock.now() - timedelta(seconds=50)) == 1
    assert set(store.schedule_states()) == {"b"}
    assert store.schedule_states()["b"].last_slot is None


# -- operator essentials (issue 17) ---------------------------------------------------
def test_failed_attempts_keep_their_traceback_and_others_have_no_key(store, clock):
    add(store, clock)
    job = claim(store, clock)
    assert store.retry_later(job, clock.now(), "boom", clock.now(), traceback="Traceback...\nRuntimeError: boom\n")
    again = claim(store, clock)
    assert store.fail(again, clock.now(), "bad", traceback="Traceback...\nValueError: bad\n")
    attempts = store.get(job.id).attempts
    assert attempts[0]["traceback"].endswith("RuntimeError: boom\n")
    assert attempts[1]["traceback"].endswith("ValueError: bad\n") and attempts[1]["outcome"] == "failed"
    add(store, clock)
    plain = claim(store, clock)
    assert store.fail(plain, clock.now(), "no trace")
    assert "traceback" not in store.get(plain.id).attempts[0]


def test_run_now_makes_a_delayed_or_retrying_job_due_without_a_retry(store, clock):
    delayed = add(store, clock, delay=3600)
    due = add(store, clock)
    assert not store.run_now(due.id, clock.now())  # already due: nothing to do
    assert store.run_now(delayed.id, clock.now())
    got = store.get(delayed.id)
    assert got.run_at == clock.now() and got.retry_count == 0 and got.status is JobStatus.PENDING
    assert not store.run_now(delayed.id, clock.now())
    assert not store.run_now(new_job_id(), clock.now())
    job = claim(store, clock)
    assert store.retry_later(job, clock.now(), "boom", clock.now() + timedelta(seconds=60))
    assert store.run_now(job.id, clock.now())
    assert store.get(job.id).retry_count == 1  # the failed attempt counted once, the manual run not at all
    processing = claim(store, clock)
    assert not store.run_now(processing.id, clock.now())


def test_counts_tell_scheduled_apart_from_pending(store, clock):
    add(store, clock)
    add(store, clock, delay=60)
    add(store, clock, delay=120)
    counts = store.counts(clock.now())
    assert counts["pending"] == 3 and counts["scheduled"] == 2
    clock.advance(60)
    assert store.counts(clock.now())["scheduled"] == 1


def test_history_groups_finished_jobs_by_bucket_and_type(store, clock):
    start = clock.now()  # 2030-01-01T00:00Z: a bucket boundary

    def finish(job_type, ok):
        add(store, clock, job_type=job_type, max_retries=0)
        job = claim(store, clock)
        assert store.complete(job, clock.now(), None) if ok else store.fail(job, clock.now(), "x")

    finish("A", True)
    clock.advance(10)
    finish("A", False)
    finish("B", True)
    clock.advance(300)  # the next 5-minute bucket
    finish("A", True)
    add(store, clock, delay=86400)  # pending: not counted
    clock.advance(3600)
    finish("A", True)  # after `until`
    rows = store.history(start, start + timedelta(seconds=600), 300)
    epoch = int(start.timestamp())
    assert rows == [
        {"bucket": epoch, "type": "A", "completed": 1, "failed": 1},
        {"bucket": epoch, "type": "B", "completed": 1, "failed": 0},
        {"bucket": epoch + 300, "type": "A", "completed": 1, "failed": 0},
    ]
    hourly = store.history(start, start + timedelta(hours=2), 3600)
    assert [(r["bucket"] - epoch, r["type"], r["completed"], r["failed"]) for r in hourly] == [
        (0, "A", 2, 1), (0, "B", 1, 0), (3600, "A", 1, 0)]
    # A failure stays counted once the job is retried (by the policy, or by hand) and completes.
    later = clock.advance(60)
    add(store, clock, job_type="C")
    job = claim(store, clock)
    assert store.retry_later(job, clock.now(), "boom", clock.now())
    clock.advance(0.5)
    assert store.complete(claim(store, clock), clock.now(), None)
    rows = store.history(later - timedelta(seconds=1), later + timedelta(seconds=10), 300)
    assert [(r["type"], r["completed"], r["failed"]) for r in rows] == [("C", 1, 1)]


def test_history_timings_rank_waits_and_run_times_per_bucket_and_type(store, clock):
    start = clock.now()  # a bucket boundary
    # Type A: 20 jobs, job i claimed i s after it was due, running i/10 s.
    for i in range(1, 21):
        add(store, clock, job_type="A", max_retries=0)
        clock.advance(i)
        job = claim(store, clock)
        clock.advance(i / 10)
        assert store.complete(job, clock.now(), None)
    # Type B: one attempt that failed and was retried: each attempt has its own wait.
    add(store, clock, job_type="B")
    clock.advance(4)
    job = claim(store, clock)
    clock.advance(1)
    assert store.retry_later(job, clock.now(), "boom", clock.now() + timedelta(seconds=10))
    clock.advance(12)  # due 2 s ago
    job = claim(store, clock)
    clock.advance(3)
    assert store.fail(job, clock.now(), "boom")
    assert store.get(job.id).attempts[0]["waitSeconds"] == 4
    rows = store.history_timings(start, start + timedelta(seconds=600), 300)
    epoch = int(start.timestamp())
    by_type = {r["type"]: r for r in rows}
    assert [(r["bucket"], r["type"]) for r in rows] == [(epoch, None), (epoch, "A"), (epoch, "B")]
    assert by_type["A"] == {"bucket": epoch, "type": "A", "attempts": 20,
                            "waitP50": 10, "waitP95": 19, "runP50": 1.0, "runP95": 1.9}
    assert by_type["B"] == {"bucket": epoch, "type": "B", "attempts": 2,
                            "waitP50": 2, "waitP95": 4, "runP50": 1.0, "runP95": 3.0}
    assert by_type[None]["attempts"] == 22 and by_type[None]["waitP95"] == 19
    assert by_type[None]["waitP50"] == 9 and by_type[None]["runP50"] == 1.0
    # Outside the window: nothing.
    assert store.history_timings(start + timedelta(hours=1), start + timedelta(hours=2), 300) == []


def test_jobs_with_id_prefix_is_a_range_on_the_id(store, clock):
    ids = ["ab120000-0000-4000-8000-000000000001", "ab12ffff-0000-4000-8000-000000000002",
           "ab130000-0000-4000-8000-000000000003", "ab1"]
    for job_id in ids[:3]:
        job = make_job(clock)
        job.id = job_id
        store.insert(job)
    assert [j.id for j in store.jobs_with_id_prefix("ab12")] == ids[:2]
    assert [j.id for j in store.jobs_with_id_prefix("ab12", limit=1)] == ids[:1]
    assert [j.id for j in store.jobs_with_id_prefix(ids[2])] == [ids[2]]
    assert [j.id for j in store.jobs_with_id_prefix("ab1")] == ids[:3]
    assert store.jobs_with_id_prefix("abcd") == []


def test_list_jobs_by_due_time(store, clock):
    due = add(store, clock)
    later = add(store, clock, delay=60)
    now = clock.now()
    assert [j.id for j in store.list_jobs("pending", due_by=now)] == [due.id]
    assert [j.id for j in store.list_jobs("pending", due_after=now)] == [later.id]
    clock.advance(60)
    assert {j.id for j in store.list_jobs("pending", due_by=clock.now())} == {due.id, later.id}


def test_worker_records_are_replaced_listed_and_purged(store, clock):
    def record(worker_id, **extra):
        return {"id": worker_id, "host": "h", "pid": 7, "kind": "web", "queues": ["*"],
                "startedAt": start, "lastSeenAt": clock.now(), "currentJobId": None,
                "jobsDone": 0, "jobsFailed": 0, **extra}

    start = clock.now()
    store.register_worker(record("a"))
    store.register_worker(record("b", kind="standalone", queues=["images"]))
    clock.advance(30)
    store.register_worker(record("a", jobsDone=5, currentJobId="j1"))
    workers = store.list_workers()
    assert [w["id"] for w in workers] == ["a", "b"]  # most recently seen first
    assert workers[0]["jobsDone"] == 5 and workers[0]["currentJobId"] == "j1"
    assert workers[0]["lastSeenAt"] == clock.now() and workers[0]["startedAt"] == start
    assert workers[1]["kind"] == "standalone" and workers[1]["queues"] == ["images"]
    assert store.purge_workers(clock.now() - timedelta(seconds=10)) == 1
    assert [w["id"] for w in store.list_workers()] == ["a"]


# -- reads that scale (issue 12) -------------------------------------------------
def test_a_list_view_leaves_out_payload_result_and_progress_but_counts_attempts(store, clock):
    job = add(store, clock, payload={"big": "x" * 1000})
    claimed = claim(store, clock)
    assert store.complete(claimed, clock.now(), {"out": 1})
    [full] = store.list_jobs()
    assert full.payload == {"big": "x" * 1000} and full.result == {"out": 1}
    [brief] = store.list_jobs(summary=True)
    assert brief.id == job.id and brief.status is JobStatus.COMPLETED
    assert (brief.payload, brief.result, brief.progress) == (None, None, None)
    assert brief.attempt_number == 1 and brief.attempts[0]["startedAt"] == claimed.attempts[0]["startedAt"]


def test_per_type_counts_given_now_are_at_most_ten_seconds_old(store, clock):
    add(store, clock, job_type="A")
    assert store.counts_by_type(clock.now()).jobs[("A", "pending")] == 1
    add(store, clock, job_type="A")
    assert store.counts_by_type().jobs[("A", "pending")] == 2  # without now: never cached
    clock.advance(10)
    assert store.counts_by_type(clock.now()).jobs[("A", "pending")] == 2


def test_the_stuck_sweep_ends_the_open_attempt_only(store, clock):
    add(store, clock, max_retries=5)
    for _ in range(2):  # two attempts released, then a third one lost
        job = claim(store, clock)
        assert store.release(job, clock.now(), "deploy")
        clock.advance(1)
    claim(store, clock)
    clock.advance(3600)
    before = clock.now() - timedelta(seconds=60)
    [stuck] = store.find_stuck(before)
    assert store.recover_lost(stuck, before, clock.now(), "worker lost", retry=True)
    got = store.get(stuck.id)
    assert [a["outcome"] for a in got.attempts] == ["released", "released", "lost"]
    assert got.attempts[2]["endedAt"] == clock.now() and got.status is JobStatus.PENDING
    assert not store.recover_lost(stuck, before, clock.now(), "worker lost", retry=True)


def test_a_files_etag_is_stored_at_write_time_and_read_without_its_data(store, clock):
    import hashlib

    assert store.file_etag("nope.webp") is None
    store.put_file("a.webp", b"image bytes", "image/webp", clock.now())
    expected = hashlib.sha256(b"image bytes").hexdigest()[:32]
    assert store.file_etag("a.webp") == expected == store.get_file("a.webp").etag
    store.put_file("a.webp", b"other bytes", "image/webp", clock.now())
    assert store.file_etag("a.webp") == hashlib.sha256(b"other bytes").hexdigest()[:32]


def test_attempts_are_capped_keeping_the_first_and_the_latest(store, clock):
    from queue_service.core.jobs import MAX_ATTEMPTS_KEPT

    add(store, clock)
    starts = []
    for _ in range(MAX_ATTEMPTS_KEPT + 5):
        job = claim(store, clock)
        starts.append(job.attempts[-1]["startedAt"])
        assert store.release(job, clock.now(), "deploy")
        clock.advance(1)
    job = claim(store, clock)
    starts.append(job.attempts[-1]["startedAt"])
    assert len(job.attempts) == MAX_ATTEMPTS_KEPT and job.attempt_number == MAX_ATTEMPTS_KEPT + 6
    assert store.complete(job, clock.now(), None)
    got = store.get(job.id)
    assert len(got.attempts) == MAX_ATTEMPTS_KEPT and got.attempt_number == MAX_ATTEMPTS_KEPT + 6
    assert [a["startedAt"] for a in got.attempts] == [starts[0], *starts[-(MAX_ATTEMPTS_KEPT - 1):]]
    assert got.attempts[-1]["outcome"] == "completed"
    assert [a["outcome"] for a in got.attempts[:-1]] == ["released"] * (MAX_ATTEMPTS_KEPT - 1)
