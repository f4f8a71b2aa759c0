"""Request and response schemas of the REST API, and the JSON helpers.

One set of marshmallow schemas serves three purposes: requests are loaded
through them (strict: a float is not an integer, a string is not a number,
unknown fields are refused), responses are dumped through them (so an answer
never carries a field the document does not describe), and the OpenAPI
document is generated from them (``openapi.py``).

The queue serializes its own JSON with ``json.dumps``: a host app may have
replaced ``app.json`` (flask-pymongo does), and the queue's answers must not
change with it.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

import marshmallow
from flask import Response
from marshmallow import fields, validate, validates_schema

from ..core.jobs import JobStatus
from ..core.limits import (DEFAULT_PAGE_LIMIT, MAX_DELAY_SECONDS, MAX_IDEMPOTENCY_KEY_CHARS,
                           MAX_RETRIES_LIMIT, MAX_TYPE_NAME_CHARS, PAGE_LIMIT_RANGE, PRIORITY_RANGE, QUEUE_NAME)

# Job ids are str(uuid4()): anything else cannot name a job.
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STATUSES = [s.value for s in JobStatus]


# -- JSON helpers -------------------------------------------------------------
# ensure_ascii: a lone surrogate in stored data can still be written out. Made
# once: json.dumps with options builds an encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _json_text(payload: Any) -> str:
    return _ENCODER.encode(payload) + "\n"


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_text(payload), status=status, headers=headers, content_type="application/json")


class CreatedResponse(Response):
    """A 201 whose ``Location`` is a URI already (``created_location``): added
    to the headers as the response is sent, not run through Werkzeug's
    ``iri_to_uri`` again there (with the header set at construction, ~30 us of
    the ~45 us ``POST /jobs`` spends above its bound, measured in-process).
    ``response.headers`` holds no Location before then; a Location an
    ``after_request`` hook sets wins."""

    def __init__(self, payload: Any, location: str):
        super().__init__(_json_text(payload), status=201, content_type="application/json")
        self.created_location = location

    def get_wsgi_headers(self, environ: Any) -> Any:
        headers = super().get_wsgi_headers(environ)
        if "Location" not in headers:
            headers.add("Location", self.created_location)
        return headers


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> Response:
    """``{"error": message, "details": {...}}`` with ``status``."""
    return json_response({"error": message, "details": details or {}}, status)


# -- strict fields ------------------------------------------------------------
class StrictNumber(fields.Float):
    """A JSON number: refuses strings and booleans, NaN and infinities."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryInteger(fields.Integer):
    """An integer written in a query string: decimal digits only (no sign,
    spaces, exponent or fraction), so "5.0" and " 5" are refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,9}", value):
            raise self.make_error("invalid")
        return int(value)


class UTCDateTime(fields.AwareDateTime):
    """An ISO 8601 datetime with an offset, converted to UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 has no UTC form
            raise marshmallow.ValidationError("Not a datetime that UTC can represent.") from None


def _timestamp(**kwargs: Any) -> fields.String:
    """A timestamp as the job record already renders it (ISO 8601 UTC, Z)."""
    return fields.String(allow_none=True, metadata={"format": "date-time", **kwargs})


