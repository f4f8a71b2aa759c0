"""SQLite across processes: three processes, each with its own SQLiteStore on
one file, claim and complete 3,000 jobs (each completion claiming the next job
in the same transaction, as the worker's loop does) while the parent is still
adding them. Every job is completed exactly once and none is lost.

``pytest tests/test_sqlite_processes.py -s`` prints the run's figures.
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from queue_service.core.jobs import Job, JobStatus, new_job_id, new_lock_token
from queue_service.stores.sqlite import SQLiteStore

PROCESSES = 3
JOBS = 3000
ADDED_BEFORE_START = 1000
DEADLINE_SECONDS = 120.0  # a bound for a stuck run, not an expected duration


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_job(n: int) -> Job:
    created = now()
    return Job(id=new_job_id(), type="NOOP", payload={"n": n}, priority=n % 3, max_retries=3,
               retry_delays=[1.0], created_at=created, run_at=created)


def drain(path: str, total: int, start: "multiprocessing.synchronize.Barrier",
          results: "multiprocessing.Queue") -> None:
    """A claiming process, as the worker's loop drains: claim, then complete
    each job and claim the next in one call, until all ``total`` jobs exist
    and none is pending. Sends back (pid, ids it completed, claims lost)."""
    store = SQLiteStore(path)  # opened here, in this process
    worker_id = f"test:{os.getpid()}"
    completed: list[str] = []
    lost = 0
    job = None
    start.wait(timeout=60)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if job is None:
            job = store.claim(worker_id, new_lock_token(), now())
        if job is None:
            counts = store.counts(now())
            if counts["total"] >= total and counts["pending"] == 0:
                break
            time.sleep(0.005)  # the parent is still adding: look again soon
            continue
        done, following = store.complete_and_claim(job, now(), {"by": os.getpid()}, worker_id,
                                                   new_lock_token())
        if done:
            completed.append(job.id)
        else:
            lost += 1
        job = following
    store.close()
    results.put((os.getpid(), completed, lost))


@pytest.mark.slow
def test_three_processes_complete_every_job_exactly_once(tmp_path):
    path = str(tmp_path / "queue.db")
    store = SQLiteStore(path)
    store.setup()
    ids = [store.insert(make_job(n))[0] for n in range(ADDED_BEFORE_START)]

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=drain, args=(path, JOBS, start, results), daemon=True)
             for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        start.wait(timeout=60)  # spawned interpreters are up: claims start now
        began = time.monotonic()
        # Keep adding while the three claim, so inserts and claims contend.
        ids += [store.insert(make_job(n))[0] for n in range(ADDED_BEFORE_START, JOBS)]
        reports = []
        for _ in procs:
            try:
                reports.append(results.get(timeout=DEADLINE_SECONDS))
            except queue_module.Empty:
                pytest.fail("a claiming process did not report")
        elapsed = time.monotonic() - began
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)

    per_id = Counter(job_id for _, completed, _ in reports for job_id in completed)
    assert len(ids) == JOBS and len(set(ids)) == JOBS
    assert not [job_id for job_id, n in per_id.items() if n > 1], "a job was completed twice"
    assert set(per_id) == set(ids), "a job was lost"
    assert all(lost == 0 for _, _, lost in reports)
    assert len({pid for pid, _, _ in reports}) == PROCESSES

    # The store agrees: each job completed once, by the process that says so,
    # after exactly one claim.
    done_by = {job_id: pid for pid, completed, _ in reports for job_id in completed}
    for job_id in ids:
        job = store.get(job_id)
        assert job.status is JobStatus.COMPLETED
        assert len(job.attempts) == 1 and job.attempts[0]["outcome"] == "completed"
        assert job.result == {"by": done_by[job_id]}
    counts = store.counts(now())
    assert counts["completed"] == JOBS and counts["total"] == JOBS
    store.close()

    shares = ", ".join(str(len(completed)) for _, completed, _ in reports)
    print(f"\n{PROCESSES} processes claimed and completed {JOBS} jobs (inserted alongside) in "
          f"{elapsed:.2f}s, {JOBS / elapsed:.0f} jobs/s; per process: {shares}")
