"""Turning ``add_job``'s arguments into a Job, or a ValidationError.

The options are checked against ``core.limits`` first, then the payload
against the type's schema; every problem is reported at once, by field.
A schedule (``core.periodic.make_schedule``) passes the same checks of its
type, priority and payload once, at registration, and ``new_job`` makes the
Job of each of its slots as it makes add_job's.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any, Iterable

import marshmallow

from .clock import ensure_aware
from .errors import UnknownJobType, ValidationError
from . import storable
from .jobs import Job, new_job_id
from .limits import (MAX_DELAY_SECONDS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_RETRIES_LIMIT, PRIORITY_RANGE,
                     QUEUE_NAME_MESSAGE, is_queue_name)
from .registry import JobType, Registry
from .settings import Settings


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_job(registry: Registry, settings: Settings, now: datetime, job_type: Any, payload: Any, *,
              priority: int = 0, delay: float | timedelta | None = None, run_at: datetime | None = None,
              max_retries: int | None = None, idempotency_key: str | None = None,
              queue: str | None = None) -> Job:
    """A new pending Job, not yet stored. Raises UnknownJobType or ValidationError."""
    spec = registered_type(registry, job_type)
    errors: dict[str, Any] = {}
    when = _run_at(now, delay, run_at, errors)
    check_priority(priority, errors)
    if max_retries is not None:
        if not is_int(max_retries):
            errors["max_retries"] = ["Must be an integer."]
        elif not 0 <= max_retries <= MAX_RETRIES_LIMIT:
            errors["max_retries"] = [f"Must be between 0 and {MAX_RETRIES_LIMIT}."]
    if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                        or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS):
        errors["idempotency_key"] = [f"Must be a string of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."]
    if queue is not None and not is_queue_name(queue):
        errors["queue"] = [QUEUE_NAME_MESSAGE]
    stored = stored_payload(spec, payload, errors)
    if errors:
        raise ValidationError(errors)
    return new_job(spec, new_job_id(), stored, now, when, settings.max_retries, settings.retry_delays,
                   priority=priority, max_retries=max_retries, queue=queue, idempotency_key=idempotency_key)


def registered_type(registry: Registry, job_type: Any) -> JobType:
    """The registered type named ``job_type``; raises UnknownJobType."""
    spec = registry.get(job_type) if isinstance(job_type, str) else None
    if spec is None:
        raise UnknownJobType(str(job_type), registry.names())
    return spec


def check_priority(priority: Any, errors: dict[str, Any]) -> None:
    """A job's priority against ``core.limits``; a problem goes into ``errors``."""
    if not is_int(priority):
        errors["priority"] = ["Must be an integer."]
    elif not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        errors["priority"] = [f"Must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}."]


def stored_payload(spec: JobType, payload: Any, errors: dict[str, Any]) -> Any:
    """``payload`` as a job of ``spec`` stores it: loaded by the type's schema,
    dumped, as JSON, and storable. A problem goes into ``errors["payload"]``
    (the return value is then None)."""
    try:
        stored = as_json(spec.dump(spec.load(payload)))
    except marshmallow.ValidationError as exc:
        errors["payload"] = exc.messages
    except (TypeError, ValueError) as exc:
        errors["payload"] = {"_schema": [f"Payload is not JSON-serializable: {exc}"]}
    else:
        unstorable = storable.problem(stored)
        if not unstorable:
            return stored
        errors["payload"] = {"_schema": [f"Payload cannot be stored: {unstorable}."]}
    return None


def new_job(spec: JobType, job_id: str, payload: Any, now: datetime, run_at: datetime,
            default_max_retries: int, default_retry_delays: Iterable[float], *, priority: int = 0,
            max_retries: int | None = None, queue: str | None = None, idempotency_key: str | None = None,
            scheduled_by: str | None = None, slot: datetime | None = None) -> Job:
    """A pending Job of ``spec`` from parts already checked (``payload`` in
    its stored form): the job's own max_retries and queue, else the type's
    (Registry.add checked its queue), else the defaults (the settings'; the
    queue "default"); the type's retry delays; and the type's schema
    fingerprint, so the worker may skip loading
    the payload again (core/fingerprint.py). Every job is made here: add_job's
    and each slot of a schedule (core/periodic.py)."""
    if max_retries is None:
        max_retries = spec.max_retries if spec.max_retries is not None else default_max_retries
    return Job(id=job_id, type=spec.name, payload=payload, priority=priority, max_retries=max_retries,
               retry_delays=list(spec.retry_delays or default_retry_delays), created_at=now, run_at=run_at,
               idempotency_key=idempotency_key, queue=spec.queue_for(queue),
               scheduled_by=scheduled_by, slot=slot, schema_fingerprint=spec.fingerprint)


_SCALARS = (str, int, float, bool, type(None))


def as_json(value: Any) -> Any:
    """``value`` as the JSON both stores will hold (tuples become lists, keys
    strings...): a round trip through ``json``, skipped for the common case of a
    flat object of strings, numbers, booleans and nulls, which is JSON already
    (the round trip was ~8 us of a ~60 us enqueue). Raises TypeError or
    ValueError for what JSON cannot hold."""
    if type(value) is dict and all(type(k) is str and type(v) in _SCALARS for k, v in value.items()):
        return value
    return json.loads(json.dumps(value))


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
