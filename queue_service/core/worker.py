"""The worker: claim one job, run it, record the outcome.

``Worker.run_once()`` is one step (tests call it directly with a manual
clock); ``Worker.run_forever()`` is the thread body, a loop around it that
never dies of an exception.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import json
import logging
import os
import secrets
import socket
import threading
import time
import traceback
from datetime import datetime, timedelta
from typing import Any, Callable

import marshmallow

from . import memory, storable

from .clock import Clock, ShiftedClock
from .errors import PermanentJobError, UnstorableValue
from .idle import IdleBackoff
from .lazy_store import log_loop_failure
from .context import JobContext
from .jobs import Job, JobStatus, attempt_text, new_lock_token
from .limits import MAX_ERROR_CHARS
from .registry import JobType, Registry
from .settings import Settings
from .store import Store

log = logging.getLogger("queue_service.worker")

MAX_BACKOFF_SECONDS = 30.0
MAX_TRACEBACK_CHARS = 8192  # an attempt keeps the last 8 KB of its traceback (the frames nearest the raise)
FAR_FUTURE = timedelta(days=100 * 366)  # past any run_at (delays are at most a year)


def new_worker_id() -> str:
    """``host:pid:random``: new at every boot, unique across dynos and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def run_awaitable(awaitable: Any) -> Any:
    """What an ``async def`` handler returned, run to its end in this thread
    with ``asyncio.run`` (a fresh event loop per attempt). Where this thread
    already runs a loop (an eager ``add_job`` called from async code), in a
    helper thread that carries this thread's context (the app context)."""
    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="queue-async") as pool:
        return pool.submit(context.run, asyncio.run, wait()).result()


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