# -- requests -----------------------------------------------------------------
class JobCreateSchema(marshmallow.Schema):
    """``POST /jobs``, as the OpenAPI document describes it. The route does
    not load through it: ``core.service.submit`` checks the same limits (from
    ``core.limits``) and the type's payload schema, once."""

    type = fields.String(required=True, validate=validate.Length(1, MAX_TYPE_NAME_CHARS),
                         metadata={"description": "A registered job type, e.g. EMAIL_SEND."})
    payload = fields.Dict(required=True, metadata={"description": "Validated by the job type's schema."})
    priority = fields.Integer(strict=True, validate=validate.Range(*PRIORITY_RANGE),
                              metadata={"description": "Higher runs first. Default 0."})
    delay = StrictNumber(validate=validate.Range(0, MAX_DELAY_SECONDS),
                         metadata={"description": "Seconds to wait before the job may run. Not with runAt."})
    runAt = UTCDateTime(metadata={"description": "Earliest run time, ISO 8601 with an offset. Not with delay."})
    maxRetries = fields.Integer(strict=True, validate=validate.Range(0, MAX_RETRIES_LIMIT),
                                metadata={"description": "Retries after the first attempt; default from the type."})
    idempotencyKey = fields.String(
        validate=validate.Length(1, MAX_IDEMPOTENCY_KEY_CHARS),
        metadata={"description": "While a job with this key is pending or processing, its id is answered "
                                 "instead of creating another."})

    queue = fields.String(validate=validate.Regexp(f"^{QUEUE_NAME}$"),
                          metadata={"description": "The named queue; default the type's queue, else 'default'."})

    @validates_schema
    def _delay_or_run_at(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "delay" in data and "runAt" in data:
            raise marshmallow.ValidationError("Give delay or runAt, not both.", "delay")


class JobListQuerySchema(marshmallow.Schema):
    """``GET /jobs`` query string."""

    status = fields.String(validate=validate.OneOf(STATUSES))
    type = fields.String(validate=validate.Length(1, MAX_TYPE_NAME_CHARS))
    limit = QueryInteger(load_default=DEFAULT_PAGE_LIMIT, validate=validate.Range(*PAGE_LIMIT_RANGE),
                         metadata={"default": DEFAULT_PAGE_LIMIT})
    queue = fields.String(validate=validate.Regexp(f"^{QUEUE_NAME}$"))
    before = fields.String(validate=validate.Regexp(JOB_ID, error="Not a valid job id."),
                           metadata={"format": "uuid", "description": "Cursor: the nextBefore of the previous page."})
    view = fields.String(data_key="fields", validate=validate.OneOf(["summary"]),
                           metadata={"description": "summary: without payload, result and progress (list views)."})
    due = fields.String(validate=validate.OneOf(["now", "later"]), metadata={
        "description": "Pending jobs due now (runAt <= now) or later (scheduled: runAt > now); "
                       "implies status=pending."})


class JobSearchQuerySchema(marshmallow.Schema):
    """``GET /jobs/search`` query string."""

    idPrefix = fields.String(required=True, validate=validate.Regexp(r"^[0-9a-fA-F]{4}[0-9a-fA-F-]{0,32}$", error=(
        "Must be 4 to 36 characters of a job id (hex digits, dashes).")), metadata={
        "description": "The first characters of a job id (at least 4 hex digits, any case)."})
    limit = QueryInteger(load_default=20, validate=validate.Range(1, 100), metadata={"default": 20})


# -- responses ----------------------------------------------------------------
class ErrorSchema(marshmallow.Schema):
    error = fields.String(required=True)
    details = fields.Dict(required=True, metadata={"description": "Field name -> messages, or context."})


class AttemptSchema(marshmallow.Schema):
    startedAt = _timestamp()
    worker = fields.String(allow_none=True)
    endedAt = _timestamp()
    outcome = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    nextDelaySeconds = fields.Float(allow_none=True)
    waitSeconds = fields.Float(allow_none=True, metadata={
        "description": "Queue latency of the attempt: the job's runAt to startedAt (set when it ends)."})
    traceback = fields.String(allow_none=True, metadata={
        "description": "The handler's formatted traceback (its last 8 KB) when the attempt raised. Admin only."})


class JobSchema(marshmallow.Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    type = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    priority = fields.Integer(required=True)
    retryCount = fields.Integer(required=True)
    maxRetries = fields.Integer(required=True)
    createdAt = _timestamp()
    runAt = _timestamp()
    processedAt = _timestamp()
    completedAt = _timestamp()
    heartbeatAt = _timestamp()
    worker = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    result = fields.Raw(allow_none=True)
    progress = fields.Dict(allow_none=True)
    payload = fields.Dict(metadata={"description": "Only shown to admin callers."})
    idempotencyKey = fields.String(allow_none=True, metadata={"description": "Only shown to admin callers."})
    attempts = fields.List(fields.Nested(AttemptSchema), required=True)
    queue = fields.String(required=True)
    scheduledBy = fields.String(allow_none=True, metadata={"description": "The schedule that enqueued it."})
    slot = _timestamp(description="The schedule's slot it was enqueued for.")


class JobCreatedSchema(marshmallow.Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))


class JobPageSchema(marshmallow.Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    nextBefore = fields.String(
        required=True, allow_none=True, metadata={
            "format": "uuid",
            "description": "Pass as `before` for the next page; null when this page was not full."})


class ScheduleSchema(marshmallow.Schema):
    name = fields.String(required=True)
    type = fields.String(required=True)
    cron = fields.String(required=True, allow_none=True, metadata={"description": "Five fields, in tz."})
    every = fields.Float(required=True, allow_none=True, metadata={"description": "Interval in seconds."})
    tz = fields.String(required=True)
    priority = fields.Integer(required=True)
    catchup = fields.String(required=True, validate=validate.OneOf(("once", "skip")))
    queue = fields.String(required=True, metadata={"description": "The named queue its jobs go to."})
    nextRun = _timestamp()
    lastSlot = _timestamp()
    lastJobId = fields.String(allow_none=True)
    lastJobStatus = fields.String(allow_none=True, validate=validate.OneOf(STATUSES))
    runs = fields.Integer(required=True, metadata={"description": "Slots enqueued so far, by every process."})


class SchedulesResponseSchema(marshmallow.Schema):
    schedules = fields.List(fields.Nested(ScheduleSchema), required=True)


class QueueStatsSchema(marshmallow.Schema):
    """One named queue's counts (and the base of the whole store's)."""

    pending = fields.Integer(required=True)
    processing = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)
    oldestPendingAge = fields.Integer(required=True, allow_none=True, metadata={"description": "Seconds."})


class StatsSchema(QueueStatsSchema):
    scheduled = fields.Integer(required=True, metadata={
        "description": "Of the pending jobs, those not due yet (delayed, or waiting for a retry)."})
    total = fields.Integer(required=True)
    oldestProcessingAge = fields.Integer(required=True, allow_none=True, metadata={"description": "Seconds."})
    queues = fields.Dict(keys=fields.String(), values=fields.Nested(QueueStatsSchema), required=True,
                         metadata={"description": "Per named queue: counts by status and oldestPendingAge."})


class StatsResponseSchema(marshmallow.Schema):
    success = fields.Boolean(required=True)
    stats = fields.Nested(StatsSchema, required=True)


class CleanupResponseSchema(marshmallow.Schema):
    success = fields.Boolean(required=True)
    requeuedCount = fields.Integer(required=True)


class HealthWorkerSchema(marshmallow.Schema):
    running = fields.Boolean(required=True)
    workerId = fields.String(required=True, allow_none=True)
    isProcessing = fields.Boolean(required=True)
    processingJobId = fields.String(required=True, allow_none=True,
                                    metadata={"description": "Null unless the caller is an admin."})
    maxRetries = fields.Integer(required=True)
    queues = fields.List(fields.String(), required=True,
                         metadata={"description": "The queues this process's worker consumes; ['*'] for all."})


class HealthSchema(marshmallow.Schema):
    healthy = fields.Boolean(required=True)
    initialized = fields.Boolean(required=True)
    problems = fields.List(fields.String(), required=True)
    store = fields.String(required=True, allow_none=True)
    stats = fields.Nested(StatsSchema, required=True, allow_none=True)
    worker = fields.Nested(HealthWorkerSchema, required=True)
    timestamp = fields.String(required=True, metadata={"format": "date-time"})



# -- operator routes ------------------------------------------------------------
class BulkResultSchema(marshmallow.Schema):
    matched = fields.Integer(required=True, metadata={"description": "Jobs found in the status the action needs."})
    changed = fields.Integer(required=True, metadata={
        "description": "Jobs changed; a job whose state moved meanwhile is skipped."})


class WorkerSchema(marshmallow.Schema):
    id = fields.String(required=True)
    host = fields.String(required=True)
    pid = fields.Integer(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["web", "standalone"]))
    queues = fields.List(fields.String(), required=True)
    startedAt = _timestamp()
    lastSeenAt = _timestamp()
    currentJobId = fields.String(allow_none=True)
    jobsDone = fields.Integer(required=True)
    jobsFailed = fields.Integer(required=True)
    alive = fields.Boolean(required=True, metadata={"description": "Seen within the last 3 heartbeat intervals."})


