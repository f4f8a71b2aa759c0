"""(2) Drain throughput: N no-op jobs queued beforehand (untimed), then one
worker thread claims, runs and completes them all (timed). Jobs/s.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bench import subjects
from bench.common import fresh_dir, redis_server


def _rate(count: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"jobs_per_s": count / seconds, "seconds": seconds, "count": count, **extra}


def queue_service(count: int) -> dict[str, Any]:
    """The worker's own step, ``run_once(claim_next=True)`` in a loop: what
    the worker thread runs (it only adds a wait when the queue is empty)."""
    work = fresh_dir("drain-qs")
    app, queue = subjects.queue_app(work / "queue.db")
    state = queue.state()
    for i in range(count):
        queue.add_job(subjects.NOOP_TYPE, subjects.payload(i))
    worker = state.runtime.make_worker()
    done = 0
    started = time.perf_counter()
    while worker.run_once(claim_next=True) is not None and done <= count:
        done += 1
    seconds = time.perf_counter() - started
    left = state.runtime.store.counts(state.runtime.clock.now())
    if done != count or left["completed"] != count:
        raise RuntimeError(f"drained {done}, completed {left['completed']} of {count}")
    return _rate(count, seconds)


def store_only(count: int) -> dict[str, Any]:
    """What bounds the worker: the queue's own store calls as the worker
    makes them (claim() once, then complete_and_claim() per job), with no
    handler, schema or app context around them."""
    from queue_service.core.jobs import new_lock_token

    work = fresh_dir("drain-store")
    app, queue = subjects.queue_app(work / "queue.db")
    state = queue.state()
    for i in range(count):
        queue.add_job(subjects.NOOP_TYPE, subjects.payload(i))
    store, clock, done = state.runtime.store, state.runtime.clock, 0
    started = time.perf_counter()
    job = store.claim("bench:1:store", new_lock_token(), clock.now())
    while job is not None and done <= count:
        _, job = store.complete_and_claim(job, clock.now(), None, "bench:1:store", new_lock_token())
        done += 1
    seconds = time.perf_counter() - started
    if done != count:
        raise RuntimeError(f"store drained {done} of {count}")
    return _rate(count, seconds)


def huey(count: int, same_sync: bool = True) -> dict[str, Any]:
    """Huey's consumer Worker.loop(): dequeue one task and execute it."""
    from huey.consumer import Worker

    work = fresh_dir("drain-huey")
    instance, task = subjects.huey_instance(work / "huey.db", same_sync)
    for i in range(count):
        task(i, "hello")
    worker = Worker(instance, threading.Event(), default_delay=0.1, max_delay=1.0, backoff=1.15)
    started = time.perf_counter()
    for _ in range(count):
        worker.loop()
    seconds = time.perf_counter() - started
    if instance.pending_count() or worker.task_count != count:
        raise RuntimeError(f"huey left {instance.pending_count()} tasks, ran {worker.task_count}")
    return _rate(count, seconds)


def huey_defaults(count: int) -> dict[str, Any]:
    return huey(count, same_sync=False)


def rq(count: int) -> dict[str, Any]:
    """RQ's SimpleWorker (no fork per job) in burst mode."""
    from rq import SimpleWorker

    logging.getLogger("rq").setLevel(logging.WARNING)
    work = fresh_dir("drain-rq")
    with redis_server(work) as port:
        conn, queue = subjects.rq_queue(port)
        for i in range(count):
            queue.enqueue(subjects.noop, i, "hello")
        worker = SimpleWorker([queue], connection=conn)
        started = time.perf_counter()
        worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
        seconds = time.perf_counter() - started
        left = len(queue)
        if left:
            raise RuntimeError(f"rq left {left} jobs")
        return _rate(count, seconds)


FLOOR_CLAIM = ("UPDATE jobs SET status = 'processing' WHERE seq = (SELECT seq FROM jobs"
               " WHERE status = 'pending' AND run_at <= ? ORDER BY priority DESC, run_at, seq LIMIT 1)"
               " RETURNING seq, payload")


def floor(count: int) -> dict[str, Any]:
    """Plain sqlite3: claim (BEGIN IMMEDIATE, UPDATE ... RETURNING through the
    partial index, COMMIT), then complete (one UPDATE), per job."""
    work = fresh_dir("drain-floor")
    conn = subjects.floor_connection(work / "floor.db")
    now = time.time()
    conn.execute("BEGIN")
    for i in range(count):
        subjects.floor_insert(conn, i, now)
    conn.execute("COMMIT")
    done = 0
    started = time.perf_counter()
    while done <= count:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(FLOOR_CLAIM, (time.time(),)).fetchone()
        conn.execute("COMMIT")
        if row is None:
            break
        conn.execute("UPDATE jobs SET status = 'completed' WHERE seq = ? AND status = 'processing'", (row[0],))
        done += 1
    seconds = time.perf_counter() - started
    if done != count:
        raise RuntimeError(f"floor drained {done} of {count}")
    return _rate(count, seconds)


SYSTEMS = {"queue_service": queue_service, "store_only": store_only, "huey": huey,
           "huey_defaults": huey_defaults, "rq": rq, "floor": floor}
