"""The REST blueprint: routes, the JSON error contract, the body cap.

Every answer is JSON, errors included (``{"error": ..., "details": {...}}``).
Errors are mapped to HTTP codes here and only here: ValidationError 400,
JobNotFound 404, InvalidTransition 409, store failures 503. Routing errors
(404 for an unknown path, 405) happen before Flask knows the blueprint, so
``record_once`` installs app-level handlers that answer JSON for paths under
the queue's prefix and leave every other path to the host app.

Public routes: ``GET /job/<id>`` (without the payload unless the caller is an
admin), ``GET /health`` and ``GET /media/<name>``. Everything else needs
admin auth (``queue_service.auth``).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable

import marshmallow
from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from . import openapi
from .auth import admin_denied, admin_required
from .errors import InvalidTransition, JobNotFound, QueueError, StoreError, StoreUnavailable, ValidationError
from .media import media_response
from .schemas import (JOB_ID, MAX_JSON_DEPTH, CleanupResponseSchema, HealthSchema, JobCreatedSchema, JobCreateSchema,
                      JobListQuerySchema, JobPageSchema, JobSchema, StatsResponseSchema, error_response,
                      json_response)

log = logging.getLogger("queue_service.api")

blueprint = Blueprint("queue_service", __name__)

EXTENSION_KEY = "queue_service"
INT64_RANGE = (-(2**63), 2**63 - 1)  # what BSON can store; SQLite's INTEGER too
# add_job speaks Python; the API speaks camelCase.
FIELD_NAMES = {"run_at": "runAt", "max_retries": "maxRetries", "idempotency_key": "idempotencyKey"}
ECHO_CHARS = 80  # how much of a bad id an error repeats back
READ_CHUNK_BYTES = 16384

# Made once: a marshmallow Schema deep-copies its declared fields when it is
# instantiated (~4 % of a worker's CPU under HTTP enqueue load, per request);
# load() and dump() keep no state on the instance.
_CLEANUP_RESPONSE = CleanupResponseSchema()
_HEALTH = HealthSchema()
_JOB_CREATED = JobCreatedSchema()
_JOB_CREATE = JobCreateSchema()
_JOB_LIST_QUERY = JobListQuerySchema()
_JOB_PAGE = JobPageSchema()
_JOB = JobSchema()
_STATS_RESPONSE = StatsResponseSchema()


class ApiError(Exception):
    """A 4xx answer decided while reading the request."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}


def _state() -> Any:
    return current_app.extensions[EXTENSION_KEY]


