"""The store contract, documented once here. The core defines it (it is what
the core needs); ``queue_service.stores`` implements it.

A store persists jobs and media and performs every state change as one atomic,
conditional write. It never reads a clock (``now`` is passed in), never raises
HTTP errors, and a store imports nothing of the package but ``core.jobs``,
``core.errors`` and this module. It decides no policy: whether a lost job is retried or failed,
and what counts as stuck, is decided by ``core.jobs.RetryPolicy`` and passed in.

Fencing: ``claim`` writes a fresh ``lock_token``. Every later write about that
attempt (``heartbeat``, ``complete``, ``retry_later``, ``fail``, ``release``)
takes the claimed Job and applies only while the stored token still equals
``job.lock_token``; otherwise it changes nothing and returns False. A worker
whose claim was taken over therefore cannot overwrite the new owner's outcome.

Driver errors are re-raised as ``StoreUnavailable`` (cannot reach / locked)
or ``StoreError`` (anything else), ``from`` the original.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .jobs import Job
from .write_watch import watch_writes


def media_etag(data: bytes) -> str:
    """A stored file's ETag; the stores compute it once, at write time."""
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass
class StoredFile:
    name: str
    data: bytes
    content_type: str
    created_at: datetime
    etag: str | None = None


@dataclass
class ScheduleState:
    """What the store keeps about one schedule (core.periodic)."""

    name: str
    last_slot: datetime | None = None
    last_job_id: str | None = None
    seen_at: datetime | None = None
    runs: int = 0                     # slots enqueued so far (across all processes)


#: Every outcome an attempt can end with (``retry``: to be run again later; ``released``:
#: handed back at shutdown, not a retry; ``lost``: its worker stopped renewing the claim),
#: then ``running``, which ``counts_by_type`` counts an attempt without an outcome as.
RUNNING = "running"
ATTEMPT_OUTCOMES = ("completed", "retry", "failed", "lost", "released", RUNNING)


@dataclass
class TypeCounts:
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)      # (type, status) -> jobs
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, outcome) -> attempts


