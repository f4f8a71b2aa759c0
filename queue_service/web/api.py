"""The REST blueprint: the routes of ``/api/queue``.

Each route reads its input (``body``), calls the core's service and dumps the
answer through its response schema; errors become HTTP answers in
``http_errors``. Public routes: ``GET /job/<id>`` (status only unless the
caller is an admin: ``public``), ``GET /health`` and ``GET /media/<name>``.
Everything else needs admin auth (``auth``).
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import marshmallow
from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.urls import iri_to_uri

from ..core.errors import JobNotFound, ValidationError
from ..core.limits import MAX_BULK_JOBS
from . import dashboard, http_errors, metrics, openapi, operator_api
from .auth import admin_denied, admin_required
from .body import ApiError, body_limit, checked_job_id, read_json_object, read_query, refuse_body
from .media import media_response
from .public import public_job
from .schemas import (CleanupResponseSchema, CreatedResponse, HealthSchema, JobListQuerySchema, JobPageSchema,
                      JobSchema, SchedulesResponseSchema, StatsResponseSchema, UTCDateTime, error_response, json_response)
from .state import queue_state

log = logging.getLogger("queue_service.api")

class _Blueprint(Blueprint):
    """Every rule with ``merge_slashes=False``: ``{prefix}//stats`` is then a
    JSON 404, not Werkzeug's 308 HTML page with a Location built from the
    client's Host header."""

    def add_url_rule(self, *args: Any, **options: Any) -> None:
        options.setdefault("merge_slashes", False)
        super().add_url_rule(*args, **options)


blueprint = _Blueprint("queue_service", __name__)

ECHO_CHARS = http_errors.ECHO_CHARS

# Made once: a marshmallow Schema deep-copies its declared fields when it is
# instantiated (~4 % of a worker's CPU under HTTP enqueue load, per request);
# load() and dump() keep no state on the instance.
_CLEANUP_RESPONSE = CleanupResponseSchema()
_HEALTH = HealthSchema()
_JOB_LIST_QUERY = JobListQuerySchema()
_JOB_PAGE = JobPageSchema()
_JOB = JobSchema()
_STATS_RESPONSE = StatsResponseSchema()
_SCHEDULES = SchedulesResponseSchema()
_RUN_AT = UTCDateTime()


def _dump_job(job: Any) -> dict[str, Any]:
    return _JOB.dump(job.to_dict())


@blueprint.before_request
def _cap_body() -> None:
    """413 before the body is read: Content-Length is checked here; a chunked
    body is cut by read_body (and by Werkzeug one byte later)."""
    limit = body_limit(queue_state())
    req = request._get_current_object()  # one proxy lookup (web/state.py)
    # One byte over the cap, so read_body can tell "exactly the cap" from "more".
    req.max_content_length = limit + 1
    length = req.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge()


# -- routes -------------------------------------------------------------------
# POST /jobs fields -> core.service.submit's options. The service checks the
# values (types, core.limits, the type's schema); its errors name the options,
# which the route names back in the API's words.
CREATE_OPTIONS = {"priority": "priority", "delay": "delay", "runAt": "run_at", "maxRetries": "max_retries",
                  "idempotencyKey": "idempotency_key", "queue": "queue"}
CREATE_FIELDS = {"type", "payload", *CREATE_OPTIONS}
API_NAMES = {option: field for field, option in CREATE_OPTIONS.items()}


