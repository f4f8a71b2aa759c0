"""Rows of the SQLite store <-> Job records.

Times are REAL epoch seconds in the table (``ts``/``dt``); attempt times are
ISO 8601 text inside the JSON ``attempts`` list. A row is read positionally in
the order of ``queries.COLUMNS`` (a name lookup in sqlite3.Row scans the column
names case-insensitively, ~20 times per job).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from ...core.jobs import Job, JobStatus


def ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def dt(value: float | None) -> datetime | None:
    if value is None:
        return None
    # Round to the microsecond so a float round trip returns the same datetime.
    return datetime.fromtimestamp(round(value, 6), timezone.utc)


def decode_attempts(text: str) -> list[dict[str, Any]]:
    if text == "[]":
        return []
    attempts = json.loads(text)
    for attempt in attempts:
        for key in ("startedAt", "endedAt"):
            if attempt.get(key):
                attempt[key] = datetime.fromisoformat(attempt[key])  # 3.11+ reads the "Z"
    return attempts


# retry_delays is nearly always one of a few lists (the app's or the type's):
# each text is decoded, and each list encoded, once.
@lru_cache(maxsize=64)
def decoded_delays(text: str) -> tuple[float, ...]:
    return tuple(json.loads(text))


@lru_cache(maxsize=64)
def encoded_delays(delays: tuple[float, ...]) -> str:
    return json.dumps(list(delays))


def row_to_job(row: tuple) -> Job:
    """A row of ``queries.COLUMNS`` -> Job (positional: a name lookup in sqlite3.Row
    scans the column names case-insensitively, ~20 times per job)."""
    (job_id, job_type, payload, status, priority, retry_count, max_retries, retry_delays,
     created_at, run_at, processed_at, completed_at, heartbeat_at, worker_id, lock_token,
     error, result, progress, attempts, idempotency_key, queue, scheduled_by, slot, schema_fingerprint,
     attempts_dropped) = row
    return Job(
        id=job_id,
        type=job_type,
        payload=json.loads(payload),
        status=JobStatus(status),
        priority=priority,
        retry_count=retry_count,
        max_retries=max_retries,
        retry_delays=list(decoded_delays(retry_delays)),
        created_at=dt(created_at),
        run_at=dt(run_at),
        processed_at=dt(processed_at),
        completed_at=dt(completed_at),
        heartbeat_at=dt(heartbeat_at),
        worker_id=worker_id,
        lock_token=lock_token,
        error=error,
        result=None if result is None else json.loads(result),
        progress=None if progress is None else json.loads(progress),
        attempts=decode_attempts(attempts),
        idempotency_key=idempotency_key,
        queue=queue,
        scheduled_by=scheduled_by,
        slot=dt(slot),
        schema_fingerprint=schema_fingerprint,
        attempts_dropped=attempts_dropped or 0,
    )


# One encoder, made once: json.dumps with any option builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def insert_params(job: Job) -> tuple:
    return (job.id, job.type, _COMPACT.encode(job.payload), str(job.status),
            job.priority, job.retry_count, job.max_retries, encoded_delays(tuple(job.retry_delays)),
            ts(job.created_at), ts(job.run_at), job.idempotency_key, job.queue, job.scheduled_by, ts(job.slot),
            job.schema_fingerprint)