class WorkersResponseSchema(marshmallow.Schema):
    workers = fields.List(fields.Nested(WorkerSchema), required=True)


class HistoryQuerySchema(marshmallow.Schema):
    hours = QueryInteger(load_default=24, validate=validate.Range(1, 168), metadata={"default": 24})


def _seconds(text: str):
    return fields.Float(required=True, allow_none=True, metadata={"description": text})


class HistoryCountsSchema(marshmallow.Schema):
    completed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    waitP50 = _seconds("Median queue latency (runAt to the attempt's start), seconds; null without attempts.")
    waitP95 = _seconds("p95 (nearest rank) of the queue latency, seconds.")
    runP50 = _seconds("Median run time (start to end of the attempt), seconds.")
    runP95 = _seconds("p95 (nearest rank) of the run time, seconds.")


class HistoryBucketSchema(HistoryCountsSchema):
    start = _timestamp()
    types = fields.Dict(keys=fields.String(), values=fields.Nested(HistoryCountsSchema), required=True)


class HistorySchema(marshmallow.Schema):
    hours = fields.Integer(required=True)
    bucketSeconds = fields.Integer(required=True, metadata={"description": "300 up to 6 hours, 3600 beyond."})
    since = _timestamp()
    until = _timestamp()
    buckets = fields.List(fields.Nested(HistoryBucketSchema), required=True)