def nearest_rank(values: list[float], percent: int) -> float | None:
    """The nearest-rank percentile of ``values`` (any order): the value at rank
    ceil(percent/100 * n) of the sorted list; None for no values. The SQLite
    store ranks in SQL with the same rule."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, (percent * len(ordered) + 99) // 100) - 1]


def timing_row(bucket: int, job_type: str | None, attempts: int, values: tuple) -> dict[str, Any]:
    """One row of ``Store.history_timings``; seconds rounded to milliseconds."""
    w50, w95, r50, r95 = (None if v is None else round(float(v), 3) for v in values)
    return {"bucket": bucket, "type": job_type, "attempts": attempts,
            "waitP50": w50, "waitP95": w95, "runP50": r50, "runP95": r95}


class Store(ABC):
    """Base class of the SQLite and MongoDB stores."""

    #: Short name shown in health output ("sqlite", "mongodb").
    kind = "abstract"
    #: True after a write was refused (StoreRefusesWrites), until one succeeds (core.write_watch).
    refusing_writes = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        watch_writes(cls)

    @abstractmethod
    def setup(self) -> None:
        """Create tables / collections and indexes. Idempotent; safe to call
        from several processes at once."""

    @abstractmethod
    def close(self) -> None:
        """Release connections held by this process."""

    @abstractmethod
    def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable otherwise."""

    # -- jobs ---------------------------------------------------------------
    @abstractmethod
    def insert(self, job: Job) -> tuple[str, bool]:
        """Insert a pending job. Returns ``(id, True)``.

        If ``job.idempotency_key`` is set and a pending or processing job
        already holds that key, nothing is written and ``(existing_id, False)``
        is returned. Atomic: two concurrent inserts with one key create one job.
        """

    @abstractmethod
    def insert_many(self, jobs: list[Job]) -> list[tuple[str, bool]]:
        """``insert`` for each job, in order, as one write: all of them or
        (on an error) none on SQLite, one ``insert_many`` on MongoDB. A key
        held by an active job, or by an earlier job of the same call, answers
        that job's id and False."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None if no job has this id."""

    @abstractmethod
    def claim(self, worker_id: str, lock_token: str, now: datetime,
              queues: tuple[str, ...] | None = None) -> Job | None:
        """Atomically take the next runnable job, or return None.

        Runnable: pending with ``run_at <= now``, in one of ``queues`` (None:
        any queue; a job stored before queues existed is in "default"). Order:
        highest priority first, then oldest ``created_at``. Indexed on the
        queue: jobs of other queues are not scanned. The job becomes processing with
        ``lock_token``, ``worker_id``, ``processed_at = heartbeat_at = now``,
        and a new entry ``{startedAt: now, worker: worker_id}`` appended to
        ``attempts``. No job is ever returned to two callers.
        """

    @abstractmethod
    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        """Renew the claim (``heartbeat_at = now``), storing ``progress`` when
        given. Fenced; False if the claim was lost."""

    @abstractmethod
    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        """processing -> completed with ``result``; ``completed_at = now``;
        the current attempt ends with outcome "completed". Fenced."""

    def complete_and_claim(self, job: Job, now: datetime, result: Any, worker_id: str,
                           lock_token: str, queues: tuple[str, ...] | None = None) -> tuple[bool, Job | None]:
        """``complete(job)``, then ``claim()`` the next runnable job for the
        same worker: (completed?, the claimed job or None). The worker's loop
        uses it so that a store that can do both in one write (SQLite: one
        transaction instead of two) does. Here: the two calls in turn."""
        return self.complete(job, now, result), self.claim(worker_id, lock_token, now, queues)

    @abstractmethod
    def retry_later(self, job: Job, now: datetime, error: str, run_at: datetime,
                    traceback: str | None = None) -> bool:
        """processing -> pending, ``retry_count + 1``, runnable at ``run_at``;
        the current attempt ends with outcome "retry", the error and
        ``nextDelaySeconds`` (and ``traceback`` when given; no key when not). Fenced."""

    @abstractmethod
    def fail(self, job: Job, now: datetime, error: str, traceback: str | None = None) -> bool:
        """processing -> failed with ``error``; ``completed_at = now``; the
        attempt keeps ``traceback`` when given. Fenced."""

    @abstractmethod
    def release(self, job: Job, now: datetime, reason: str) -> bool:
        """processing -> pending *without* counting a retry (graceful
        shutdown): runnable at once; the attempt ends with outcome
        "released". Fenced."""

    @abstractmethod
    def find_stuck(self, heartbeat_before: datetime, limit: int = 1000) -> list[Job]:
        """Processing jobs whose ``heartbeat_at < heartbeat_before``, oldest
        heartbeat first, at most ``limit``. A read: nothing changes. For the
        sweep only: a store may leave ``payload`` None and keep only the last
        attempt (MongoDB does: no whole attempts arrays are read)."""

    @abstractmethod
    def recover_lost(self, job: Job, heartbeat_before: datetime, now: datetime, error: str,
                     retry: bool) -> bool:
        """End the lost attempt of a job that ``find_stuck`` returned, with
        outcome "lost" and ``error``. ``retry``: back to pending, runnable now,
        ``retry_count + 1``; else failed with ``error``. Conditional on the
        token seen and on the heartbeat still being older than
        ``heartbeat_before``, so N processes sweeping at once recover each job
        once and a job whose worker renewed its claim meanwhile is left alone."""

    @abstractmethod
    def cancel(self, job_id: str, now: datetime) -> bool:
        """pending -> cancelled (``completed_at = now``). False if the job is
        missing or not pending."""

    @abstractmethod
    def requeue_failed(self, job_id: str, now: datetime) -> bool:
        """failed -> pending for a manual retry: runnable now, ``retry_count``
        back to 0 (a fresh retry budget), error cleared, attempts kept.
        False if missing, not failed, or its idempotency key is now held by
        another active job."""

    @abstractmethod
    def run_now(self, job_id: str, now: datetime) -> bool:
        """A pending job not yet due (delayed, or waiting for a retry) becomes
        runnable at once: ``run_at = now``; no retry is counted. False if
        missing, not pending, or already due."""

    @abstractmethod
    def counts(self, now: datetime) -> dict[str, Any]:
        """``{pending, scheduled, processing, completed, failed, cancelled, total,
        oldestPendingAt, oldestProcessingAt}``: ``scheduled`` counts the pending
        jobs with ``run_at > now`` (also counted in ``pending``); the times are the earliest
        ``run_at`` among runnable pending jobs and the earliest
        ``processed_at`` among processing jobs, or None."""

    @abstractmethod
    def counts_by_queue(self, now: datetime) -> dict[str, dict[str, Any]]:
        """Per queue that holds any job: ``{status: count, ...,
        "oldestPendingAt": earliest run_at among its runnable pending jobs or
        None}``; statuses without jobs may be missing."""

    @abstractmethod
    def counts_by_type(self, now: datetime | None = None) -> TypeCounts:
        """Every stored job counted by ``(type, status)``, and every attempt
        recorded on them by ``(type, outcome)``; an attempt still running
        (no outcome yet) counts as ``"running"``. Grouped in the store. Given
        ``now`` (the queue's clock), a store may answer from a result at most
        a few seconds old (MongoDB: 10 s)."""

    @abstractmethod
    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None,
                  queue: str | None = None, summary: bool = False, due_by: datetime | None = None,
                  due_after: datetime | None = None) -> list[Job]:
        """Jobs newest first (``created_at`` desc, then id desc), filtered by
        status, type and queue, strictly after the cursor ``(created_at, id)``;
        ``due_by``/``due_after``: only jobs with ``run_at <= due_by`` / ``run_at > due_after``.
        ``summary``: a list view's jobs: ``payload``, ``result`` and ``progress``
        are None (not read where the store can avoid it), attempts keep at least
        ``startedAt`` (their number is right)."""

    @abstractmethod
    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        """Delete completed jobs with ``completed_at < completed_before`` and
        failed or cancelled jobs with ``completed_at < finished_before``.
        Returns how many went."""

    # -- operator views -------------------------------------------------------
    @abstractmethod
    def history(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        """Attempts that ended with ``since <= endedAt < until``, grouped in the
        store by bucket (``floor(endedAt epoch / bucket_seconds)``) and type:
        ``[{"bucket": epoch seconds of its start, "type", "completed": attempts
        that completed, "failed": attempts that failed (outcome failed, retry or
        lost)}]`` sorted by bucket then type; empty buckets are missing. A
        failure stays counted after the job is retried and completes."""

    @abstractmethod
    def jobs_with_id_prefix(self, prefix: str, limit: int = 20) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (lowercase), by id, at most
        ``limit``: a range on the primary key, ``prefix <= id < prefix + "g"``."""

    @abstractmethod
    def history_timings(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        """Over the same attempts as ``history``, per bucket and type, and per
        bucket over all types (``type`` None, first in its bucket): ``{"bucket",
        "type", "attempts", "waitP50", "waitP95", "runP50", "runP95"}`` (see
        ``timing_row``): the nearest-rank median and p95, in seconds, of the
        queue latency (``waitSeconds``: the job's ``runAt`` to the attempt's
        ``startedAt``, recorded when the attempt ends; None for attempts
        recorded before it was) and of the run time (``startedAt`` to
        ``endedAt``). Sorted by bucket, then type."""

    @abstractmethod
    def register_worker(self, record: dict[str, Any]) -> None:
        """Insert or replace the worker record ``record["id"]`` (keys: id,
        host, pid, kind, queues, startedAt, lastSeenAt, currentJobId,
        jobsDone, jobsFailed; times are aware datetimes)."""

    @abstractmethod
    def list_workers(self) -> list[dict[str, Any]]:
        """Every worker record, most recently seen first."""

    @abstractmethod
    def purge_workers(self, seen_before: datetime) -> int:
        """Delete worker records with ``lastSeenAt < seen_before``; how many went."""
    # -- schedules (core.periodic) -------------------------------------------
    @abstractmethod
    def enqueue_slot(self, schedule_name: str, slot: datetime, job: Job, now: datetime) -> bool:
        """Insert ``job`` (pending, carrying ``scheduled_by``/``slot``) for
        ``slot`` of the schedule, and record ``slot`` as its last slot (with
        ``job.id``, ``seen_at = now`` and ``runs + 1``), only if ``slot`` is later than the
        stored last slot. One atomic step: N processes racing for one slot
        enqueue one job; a slot at or before the stored one is refused
        (False, nothing written). ``job.id`` is derived from (name, slot), so
        a second insert of the same slot is refused by the id too."""

    @abstractmethod
    def schedule_states(self) -> dict[str, ScheduleState]:
        """Every stored schedule state, by name."""

    @abstractmethod
    def touch_schedules(self, names: list[str], now: datetime) -> None:
        """``seen_at = now`` for these schedules (created when missing)."""

    @abstractmethod
    def purge_schedules(self, seen_before: datetime) -> int:
        """Delete schedule states with ``seen_at < seen_before``; how many went."""

    # -- media --------------------------------------------------------------
    @abstractmethod
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        """Store (or replace) a file under ``name``."""

    @abstractmethod
    def get_file(self, name: str) -> StoredFile | None:
        """The file (with its ``etag``), or None."""

    def file_etag(self, name: str) -> str | None:
        """The file's ETag without its data (stored at write time), or None if
        there is no such file. Here: read from the file, for stores without one."""
        stored = self.get_file(name)
        if stored is None:
            return None
        return stored.etag or media_etag(stored.data)

    @abstractmethod
    def purge_files(self, created_before: datetime) -> int:
        """Delete files created before the given time; returns how many."""