def bounded_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, its last MAX_TRACEBACK_CHARS characters.
    It holds code lines and the exception's text, never the frames' locals."""
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= MAX_TRACEBACK_CHARS else "…" + text[-(MAX_TRACEBACK_CHARS - 1):]


class Worker:
    def __init__(self, store_getter: Callable[[], Store], registry: Registry, clock: Clock,
                 app: Any, settings: Settings, queues: tuple[str, ...] | None = None, kind: str = "web"):
        """``queues``: the named queues this worker claims from (None: every queue);
        ``kind``: "web" (a thread of a web process) or "standalone" (``flask queue worker``),
        as its worker record says."""
        self._store_getter = store_getter
        self.registry = registry
        self.clock = clock
        self.app = app
        self.settings = settings
        self.queues = queues
        self.policy = settings.retry_policy
        self.heartbeat_interval = settings.heartbeat_interval
        self.poll_interval = settings.poll_interval
        self.idle = IdleBackoff(settings.poll_interval, settings.poll_max_interval)
        self.worker_id = new_worker_id()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: Job | None = None
        self._last_heartbeat: datetime | None = None
        self._lock = threading.Lock()
        self.jobs_done = 0
        self.jobs_failed = 0  # of jobs_done: those whose attempt failed (retried later, or failed)
        self.kind = kind
        self.started_at = clock.now()
        self._last_registered: datetime | None = None
        self._jobs_since_gc = 0
        self._last_gc = time.monotonic()
        # drain() only (eager mode re-raises it): (job id, what its handler raised).
        # The thread's worker keeps none: a traceback holds the handler's frames.
        self.keep_exceptions = False
        self.last_exception: tuple[str, BaseException] | None = None

    @property
    def store(self) -> Store:
        return self._store_getter()

    # -- one step -------------------------------------------------------------
    def run_once(self, claim_next: bool = False) -> Job | None:
        """Run at most one job: the one the previous step already claimed, or
        a newly claimed one. Returns the job it ran, or None.

        ``claim_next`` (the thread's loop): when the job completes, record it
        and claim the following job in one store call (one write transaction
        on SQLite instead of two). That job is then held as ``current`` (the
        scheduler renews its claim; shutdown hands it back) until the next
        step runs it. Without it (tests stepping a manual clock), each step
        claims for itself and holds nothing in between.
        """
        if self.stopping.is_set():
            return None
        with self._lock:
            job = self.current  # claimed by the previous step, or None
        if job is None:
            job = self.store.claim(self.worker_id, new_lock_token(), self.clock.now(), self.queues)
            if job is None:
                return None
            self._hold(job)
        started = time.monotonic()
        try:
            self._run(job, claim_next)
        finally:
            with self._lock:
                if self.current is job:  # else: it now holds the next job
                    self.current = None
            self.jobs_done += 1
            self._jobs_since_gc += 1
            ran = time.monotonic() - started
            if ran >= memory.GC_AFTER_JOB_SECONDS:
                self.collect_garbage(trim=True)
            elif time.monotonic() - self._last_gc >= memory.GC_MAX_INTERVAL_SECONDS:
                self.collect_garbage()
        return job

    def context(self, job: Job, job_type: JobType | None = None) -> JobContext:
        """The handler's view of a claimed job (``job_type``: its registered
        type, when the caller has looked it up already)."""
        if job_type is None:
            job_type = self.registry.get(job.type)
        timeout = job_type.timeout_seconds(self.settings) if job_type is not None else None
        deadline = self.clock.now() + timedelta(seconds=timeout) if timeout is not None else None
        return JobContext(job, store=self.store, clock=self.clock, settings=self.settings, app=self.app,
                          heartbeat=self.heartbeat, deadline=deadline)

    def _hold(self, job: Job) -> None:
        with self._lock:
            self.current = job
            self._last_heartbeat = job.heartbeat_at

    def collect_garbage(self, trim: bool = False) -> None:
        """A full collection now (``memory.full_collection``): after a job of
        memory.GC_AFTER_JOB_SECONDS or more (then with ``trim``), or once idle."""
        memory.full_collection(trim)
        self._jobs_since_gc = 0
        self._last_gc = time.monotonic()

    def _run(self, job: Job, claim_next: bool = False) -> None:
        if log.isEnabledFor(logging.INFO):  # attempt_text is built only for a line that is written
            log.info("[Worker] Processing job %s (type: %s, %s)", job.id, job.type, job.attempt_text)
        job_type = self.registry.get(job.type)
        if job_type is None:
            self._failed_attempt(job, f"no handler for job type {job.type} in this process", True)
            return
        try:
            payload = job_type.load_stored(job.payload, job.schema_fingerprint)
        except marshmallow.ValidationError as exc:
            self._failed_attempt(job, f"payload no longer validates: {exc.messages}", False)
            return
        context = self.context(job, job_type)
        try:
            with self.app.app_context():
                result = job_type.handler(payload, context)
                if result is not None and inspect.isawaitable(result):  # an async def handler
                    result = run_awaitable(result)
        except PermanentJobError as exc:
            self._keep(job, exc)
            self._failed_attempt(job, describe(exc), False, bounded_traceback(exc))
            return
        except Exception as exc:  # a handler's failure is the job's, never the worker's
            self._keep(job, exc)
            self._failed_attempt(job, describe(exc), True, bounded_traceback(exc))
            return
        if result is not None:  # None is JSON already (most handlers return nothing)
            try:
                result = json.loads(json.dumps(result))  # the same JSON on every store
            except (TypeError, ValueError) as exc:  # running it again would return the same thing
                self._failed_attempt(job, f"handler result is not JSON: {describe(exc)}", False)
                return
            unstorable = storable.problem(result)
            if unstorable:  # the same on every store; running it again would return the same thing
                self._failed_attempt(job, f"handler result cannot be stored: {unstorable}", False)
                return
        try:
            if claim_next and not self.stopping.is_set():
                completed, following = self.store.complete_and_claim(
                    job, self.clock.now(), result, self.worker_id, new_lock_token(), self.queues)
                if following is not None:
                    self._hold(following)
            else:
                completed = self.store.complete(job, self.clock.now(), result)
        except UnstorableValue as exc:  # the store refused what the check above let through
            self._failed_attempt(job, f"handler result cannot be stored: {describe(exc)}", False)
            return
        if not completed:
            log.warning("[Worker] ⚠️ Job %s finished but its claim was taken over; outcome not recorded", job.id)
            return
        log.info("[Worker] ✅ Job %s completed", job.id)
        for hook in job_type.on_complete:
            try:
                with self.app.app_context():
                    hook(self.store.get(job.id) or job)
            except Exception:
                log.exception("[Worker] completion hook for job %s raised", job.id)

    def _keep(self, job: Job, exc: BaseException) -> None:
        if self.keep_exceptions:
            self.last_exception = (job.id, exc)

    def _failed_attempt(self, job: Job, error: str, retryable: bool, trace: str | None = None) -> None:
        """Record a failed attempt (with the handler's traceback when it raised):
        a retry later, or the failure, as the policy decides."""
        self.jobs_failed += 1
        now = self.clock.now()
        delay = self.policy.next_delay_seconds(job, retryable)
        if delay is not None:
            recorded = self.store.retry_later(job, now, error, now + timedelta(seconds=delay), trace)
            if recorded:
                log.warning("[Worker] 🔄 Job %s will retry in %dms (%s): %s", job.id, round(delay * 1000),
                            attempt_text(job.retry_count + 2, job.max_retries), error)  # as the policy counts
        else:
            recorded = self.store.fail(job, now, error, trace)
            if recorded:
                log.error("[Worker] ❌ Job %s failed after %d attempt(s): %s", job.id, job.attempt_number, error)
        if not recorded:
            log.warning("[Worker] ⚠️ Job %s failed but its claim was taken over; outcome not recorded", job.id)

    # -- in the calling thread (run_pending, eager mode) ------------------------
    def drain(self, *, include_delayed: bool = False, until: str | None = None,
              limit: int | None = None) -> int:
        """Run jobs in the calling thread, one at a time, until none is
        runnable, whatever named queue it is on; returns how many ran. No heartbeats are due (nothing else
        runs meanwhile) and nothing is held between steps.

        ``include_delayed``: also delayed jobs and retries, without waiting:
        when nothing is runnable, this worker's view of the clock jumps to
        the earliest ``run_at`` of a pending job (the view only moves
        forward). Every time the store records (attempt start and end,
        completion) is on that view, so a job's attempts read as they would
        in production: the 1 s / 5 s / 15 s retry delays show between them.
        ``until``: run until that job is final (eager mode); the view jumps
        to its ``run_at`` whenever it waits. ``limit``: at most that many.
        """
        clock = self.clock = ShiftedClock(self.clock) if include_delayed or until else self.clock
        self.keep_exceptions = True
        ran = 0
        while limit is None or ran < limit:
            queues = None  # every named queue: run_pending runs all that is runnable
            if until is not None:
                target = self.store.get(until)
                if target is None or target.status is not JobStatus.PENDING:
                    break  # final (or processing: an outer call runs it)
                clock.catch_up(target.run_at)
                queues = (target.queue,)
            job = self.store.claim(self.worker_id, new_lock_token(), clock.now(), queues)
            if job is None:
                if until is not None or not include_delayed:
                    break
                # counts() gives the earliest run_at of pending jobs runnable at
                # its `now`: with a `now` past any run_at, of every pending job.
                earliest = self.store.counts(clock.now() + FAR_FUTURE)["oldestPendingAt"]
                if earliest is None or not clock.catch_up(earliest):
                    break
                continue
            self._run(job)
            ran += 1
        return ran

    # -- heartbeats (driven by the scheduler thread and by handlers) -----------
    def heartbeat(self, job: Job, progress: dict[str, Any] | None = None) -> bool:
        now = self.clock.now()
        ok = self.store.heartbeat(job, now, progress)
        if ok:
            self._last_heartbeat = now
        return ok

    def heartbeat_if_due(self, now: datetime) -> bool:
        """Renew the in-flight job's claim when the interval has passed."""
        with self._lock:
            job, last = self.current, self._last_heartbeat
        if job is None or (last is not None and (now - last).total_seconds() < self.heartbeat_interval):
            return False
        if not self.heartbeat(job):
            log.warning("[Worker] ⚠️ Lost the claim on job %s (taken over by another worker)", job.id)
            return False
        return True

    # -- the worker's record (renewed by the scheduler's tick) -------------------
    def record(self, now: datetime) -> dict[str, Any]:
        """What ``GET /workers`` shows of this worker."""
        with self._lock:
            current = self.current
        host, pid, _ = self.worker_id.rsplit(":", 2)
        return {"id": self.worker_id, "host": host, "pid": int(pid), "kind": self.kind,
                "queues": list(self.queues) if self.queues else ["*"], "startedAt": self.started_at,
                "lastSeenAt": now, "currentJobId": current.id if current else None,
                "jobsDone": self.jobs_done, "jobsFailed": self.jobs_failed}

    def register_if_due(self, now: datetime) -> bool:
        """Write this worker's record when a heartbeat interval has passed since the last."""
        last = self._last_registered
        if last is not None and (now - last).total_seconds() < self.heartbeat_interval:
            return False
        self.store.register_worker(self.record(now))
        self._last_registered = now
        return True

    def release_current(self, reason: str) -> Job | None:
        """Hand the in-flight job back to pending without counting a retry."""
        with self._lock:
            job = self.current
        if job is not None and self.store.release(job, self.clock.now(), reason):
            log.warning("[Worker] ↩️ Job %s handed back to pending: %s", job.id, reason)
            return job
        return None

    # -- the thread -----------------------------------------------------------
    def run_forever(self) -> None:
        failures = 0
        log.info("[Worker] Started %s", self.worker_id)
        while not self.stopping.is_set():
            try:
                self.wake.clear()
                job = self.run_once(claim_next=True)
            except Exception as exc:
                failures += 1
                backoff = min(MAX_BACKOFF_SECONDS, self.poll_interval * 2 ** min(failures, 10))
                log_loop_failure(log, "[Worker] Loop error", exc, failures, backoff)
                self.clock.wait(self.stopping, backoff)
                continue
            if failures:
                log.warning("[Worker] Loop recovered after %d failure(s)", failures)
            failures = 0
            if job is None:
                # Collect once the queue stayed dry for a whole wait, not each
                # time it runs dry: under a trickle (every add_job wakes us) that
                # was a 5-20 ms full collection per job, holding the GIL against
                # the request thread (HTTP enqueue fell to ~1/4 of its rate).
                woken = self.clock.wait(self.wake, self.idle.next)
                self.idle.waited(woken)
                if not woken and self._jobs_since_gc:
                    self.collect_garbage()
            else:
                self.idle.found_work()
        # A job claimed for a step that will not run now goes back at once
        # (else it would wait out the stuck threshold).
        try:
            self.release_current("worker stopped before the job started")
        except Exception:
            log.exception("[Worker] Could not hand back the job claimed for the next step")
        with self._lock:
            self.current = None
        log.info("[Worker] Stopped %s", self.worker_id)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