def _create_arguments(body: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(type, payload, options) from a POST /jobs body (or one item of its
    ``jobs`` list); the envelope's own errors (unknown or missing fields, a
    runAt that is not a datetime) as a ValidationError, before the service
    sees anything."""
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["Must be an object with type and payload."]})
    errors: dict[str, Any] = {key: ["Unknown field."] for key in body if key not in CREATE_FIELDS}
    for key in ("type", "payload"):
        if key not in body:
            errors[key] = ["Missing data for required field."]
    if "type" in body and not isinstance(body["type"], str):
        errors["type"] = ["Not a valid string."]
    if "payload" in body and not isinstance(body["payload"], dict):
        errors["payload"] = ["Not a valid mapping type."]
    options = {CREATE_OPTIONS[key]: value for key, value in body.items() if key in CREATE_OPTIONS}
    errors.update({key: ["Field may not be null."] for key in CREATE_OPTIONS if key in body and body[key] is None})
    if options.get("run_at") is not None:
        try:
            options["run_at"] = _RUN_AT.deserialize(options["run_at"])
        except marshmallow.ValidationError as exc:
            errors["runAt"] = exc.messages
    if errors:
        raise ValidationError(errors)
    return body["type"], body["payload"], options


def _api_names(messages: Any) -> dict[str, Any]:
    """The service's field names (run_at) as the API's (runAt)."""
    messages = messages if isinstance(messages, dict) else {"_schema": messages}
    return {API_NAMES.get(k, k): v for k, v in messages.items()}


@blueprint.post("/jobs")
@admin_required
def create_job() -> Response:
    state = queue_state()
    body = read_json_object(state=state)
    if "jobs" in body:
        return _create_jobs(body)
    job_type, payload, options = _create_arguments(body)
    try:
        submitted = state.service.submit(job_type, payload, **options)
    except ValidationError as exc:
        raise ValidationError(_api_names(exc.messages)) from None
    # The answer's two fields as JobCreatedSchema documents them, without a
    # dump, and the Location without url_for: the job URL's base made a URI
    # once per mount point, the id (a UUID) needs no quoting.
    location = _job_uri_base(request._get_current_object().script_root, state.settings.url_prefix) + submitted.id
    return CreatedResponse({"id": submitted.id, "status": submitted.status}, location)


@functools.lru_cache(maxsize=64)
def _job_uri_base(script_root: str, url_prefix: str) -> str:
    return iri_to_uri(f"{script_root}{url_prefix}/job/")


def _create_jobs(body: dict[str, Any]) -> Response:
    """``POST /jobs {"jobs": [...]}``: all validated, then stored in one write."""
    extra = [key for key in body if key != "jobs"]
    if extra:
        raise ValidationError({key: ["Unknown field (a bulk request holds only jobs)."] for key in extra})
    items = body["jobs"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK_JOBS:
        raise ValidationError({"jobs": [f"Must be a list of 1 to {MAX_BULK_JOBS} jobs."]})
    arguments: list[Any] = []
    envelope_errors: dict[int, Any] = {}
    for index, item in enumerate(items):
        try:
            job_type, payload, options = _create_arguments(item)
            arguments.append({"type": job_type, "payload": payload, **options})
        except ValidationError as exc:
            envelope_errors[index] = exc.messages
            arguments.append(None)
    try:
        submitted = queue_state().service.submit_many(arguments, envelope_errors)
    except ValidationError as exc:
        per_item = exc.messages.get("jobs", {}) if isinstance(exc.messages, dict) else {}
        if not isinstance(per_item, dict):
            raise
        raise ValidationError({"jobs": {str(i): _api_names(m) for i, m in per_item.items()}}) from None
    return json_response({"jobs": [{"id": s.id, "status": s.status} for s in submitted]}, 201)


@blueprint.get("/job/<job_id>")
def get_job(job_id: str) -> Response:
    job = queue_state().service.get(checked_job_id(job_id))
    if job is None:
        raise JobNotFound(job_id)
    if admin_denied() is not None:  # anonymous: status only (web.public)
        return json_response(public_job(job, queue_state().queue))
    return json_response(_dump_job(job))


@blueprint.get("/jobs")
@admin_required
def list_jobs() -> Response:
    query = read_query(_JOB_LIST_QUERY)
    limit = query["limit"]
    service = queue_state().service
    # A well-formed cursor naming no job (purged, or never existed) is a 404,
    # like any other id that names nothing; a malformed one is a 400.
    if "before" in query and service.get(query["before"]) is None:
        raise ApiError(404, "Cursor job not found.", {"before": ["Unknown job id."]})
    summary = query.get("view") == "summary"  # a list view: no payload read, none sent
    jobs = service.list(status=query.get("status"), job_type=query.get("type"), limit=limit,
                        before=query.get("before"), queue=query.get("queue"), summary=summary,
                        due=query.get("due"))
    # A full page may be followed by an empty one; a short page is the last.
    next_before = jobs[-1].id if len(jobs) == limit else None
    dumped = [job.to_dict() for job in jobs]
    for data in dumped if summary else ():
        data.pop("payload", None)
    page = {"jobs": dumped, "nextBefore": next_before}
    return json_response(_JOB_PAGE.dump(page))


@blueprint.post("/job/<job_id>/cancel")
@admin_required
def cancel_job(job_id: str) -> Response:
    job_id = checked_job_id(job_id)
    refuse_body()
    return json_response(_dump_job(queue_state().service.cancel(job_id)))


@blueprint.post("/job/<job_id>/retry")
@admin_required
def retry_job(job_id: str) -> Response:
    job_id = checked_job_id(job_id)
    refuse_body()
    return json_response(_dump_job(queue_state().service.retry(job_id)))


@blueprint.get("/stats")
@admin_required
def stats() -> Response:
    return json_response(_STATS_RESPONSE.dump({"success": True, "stats": queue_state().service.stats()}))


@blueprint.get("/schedules")
@admin_required
def schedules() -> Response:
    return json_response(_SCHEDULES.dump({"schedules": queue_state().service.schedules()}))


@blueprint.post("/cleanup")
@admin_required
def cleanup() -> Response:
    refuse_body()
    count = queue_state().service.recover_stuck()
    return json_response(_CLEANUP_RESPONSE.dump({"success": True, "requeuedCount": count}))


@blueprint.get("/health")
def health() -> Response:
    try:
        report = queue_state().service.health()
    except Exception:  # a health check answers "unhealthy", never a 500
        log.exception("[API] health check failed")
        response = error_response(503, "Health check failed; see the server log.", {"healthy": [False]})
        response.headers["Cache-Control"] = "no-store"
        return response
    status = 200 if report["healthy"] else 503
    if admin_denied() is not None:  # job ids are for admins only
        report["worker"]["processingJobId"] = None
    return json_response(_HEALTH.dump(report), status, {"Cache-Control": "no-store"})


@blueprint.get("/media/<name>")
def media(name: str) -> Response:
    response = media_response(queue_state().runtime.store, name)
    if response.status_code == 404:  # answer with the queue's own JSON, not app.json's
        return error_response(404, "Media not found.", {"name": name[:ECHO_CHARS]})
    return response


@blueprint.get("/openapi.json")
@admin_required
def openapi_document() -> Response:
    state = queue_state()
    return json_response(openapi.document(state.queue.registry, request.script_root + state.settings.url_prefix))

http_errors.install(blueprint)
dashboard.register(blueprint)
metrics.register(blueprint)
operator_api.register(blueprint)