# -- reading requests ---------------------------------------------------------
def read_json_object(optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError (400/413). With
    ``optional``, an empty body reads as ``{}``."""
    raw = read_body(body_limit())
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "Request body is empty; send a JSON object.", {"body": ["Missing data."]})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "Request body is not valid UTF-8.",
                       {"body": [f"Invalid UTF-8 at byte {exc.start}."]}) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "Malformed JSON.",
                       {"body": [f"{exc.msg} (line {exc.lineno}, column {exc.colno})."]}) from None
    except RecursionError:
        raise ApiError(400, "JSON nested too deeply.", {"body": [f"At most {MAX_JSON_DEPTH} levels."]}) from None
    except ValueError as exc:  # NaN/Infinity, integers over Python's digit limit
        raise ApiError(400, "Malformed JSON.", {"body": [str(exc)]}) from None
    if not isinstance(value, dict):
        raise ApiError(400, "Request body must be a JSON object.",
                       {"body": [f"Expected an object, got {type(value).__name__}."]})
    _check_json_value(value)
    return value


def body_limit() -> int:
    """QUEUE_MAX_BODY_BYTES, or the host's MAX_CONTENT_LENGTH if smaller."""
    limit = _state().settings.max_body_bytes
    host_limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return min(limit, int(host_limit)) if host_limit else limit


def read_body(limit: int) -> bytes:
    """At most ``limit`` bytes of body, or 413. Reads ``limit + 1`` bytes at
    most, whatever the client sends: a chunked body has no Content-Length to
    check up front, and Werkzeug's own cap stops silently at the limit."""
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON.")


def _check_json_value(value: Any) -> None:
    """Refuse what parses but cannot be stored on both stores: deep nesting,
    integers outside 64 bits, numbers that overflowed to infinity, strings
    holding lone surrogates (from \\ud800 escapes). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, "JSON nested too deeply.", {"body": [f"At most {MAX_JSON_DEPTH} levels."]})
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_RANGE[0] <= item <= INT64_RANGE[1]:
                raise ApiError(400, "Integer out of range.", {"body": ["Integers must fit in 64 bits."]})
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError(400, "Number out of range.", {"body": ["Numbers must be finite."]})


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "Invalid Unicode in JSON string.",
                       {"body": ["Strings must not contain lone surrogates."]}) from None


def read_query(schema: marshmallow.Schema) -> dict[str, Any]:
    repeated = {key: ["Give this parameter once."] for key in request.args
                if len(request.args.getlist(key)) > 1}
    if repeated:
        raise ValidationError(repeated)
    return schema.load(request.args.to_dict())


def refuse_body() -> None:
    """Routes that take no input accept no body, ``{}`` or nothing: a client
    sending fields it expects to matter learns at once that they do not."""
    body = read_json_object(optional=True)
    if body:
        raise ValidationError({key: ["Unknown field."] for key in body})


def checked_job_id(job_id: str) -> str:
    """Ids are UUIDs; anything else is a job that does not exist."""
    if not JOB_ID.match(job_id):
        raise JobNotFound(job_id)
    return job_id


def _dump_job(job: Any, admin: bool = True) -> dict[str, Any]:
    data = job.to_dict()
    if not admin:  # the payload may hold addresses and secrets; the status page needs none of it
        data.pop("payload", None)
        data.pop("idempotencyKey", None)
    return _JOB.dump(data)


@blueprint.before_request
def _cap_body() -> None:
    """413 before the body is read: Content-Length is checked here; a chunked
    body is cut by read_body (and by Werkzeug one byte later)."""
    limit = body_limit()
    # One byte over the cap, so read_body can tell "exactly the cap" from "more".
    request.max_content_length = limit + 1
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()


# -- routes -------------------------------------------------------------------
@blueprint.post("/jobs")
@admin_required
def create_job() -> Response:
    data = _JOB_CREATE.load(read_json_object())
    options = {"priority": data.get("priority"), "delay": data.get("delay"), "run_at": data.get("runAt"),
               "max_retries": data.get("maxRetries"), "idempotency_key": data.get("idempotencyKey")}
    queue = _state().queue
    try:
        job_id = queue.add_job(data["type"], data["payload"],
                               **{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationError({FIELD_NAMES.get(k, k): v for k, v in messages.items()}) from None
    status = "pending"  # just inserted
    if "idempotencyKey" in data:  # the key may have answered an existing job, maybe running
        job = queue.get_job(job_id)
        status = str(job.status) if job is not None else status
    return json_response(_JOB_CREATED.dump({"id": job_id, "status": status}), 201,
                         {"Location": url_for(".get_job", job_id=job_id)})


@blueprint.get("/job/<job_id>")
def get_job(job_id: str) -> Response:
    job = _state().queue.get_job(checked_job_id(job_id))
    if job is None:
        raise JobNotFound(job_id)
    return json_response(_dump_job(job, admin=admin_denied() is None))


@blueprint.get("/jobs")
@admin_required
def list_jobs() -> Response:
    query = read_query(_JOB_LIST_QUERY)
    limit = query["limit"]
    queue = _state().queue
    # A well-formed cursor naming no job (purged, or never existed) is a 404,
    # like any other id that names nothing; a malformed one is a 400.
    if "before" in query and queue.get_job(query["before"]) is None:
        raise ApiError(404, "Cursor job not found.", {"before": ["Unknown job id."]})
    jobs = queue.list_jobs(status=query.get("status"), job_type=query.get("type"), limit=limit,
                           before=query.get("before"))
    # A full page may be followed by an empty one; a short page is the last.
    next_before = jobs[-1].id if len(jobs) == limit else None
    page = {"jobs": [job.to_dict() for job in jobs], "nextBefore": next_before}
    return json_response(_JOB_PAGE.dump(page))


@blueprint.post("/job/<job_id>/cancel")
@admin_required
def cancel_job(job_id: str) -> Response:
    job_id = checked_job_id(job_id)
    refuse_body()
    return json_response(_dump_job(_state().queue.cancel(job_id)))


@blueprint.post("/job/<job_id>/retry")
@admin_required
def retry_job(job_id: str) -> Response:
    job_id = checked_job_id(job_id)
    refuse_body()
    return json_response(_dump_job(_state().queue.retry(job_id)))


@blueprint.get("/stats")
@admin_required
def stats() -> Response:
    return json_response(_STATS_RESPONSE.dump({"success": True, "stats": _state().queue.get_queue_stats()}))


@blueprint.post("/cleanup")
@admin_required
def cleanup() -> Response:
    refuse_body()
    count = _state().queue.cleanup_stuck_jobs()
    return json_response(_CLEANUP_RESPONSE.dump({"success": True, "requeuedCount": count}))


@blueprint.get("/health")
def health() -> Response:
    try:
        report = _state().queue.health_check()
    except Exception:  # a health check answers "unhealthy", never a 500
        log.exception("[API] health check failed")
        response = error_response(503, "Health check failed; see the server log.", {"healthy": [False]})
        response.headers["Cache-Control"] = "no-store"
        return response
    status = 200 if report["healthy"] else 503
    return json_response(_HEALTH.dump(report), status, {"Cache-Control": "no-store"})


@blueprint.get("/media/<name>")
def media(name: str) -> Response:
    response = media_response(_state().store, name)
    if response.status_code == 404:  # answer with the queue's own JSON, not app.json's
        return error_response(404, "Media not found.", {"name": name[:ECHO_CHARS]})
    return response


@blueprint.get("/openapi.json")
@admin_required
def openapi_document() -> Response:
    state = _state()
    return json_response(openapi.document(state.queue.registry, request.script_root + state.settings.url_prefix))


# -- errors -------------------------------------------------------------------
def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    details: dict[str, Any] = {}
    if isinstance(exc, RequestEntityTooLarge):
        limit = body_limit()
        message = f"Request body is larger than {limit} bytes."
        details = {"maxBodyBytes": limit}
    elif isinstance(exc, MethodNotAllowed):
        allowed = sorted(exc.valid_methods or [])
        message = f"Method {request.method} is not allowed here."
        details = {"allowed": allowed}
    elif isinstance(exc, NotFound):
        message = "Not found: no such route."
        details = {"path": request.path[:ECHO_CHARS]}
    else:
        message = exc.description or exc.name
    response = error_response(code, message, details)
    for name, value in exc.get_headers():  # keeps Allow on 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@blueprint.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.details)


@blueprint.errorhandler(marshmallow.ValidationError)
@blueprint.errorhandler(ValidationError)
def _validation_error(exc: marshmallow.ValidationError) -> Response:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return error_response(400, "Invalid fields: " + ", ".join(sorted(map(str, messages))) + ".", messages)


@blueprint.errorhandler(JobNotFound)
def _not_found(exc: JobNotFound) -> Response:
    job_id = str(exc.args[0]) if exc.args else ""
    return error_response(404, "Job not found.", {"id": job_id[:ECHO_CHARS]})


@blueprint.errorhandler(InvalidTransition)
def _conflict(exc: InvalidTransition) -> Response:
    return error_response(409, f"Cannot {exc.operation} a job that is {exc.status}.",
                          {"id": exc.job_id, "status": exc.status, "operation": exc.operation})


@blueprint.errorhandler(StoreUnavailable)
@blueprint.errorhandler(StoreError)
@blueprint.errorhandler(QueueError)
def _store_error(exc: QueueError) -> Response:
    # The driver's text can name hosts and files: it goes to the log, not the client.
    log.warning("[API] %s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
    if isinstance(exc, StoreUnavailable):
        response = error_response(503, "The job store is unavailable; try again shortly.",
                                  {"store": ["unavailable"]})
    elif isinstance(exc, StoreError):
        response = error_response(503, "The job store failed to answer; try again shortly.", {"store": ["error"]})
    else:  # ConfigurationError and the like: the server's problem, not the request's
        response = error_response(503, "The queue cannot serve this request; see the server log.",
                                  {"queue": [type(exc).__name__]})
    response.headers["Retry-After"] = "5"
    return response


@blueprint.errorhandler(HTTPException)
def _blueprint_http_error(exc: HTTPException) -> Response:
    return _http_error(exc)


@blueprint.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("[API] %s %s failed", request.method, request.path)
    return error_response(500, "Internal error.", {})


def _under(prefix: str, path: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


@blueprint.record_once
def _install_routing_error_handlers(setup_state: Any) -> None:
    """404/405 raised by routing reach app-level handlers only. Answer JSON
    for paths under the queue's prefix; anything else goes to whatever the
    host app had registered, or to Flask's default page."""
    app = setup_state.app
    prefix = (setup_state.url_prefix or "").rstrip("/")
    for code, exc_class in ((404, NotFound), (405, MethodNotAllowed)):
        previous = app.error_handler_spec[None][code].get(exc_class)
        app.register_error_handler(code, _routing_handler(app, prefix, previous))


def _routing_handler(app: Any, prefix: str, previous: Callable | None) -> Callable[[HTTPException], Any]:
    def handler(exc: HTTPException) -> Any:
        if _under(prefix, request.path):
            return _http_error(exc)
        if previous is not None:
            return previous(exc)
        for cls in type(exc).__mro__:  # the host's class-based handlers, as Flask would find them
            generic = app.error_handler_spec[None][None].get(cls)
            if generic is not None:
                return generic(exc)
        return exc
    return handler


# Route modules that build on this blueprint register themselves below.
from . import dashboard, metrics  # noqa: E402  (routes defined in their own modules)
dashboard.register(blueprint)
metrics.register(blueprint)
