"""What an anonymous caller may see of a job: its status, nothing else.

``GET {prefix}/job/<id>`` without admin auth answers ``public_job(job)``:
id, type, status, retry counts, timestamps and progress. No payload, result,
attempts, worker, heartbeat or idempotency key, and a failed job's error is
the word ``"failed"``, never its message (results and errors hold
recipients, callback URLs with their tokens, server paths). Every route that
shows a job publicly goes through this one function.

A host app that wants richer public views opts in::

    @queue.public_view
    def view(job, default):      # job: core.jobs.Job, default: the dict below
        if job.type == "IMAGE_PROCESS":
            return {**default, "images": [i["url"] for i in (job.result or {}).get("images", [])]}
        return default

The hook's dict is sent as it is (JSON-serializable values only); the
default stays closed.
"""
from __future__ import annotations

from typing import Any

from ..core.jobs import Job, JobStatus, iso

PUBLIC_FIELDS = ("id", "type", "status", "retryCount", "maxRetries", "createdAt", "runAt", "processedAt",
                 "completedAt", "progress")
PUBLIC_ERROR = "failed"


def default_public_job(job: Job) -> dict[str, Any]:
    data = {
        "id": job.id,
        "type": job.type,
        "status": str(job.status),
        "retryCount": job.retry_count,
        "maxRetries": job.max_retries,
        "createdAt": iso(job.created_at),
        "runAt": iso(job.run_at),
        "processedAt": iso(job.processed_at),
        "completedAt": iso(job.completed_at),
        "progress": job.progress,
    }
    # Only the fact of failure: the message may quote the payload or the server.
    data["error"] = PUBLIC_ERROR if job.status == JobStatus.FAILED else None
    return data


def public_job(job: Job, queue: Any) -> dict[str, Any]:
    """The anonymous view of ``job``: the host's ``@queue.public_view`` hook
    if one is registered, else ``default_public_job``."""
    default = default_public_job(job)
    hook = getattr(queue, "public_view_func", None)
    if hook is None:
        return default
    view = hook(job, default)
    if not isinstance(view, dict):
        raise TypeError(f"public_view hook must return a dict, got {type(view).__name__}")
    return view
