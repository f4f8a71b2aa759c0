"""CLEANUP: delete finished jobs, or stored media, older than an age."""
from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import marshmallow
from marshmallow import fields, validate

from ..core.context import JobContext
from ..core.jobs import iso

log = logging.getLogger("queue_service.worker")

TASKS = ("purge_jobs", "delete_old_files")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"^([0-9]{1,6})([smhd])$")
MAX_AGE_SECONDS = 3650 * 86400


def parse_age(text: str) -> timedelta:
    """ "30d" / "12h" / "15m" / "90s" -> timedelta. Raises ValueError."""
    match = DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError('Must be a whole number followed by s, m, h or d, e.g. "30d", "12h", "15m", "90s".')
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_AGE_SECONDS:
        raise ValueError(f"Must be more than 0 and at most {MAX_AGE_SECONDS // 86400}d.")
    return timedelta(seconds=seconds)


def _validate_age(value: str) -> None:
    try:
        parse_age(value)
    except ValueError as exc:
        raise marshmallow.ValidationError(str(exc)) from None


class CleanupSchema(marshmallow.Schema):
    task = fields.String(required=True, validate=validate.OneOf(TASKS))
    olderThan = fields.String(required=True, validate=_validate_age)


def run_cleanup(payload: dict[str, Any], job: JobContext) -> dict[str, Any]:
    """The CLEANUP handler. Idempotent: a re-run deletes what is left."""
    now = job.now()
    cutoff = now - parse_age(payload["olderThan"])
    if payload["task"] == "purge_jobs":
        # Finished jobs only (completed, failed, cancelled); pending and
        # processing jobs, this one included, are never touched.
        deleted = job.purge_finished_jobs(cutoff)
        log.info("[Worker] 🧹 Deleted %d finished job(s) older than %s", deleted, payload["olderThan"])
    else:
        deleted = job.purge_files(cutoff)
        log.info("[Worker] 🧹 Deleted %d stored file(s) older than %s", deleted, payload["olderThan"])
    return {"task": payload["task"], "olderThan": payload["olderThan"], "cutoff": iso(cutoff),
            "deleted": deleted}
