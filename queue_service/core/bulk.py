"""Bulk operator actions: retry or cancel many jobs, chosen by ids or by a filter.

Each job's change is the store's own fenced, conditional write (the one the
single-job route makes): a job that changed state between the match and the
change is skipped, never forced. A filter is walked in pages of
``Store.list_jobs`` along its cursor, so no page is read twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from .errors import ValidationError
from .jobs import Job
from .limits import MAX_BULK_IDS, MAX_TYPE_NAME_CHARS, QUEUE_NAME_MESSAGE, is_queue_name
from .store import Store

PAGE = 500
SELECTION_FIELDS = ("ids", "status", "type", "queue")


@dataclass(frozen=True)
class Selection:
    """Either ``ids`` or a filter (``status``, ``job_type``, ``queue``)."""

    ids: tuple[str, ...] | None = None
    status: str | None = None
    job_type: str | None = None
    queue: str | None = None


@dataclass(frozen=True)
class BulkResult:
    matched: int
    changed: int


def parse_selection(body: dict[str, Any], status: str) -> Selection:
    """A bulk request body -> Selection, or a ValidationError naming the field.
    ``status`` is the only status the action applies to (failed for a retry,
    pending for a cancel): a filter may name it or leave it out."""
    errors: dict[str, Any] = {key: ["Unknown field."] for key in body if key not in SELECTION_FIELDS}
    ids = body.get("ids")
    if "ids" in body:
        if any(key in body for key in ("status", "type", "queue")):
            errors["ids"] = ["Give ids or a filter (status, type, queue), not both."]
        elif not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            errors["ids"] = ["Must be a list of job ids."]
        elif not 1 <= len(ids) <= MAX_BULK_IDS:
            errors["ids"] = [f"Must hold 1 to {MAX_BULK_IDS} ids."]
    elif not any(key in body for key in ("status", "type", "queue")):
        errors["_schema"] = ["Give ids or a filter (status, type, queue)."]
    if "status" in body and body["status"] != status:
        errors["status"] = [f"Must be {status!r} (the only status this action applies to)."]
    if "type" in body and not (isinstance(body["type"], str) and 1 <= len(body["type"]) <= MAX_TYPE_NAME_CHARS):
        errors["type"] = [f"Must be a string of 1 to {MAX_TYPE_NAME_CHARS} characters."]
    if "queue" in body and not is_queue_name(body["queue"]):
        errors["queue"] = [QUEUE_NAME_MESSAGE]
    if errors:
        raise ValidationError(errors)
    if "ids" in body:
        return Selection(ids=tuple(dict.fromkeys(ids)))
    return Selection(status=status, job_type=body.get("type"), queue=body.get("queue"))


def _matching(store: Store, selection: Selection, status: str) -> Iterator[Job]:
    if selection.ids is not None:
        for job_id in selection.ids:
            job = store.get(job_id)
            if job is not None and str(job.status) == status:
                yield job
        return
    cursor: tuple[datetime, str] | None = None
    while True:
        page = store.list_jobs(status, selection.job_type, PAGE, cursor, selection.queue)
        yield from page
        if len(page) < PAGE:
            return
        cursor = (page[-1].created_at, page[-1].id)


def apply(store: Store, selection: Selection, status: str, change: Callable[[str, datetime], bool],
          now: Callable[[], datetime]) -> BulkResult:
    """Apply ``change`` (a store transition) to each job of ``selection`` that is in ``status``."""
    matched = changed = 0
    for job in _matching(store, selection, status):
        matched += 1
        changed += bool(change(job.id, now()))
    return BulkResult(matched, changed)
