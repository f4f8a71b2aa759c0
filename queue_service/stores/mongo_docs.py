"""MongoDB documents <-> Job, shared by the store and its mixins. Payload,
result and progress are stored with their keys escaped (``mongo_keys``) and
unescaped here, on every read."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..core.jobs import DEFAULT_QUEUE, Job, JobStatus
from .mongo_keys import unescape


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # a host client without tz_aware: BSON dates are UTC
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _doc_to_job(doc: dict[str, Any]) -> Job:
    attempts = []
    for a in doc.get("attempts", []):
        a = dict(a)
        for key in ("startedAt", "endedAt"):
            if a.get(key) is not None:
                a[key] = _aware(a[key])
        attempts.append(a)
    return Job(
        id=doc["_id"], type=doc["type"], payload=unescape(doc["payload"]), status=JobStatus(doc["status"]),
        priority=doc["priority"], retry_count=doc["retryCount"], max_retries=doc["maxRetries"],
        retry_delays=list(doc["retryDelays"]), created_at=_aware(doc["createdAt"]),
        run_at=_aware(doc["runAt"]), processed_at=_aware(doc.get("processedAt")),
        completed_at=_aware(doc.get("completedAt")), heartbeat_at=_aware(doc.get("heartbeatAt")),
        worker_id=doc.get("workerId"), lock_token=doc.get("lockToken"), error=doc.get("error"),
        result=unescape(doc.get("result")), progress=unescape(doc.get("progress")), attempts=attempts,
        idempotency_key=doc.get("idempotencyKey"), queue=doc.get("queue") or DEFAULT_QUEUE,
        scheduled_by=doc.get("scheduledBy"), slot=_aware(doc.get("slot")),
        attempts_dropped=doc.get("attemptsDropped", 0), schema_fingerprint=doc.get("schemaFingerprint"),
    )


def _in_queues(queues: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A filter on the queue field; a document stored before queues existed
    has none and is in the default queue."""
    names: list[Any] = list(queues)
    if DEFAULT_QUEUE in names:
        names.append(None)  # $in with null also matches a missing field
    return {"$in": names}
