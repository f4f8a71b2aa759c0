"""The queue's operations on a Store: what the Python API, the REST API, the
CLI and the dashboard all call.

``submit`` is the one submission path: it checks the options against
``core.limits``, then the payload against the type's schema, and writes
nothing unless both pass. Errors name the field in Python's words
(``run_at``, ``max_retries``); the web layer renames them for its callers.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import marshmallow

from .store import TypeCounts
from .clock import ensure_aware
from .errors import InvalidTransition, JobNotFound, StoreError, UnknownJobType, ValidationError
from .jobs import DEFAULT_QUEUE, Job, JobStatus, RetryPolicy, iso, new_job_id
from .limits import (MAX_DELAY_SECONDS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_RETRIES_LIMIT, PAGE_LIMIT_RANGE, PRIORITY_RANGE,
                     QUEUE_NAME)
from .registry import Registry
from .runtime import Runtime
from .scheduler import recover_stuck

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class QueueService:
    def __init__(self, registry: Registry, runtime: Runtime):
        self.registry = registry
        self.runtime = runtime
        self.settings = runtime.settings
        self.clock = runtime.clock
        self.policy = RetryPolicy(runtime.settings.stuck_after)

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
        spec = self.registry.get(job_type) if isinstance(job_type, str) else None
        if spec is None:
            raise UnknownJobType(str(job_type))
        errors: dict[str, Any] = {}
        now = self.clock.now()
        when = self._run_at(now, delay, run_at, errors)
        if not _is_int(priority):
            errors["priority"] = ["Must be an integer."]
        elif not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            errors["priority"] = [f"Must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}."]
        retries = spec.max_retries if spec.max_retries is not None else self.settings.max_retries
        if max_retries is not None:
            if not _is_int(max_retries):
                errors["max_retries"] = ["Must be an integer."]
            elif not 0 <= max_retries <= MAX_RETRIES_LIMIT:
                errors["max_retries"] = [f"Must be between 0 and {MAX_RETRIES_LIMIT}."]
            else:
                retries = max_retries
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS):
            errors["idempotency_key"] = [f"Must be a string of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."]
        queue_name = queue if queue is not None else (spec.queue or DEFAULT_QUEUE)
        if not isinstance(queue_name, str) or not re.fullmatch(QUEUE_NAME, queue_name):
            errors["queue"] = [f"Must match {QUEUE_NAME}."]
        try:
            stored_payload = json.loads(json.dumps(spec.dump(spec.load(payload))))  # the same JSON on every store
        except marshmallow.ValidationError as exc:
            errors["payload"] = exc.messages
        except (TypeError, ValueError) as exc:
            errors["payload"] = {"_schema": [f"Payload is not JSON-serializable: {exc}"]}
        if errors:
            raise ValidationError(errors)
        job = Job(id=new_job_id(), type=job_type, payload=stored_payload, priority=priority,
                  max_retries=retries, retry_delays=list(spec.retry_delays or self.settings.retry_delays),
                  created_at=now, run_at=when, idempotency_key=idempotency_key, queue=queue_name)
        job_id, created = self.store.insert(job)
        if not created:
            log.info("[Queue] Job %s already queued for idempotency key %r", job_id, idempotency_key)
            existing = self.store.get(job_id)
            return Submitted(job_id, str(existing.status) if existing else "pending", False)
        log.info("[Queue] Added job %s (type: %s, priority: %d)", job_id, job_type, priority)
        if when <= now:
            self.runtime.wake_worker(queue_name)
        return Submitted(job_id, "pending", True)

    @staticmethod
    def _run_at(now: datetime, delay: Any, run_at: Any, errors: dict[str, Any]) -> datetime:
        if delay is not None and run_at is not None:
            errors["delay"] = ["Give delay or run_at, not both."]
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
                errors["delay"] = ["Must be a number of seconds."]
            elif not 0 <= seconds <= MAX_DELAY_SECONDS:
                errors["delay"] = [f"Must be between 0 and {MAX_DELAY_SECONDS} seconds."]
            else:
                return now + timedelta(seconds=seconds)
        elif run_at is not None:
            try:
                when = max(now, ensure_aware(run_at, "run_at"))
            except (ValueError, AttributeError, TypeError):
                errors["run_at"] = ["Must be a timezone-aware datetime."]
            else:
                if when <= now + timedelta(seconds=MAX_DELAY_SECONDS):
                    return when
                errors["run_at"] = [f"Must be at most {MAX_DELAY_SECONDS} seconds from now."]
        return now

    # -- reads ----------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def list(self, *, status: str | None = None, job_type: str | None = None, limit: int = 50,
             before: str | None = None, queue: str | None = None) -> list[Job]:
        """Jobs newest first; ``before`` is the id of the last job of the previous page."""
        errors: dict[str, Any] = {}
        if status is not None and status not in STATUS_VALUES:
            errors["status"] = [f"Must be one of: {', '.join(STATUS_VALUES)}."]
        if not _is_int(limit) or not PAGE_LIMIT_RANGE[0] <= limit <= PAGE_LIMIT_RANGE[1]:
            errors["limit"] = [f"Must be an integer between {PAGE_LIMIT_RANGE[0]} and {PAGE_LIMIT_RANGE[1]}."]
        cursor = None
        if before is not None:
            anchor = self.store.get(before)
            if anchor is None:
                errors["before"] = ["Unknown job id."]
            else:
                cursor = (anchor.created_at, anchor.id)
        if queue is not None and not (isinstance(queue, str) and re.fullmatch(QUEUE_NAME, queue)):
            errors["queue"] = [f"Must match {QUEUE_NAME}."]
        if errors:
            raise ValidationError(errors)
        return self.store.list_jobs(status, job_type, limit, cursor, queue)

    def stats(self) -> dict[str, Any]:
        now = self.clock.now()
        counts = self.store.counts(now)
        stats = {key: counts[key] for key in ("pending", "processing", "completed", "failed", "cancelled", "total")}
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

    def counts_by_type(self) -> TypeCounts:
        return self.store.counts_by_type()

    def is_stuck(self, job: Job) -> bool:
        return self.policy.is_stuck(job, self.clock.now())

    def stuck_jobs(self) -> list[Job]:
        return self.store.find_stuck(self.policy.stuck_before(self.clock.now()))

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
        return job

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
        except StoreError as exc:
            problems.append(f"store: {exc}")
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
