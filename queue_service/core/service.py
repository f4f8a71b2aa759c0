"""The queue's operations on a Store: what the Python API, the REST API, the
CLI and the dashboard all call.

``submit`` (and ``submit_many``) is the one submission path: ``submission.build_job``
checks the options against ``core.limits``, then the payload against the type's
schema, and nothing is written unless both pass. Errors name the field in
Python's words (``run_at``, ``max_retries``); the web layer renames them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from . import bulk, history
from .store import TypeCounts
from .errors import InvalidTransition, JobNotFound, StoreError, ValidationError
from .jobs import Job, JobStatus, iso
from .limits import MAX_BULK_JOBS, PAGE_LIMIT_RANGE, QUEUE_NAME_MESSAGE, is_queue_name
from .lazy_store import describe_cause, public_reason
from .periodic import overview as schedules_overview
from .registry import Registry
from .runtime import Runtime
from .scheduler import recover_stuck
from .submission import build_job, is_int
from .write_watch import REFUSES_WRITES

log = logging.getLogger("queue_service")

STATUS_VALUES = tuple(s.value for s in JobStatus)


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` answers: the job's id, its status, and whether this
    call created it (False: an active job already held the idempotency key)."""

    id: str
    status: str
    created: bool


def _age_seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


class QueueService:
    def __init__(self, registry: Registry, runtime: Runtime):
        self.registry = registry
        self.runtime = runtime
        self.settings = runtime.settings
        self.clock = runtime.clock
        self.policy = runtime.settings.retry_policy

    @property
    def store(self) -> Any:
        return self.runtime.store

    # -- enqueue --------------------------------------------------------------
    def submit(self, job_type: str, payload: Any, *, priority: int = 0,
               delay: float | timedelta | None = None, run_at: datetime | None = None,
               max_retries: int | None = None, idempotency_key: str | None = None,
               queue: str | None = None) -> Submitted:
        """Validate and enqueue a job. Raises ValidationError (field ->
        messages) or UnknownJobType before anything is written."""
        job = build_job(self.registry, self.settings, self.clock.now(), job_type, payload, priority=priority,
                        delay=delay, run_at=run_at, max_retries=max_retries, idempotency_key=idempotency_key,
                        queue=queue)
        return self._submitted(job, *self.store.insert(job))

    def submit_many(self, items: Any, known_errors: dict[int, Any] | None = None) -> list[Submitted]:
        """Validate every item (a dict of ``type``, ``payload`` and
        ``submit``'s options), then insert them all in one store call (one
        transaction on SQLite, one insert_many on MongoDB). Nothing is
        written unless every item is valid: the ValidationError names each bad
        item by its index (``{"jobs": {3: {"payload": ...}}}``). Idempotency
        keys are honoured per item. Answers in the order given.
        ``known_errors``: problems the caller already found in some items (the
        REST envelope's), by index; reported with the rest."""
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK_JOBS:
            raise ValidationError({"jobs": [f"Must be a list of 1 to {MAX_BULK_JOBS} jobs."]})
        now = self.clock.now()
        jobs: list[Job] = []
        errors: dict[int, Any] = dict(known_errors or {})
        for index, item in enumerate(items):
            if index in errors:
                continue
            try:
                if not isinstance(item, dict):
                    raise ValidationError({"_schema": ["Must be an object with type and payload."]})
                options = {k: v for k, v in item.items() if k not in ("type", "payload")}
                jobs.append(build_job(self.registry, self.settings, now, item.get("type"), item.get("payload"),
                                      **options))
            except TypeError as exc:  # an option add_job does not take
                errors[index] = {"_schema": [f"Unknown option: {exc}"]}
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError({"jobs": errors})
        return [self._submitted(job, job_id, created)
                for job, (job_id, created) in zip(jobs, self.store.insert_many(jobs))]

    def _submitted(self, job: Job, job_id: str, created: bool) -> Submitted:
        if not created:
            log.info("[Queue] Job %s already queued for idempotency key %r", job_id, job.idempotency_key)
            existing = self.store.get(job_id)
            return Submitted(job_id, str(existing.status) if existing else "pending", False)
        log.info("[Queue] Added job %s (type: %s, priority: %d)", job_id, job.type, job.priority)
        if job.run_at <= job.created_at:
            self.runtime.wake_worker(job.queue)
        if self.settings.eager:
            return Submitted(job_id, self.run_eagerly(job_id), True)
        return Submitted(job_id, "pending", True)

    # -- reads ----------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def list(self, *, status: str | None = None, job_type: str | None = None, limit: int = 50,
             before: str | None = None, queue: str | None = None, due: str | None = None,
             summary: bool = False) -> list[Job]:
        """Jobs newest first; ``before`` is the id of the last job of the previous page;
        ``due``: "now" (pending and runnable) or "later" (pending, runAt in the future);
        ``summary``: without payload, result and progress (``Store.list_jobs``)."""
        errors: dict[str, Any] = {}
        due_by = due_after = None
        if due is not None:
            if due not in ("now", "later"):
                errors["due"] = ['Must be "now" or "later".']
            if status not in (None, JobStatus.PENDING.value):
                return []  # only pending jobs are due now or later
            status = JobStatus.PENDING.value
            due_by, due_after = (self.clock.now(), None) if due == "now" else (None, self.clock.now())
        if status is not None and status not in STATUS_VALUES:
            errors["status"] = [f"Must be one of: {', '.join(STATUS_VALUES)}."]
        if not is_int(limit) or not PAGE_LIMIT_RANGE[0] <= limit <= PAGE_LIMIT_RANGE[1]:
            errors["limit"] = [f"Must be an integer between {PAGE_LIMIT_RANGE[0]} and {PAGE_LIMIT_RANGE[1]}."]
        cursor = None
        if before is not None:
            anchor = self.store.get(before)
            if anchor is None:
                errors["before"] = ["Unknown job id."]
            else:
                cursor = (anchor.created_at, anchor.id)
        if queue is not None and not is_queue_name(queue):
            errors["queue"] = [QUEUE_NAME_MESSAGE]
        if errors:
            raise ValidationError(errors)
        return self.store.list_jobs(status, job_type, limit, cursor, queue, summary=summary,
                                    due_by=due_by, due_after=due_after)

    def find_by_id_prefix(self, prefix: str, limit: int = 20) -> list[Job]:
        """Jobs whose id starts with ``prefix``: 4 hex digits, then up to 32 more or dashes; any case."""
        if not isinstance(prefix, str) or not re.fullmatch(r"[0-9a-fA-F]{4}[0-9a-fA-F-]{0,32}", prefix):
            raise ValidationError({"idPrefix": ["Must be 4 to 36 characters of a job id (hex digits, dashes)."]})
        return self.store.jobs_with_id_prefix(prefix.lower(), limit)

    def stats(self) -> dict[str, Any]:
        now = self.clock.now()
        counts = self.store.counts(now)
        stats = {key: counts[key] for key in ("pending", "scheduled", "processing", "completed", "failed",
                                              "cancelled", "total")}
        stats["oldestPendingAge"] = _age_seconds(now, counts["oldestPendingAt"])
        stats["oldestProcessingAge"] = _age_seconds(now, counts["oldestProcessingAt"])
        by_queue = self.store.counts_by_queue(now)
        stats["queues"] = {name: {**{s: row.get(s, 0) for s in STATUS_VALUES},
                                  "oldestPendingAge": _age_seconds(now, row.get("oldestPendingAt"))}
                           for name, row in sorted(by_queue.items())}
        return stats

    def counts(self) -> dict[str, Any]:
        """The store's counts by status and the oldest times (``Store.counts``)."""
        return self.store.counts(self.clock.now())

    def counts_by_queue(self) -> dict[str, dict[str, Any]]:
        """``Store.counts_by_queue`` now."""
        return self.store.counts_by_queue(self.clock.now())

    def counts_by_type(self) -> TypeCounts:
        return self.store.counts_by_type(self.clock.now())

    def is_stuck(self, job: Job) -> bool:
        return self.policy.is_stuck(job, self.clock.now())

    def stuck_jobs(self) -> list[Job]:
        return self.store.find_stuck(self.policy.stuck_before(self.clock.now()))

    def schedules(self) -> list[dict[str, Any]]:
        """The periodic schedules, their next run, last slot and last job."""
        return schedules_overview(self.runtime.schedules, self.store, self.clock.now())

    # -- changes --------------------------------------------------------------
    def recover_stuck(self) -> int:
        """Recover jobs whose heartbeat is older than QUEUE_STUCK_AFTER now.
        Returns how many were recovered (requeued, or failed when out of retries)."""
        requeued, failed = recover_stuck(self.store, self.policy, self.clock.now())
        if requeued or failed:
            log.info("[Queue] Cleanup: %d stuck job(s) requeued, %d failed", requeued, failed)
        return requeued + failed

    def _transition(self, job_id: str, action: str, change: Callable[[str, datetime], bool]) -> Job:
        """Apply a store transition; if it changed nothing, say why."""
        if not change(job_id, self.clock.now()):
            job = self.store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            raise InvalidTransition(job_id, str(job.status), action)
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """pending -> cancelled. Raises JobNotFound or InvalidTransition."""
        job = self._transition(job_id, "cancel", self.store.cancel)
        log.info("[Queue] Cancelled job %s", job_id)
        return job

    def retry(self, job_id: str) -> Job:
        """failed -> pending with a fresh retry budget. Raises JobNotFound or
        InvalidTransition."""
        job = self._transition(job_id, "retry", self.store.requeue_failed)
        log.info("[Queue] Job %s requeued by hand", job_id)
        self.runtime.wake_worker()
        if self.settings.eager:
            self.run_eagerly(job_id)
            job = self.store.get(job_id) or job
        return job

    def run_now(self, job_id: str) -> Job:
        """A pending job not yet due becomes runnable now (no retry counted).
        Raises JobNotFound or InvalidTransition (not pending, or already due)."""
        job = self._transition(job_id, "run now", self.store.run_now)
        log.info("[Queue] Job %s made due now by hand", job_id)
        self.runtime.wake_worker(job.queue)
        return job

    # -- bulk operator actions (core.bulk) ------------------------------------
    def bulk_retry(self, selection: dict[str, Any]) -> bulk.BulkResult:
        """Retry the failed jobs named by ``{"ids": [...]}`` or a filter
        ``{"status": "failed", "type", "queue"}``; each one as ``retry`` does."""
        result = bulk.apply(self.store, bulk.parse_selection(selection, "failed"), "failed",
                            self.store.requeue_failed, self.clock.now)
        log.info("[Queue] Bulk retry: %d matched, %d requeued", result.matched, result.changed)
        if result.changed:
            self.runtime.wake_worker()
        return result

    def bulk_cancel(self, selection: dict[str, Any]) -> bulk.BulkResult:
        """Cancel the pending jobs named by ids or a filter (``status`` pending)."""
        result = bulk.apply(self.store, bulk.parse_selection(selection, "pending"), "pending",
                            self.store.cancel, self.clock.now)
        log.info("[Queue] Bulk cancel: %d matched, %d cancelled", result.matched, result.changed)
        return result

    # -- operator views -------------------------------------------------------
    def history(self, hours: int = 24) -> dict[str, Any]:
        return history.history(self.store, self.clock.now(), hours)

    def workers(self) -> list[dict[str, Any]]:
        """Every worker record, with ``alive``: seen within 3 heartbeat intervals."""
        now = self.clock.now()
        gone_after = 3 * max(self.settings.heartbeat_interval, 1.0)
        out = []
        for record in self.store.list_workers():
            seen = record.get("lastSeenAt")
            alive = seen is not None and (now - seen).total_seconds() <= gone_after
            out.append({**record, "startedAt": iso(record.get("startedAt")), "lastSeenAt": iso(seen),
                        "alive": alive})
        return out

    # -- health ---------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        runtime = self.runtime
        now = self.clock.now()
        worker = runtime.worker
        current = worker.current if worker is not None else None
        problems: list[str] = []
        stats = None
        try:
            self.store.ping()
            stats = self.stats()
            if self.store.refusing_writes:
                problems.append(REFUSES_WRITES)  # reads answer; the last write was refused
        except StoreError as exc:  # generic words here; the driver's text (hosts, ports) to the log
            problems.append(public_reason(exc))
            log.debug("[Queue] health: %s", describe_cause(exc))
        started = runtime.started_here
        if started and not runtime.running:
            problems.append("a queue thread has died")
        scheduler = runtime.scheduler
        if started and scheduler is not None and scheduler.last_tick_at is not None:
            late = (now - scheduler.last_tick_at).total_seconds()
            if late > 3 * max(self.settings.heartbeat_interval, 1.0) + 5:
                problems.append(f"scheduler has not ticked for {late:.0f}s")
        return {
            "healthy": not problems,
            "initialized": True,
            "problems": problems,
            "store": runtime.store_kind,
            "stats": stats,
            "worker": {
                "running": started and runtime.running,
                "workerId": worker.worker_id if worker else None,
                "isProcessing": current is not None,
                "processingJobId": current.id if current else None,
                "maxRetries": self.settings.max_retries,
                "queues": list(runtime.worker_queues) if runtime.worker_queues else ["*"],
            },
            "timestamp": iso(now),
        }

    # -- in the calling thread (tests) ----------------------------------------
    def run_pending(self, *, include_delayed: bool = False, limit: int | None = None) -> int:
        """Run every runnable job in the calling thread, one at a time, until
        none is left; ``include_delayed``: delayed jobs and retries too,
        without waiting (``Worker.drain``). Returns how many ran."""
        return self.runtime.make_worker().drain(include_delayed=include_delayed, limit=limit)

    def run_eagerly(self, job_id: str) -> str:
        """QUEUE_EAGER: run ``job_id`` (and what is runnable before it) in the
        calling thread until it is final, retries at once; returns its status.
        With QUEUE_EAGER_RAISE, a job that failed re-raises what its handler
        raised last (the failure is recorded first, as in production)."""
        worker = self.runtime.make_worker()
        worker.drain(until=job_id)
        job = self.store.get(job_id)
        status = str(job.status) if job is not None else "pending"
        raised = worker.last_exception
        if self.settings.eager_raise and status == "failed" and raised is not None and raised[0] == job_id:
            raise raised[1]
        return status
