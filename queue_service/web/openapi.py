"""The OpenAPI 3 document of the REST API, generated from ``schemas.py``.

apispec's marshmallow plugin converts the same schemas the routes load and
dump with, so the document cannot drift from what the server does. Each
registered job type contributes its payload schema; ``POST /jobs`` takes one
of the per-type variants, told apart by ``type``.
"""
from __future__ import annotations

import copy
import threading
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import make_schema_key, resolve_schema_instance

from ..core.limits import MAX_BULK_IDS
from ..core.limits import MAX_BULK_JOBS, MAX_JSON_DEPTH, MAX_TYPE_NAME_CHARS, QUEUE_NAME
from . import schemas as s

TITLE = "queue_service REST API"
VERSION = "1.0.0"
OPENAPI_VERSION = "3.0.3"
DESCRIPTION = (
    "A persistent job queue inside a Flask app. Every answer is JSON; errors are "
    '`{"error": "...", "details": {...}}`. Admin routes need `Authorization: Bearer '
    "$QUEUE_ADMIN_TOKEN` (or the host app's own check).")

_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
_cache_lock = threading.Lock()
MAX_CACHED = 16

RESPONSE_COMPONENTS = {
    "Error": s.ErrorSchema, "Job": s.JobSchema, "JobCreated": s.JobCreatedSchema, "JobPage": s.JobPageSchema,
    "StatsResponse": s.StatsResponseSchema, "CleanupResponse": s.CleanupResponseSchema, "Health": s.HealthSchema,
    "BulkResult": s.BulkResultSchema, "Workers": s.WorkersResponseSchema,
    "History": s.HistorySchema,
    "SchedulesResponse": s.SchedulesResponseSchema,
}
ERRORS = {
    400: "Invalid request: malformed JSON, a body that is not an object, or invalid fields (details name them).",
    401: "Missing or wrong bearer token.",
    403: "Admin routes are disabled (no QUEUE_ADMIN_TOKEN is configured), or a cross-origin browser "
         "request was refused (the host's admin_check hook authenticates by cookie).",
    404: "No job with this id (ids that are not UUIDs included).",
    409: "The job is not in a state that allows this.",
    413: "Request body over QUEUE_MAX_BODY_BYTES.",
    415: "The body is not application/json.",
    503: "The job store cannot be reached (or failed); try again shortly.",
}
ADMIN_ERRORS = (401, 403)
# Routes without input: no body, or an empty object.
NO_INPUT = {"required": False, "description": "None; an empty object is accepted.", "content": {
    "application/json": {"schema": {"type": "object", "maxProperties": 0, "additionalProperties": False}}}}


def document(registry: Any, server_url: str) -> dict[str, Any]:
    """The OpenAPI document for a queue whose job types are in ``registry``,
    served under ``server_url`` (the blueprint's prefix)."""
    key = (server_url, tuple((t.name, id(t.schema)) for t in registry))
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        cached = _build(list(registry), server_url)
        with _cache_lock:
            if len(_cache) >= MAX_CACHED:
                _cache.clear()
            _cache[key] = cached
    return copy.deepcopy(cached)


def _name_resolver() -> Any:
    """Component names for nested schemas: the class name without "Schema",
    numbered when two different schemas would share one (apispec warns)."""
    taken: dict[str, Any] = {}

    def resolve(schema: Any) -> str:
        instance = resolve_schema_instance(schema)
        key = make_schema_key(instance)
        base = type(instance).__name__.removesuffix("Schema") or type(instance).__name__
        name, n = base, 1
        while name in taken and taken[name] != key:
            n += 1
            name = f"{base}{n}"
        taken[name] = key
        return name
    return resolve


def _error(code: int) -> dict[str, Any]:
    return {"description": ERRORS[code], "content": {"application/json": {"schema": "Error"}}}


def _responses(ok: tuple[int, str, str] | None, *errors: int, admin: bool = True) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    if ok is not None:
        code, description, schema = ok
        out[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if 413 in errors:  # a route that reads a body also refuses one that is not JSON
        errors = (*errors, 415)
    for code in sorted(set(errors) | (set(ADMIN_ERRORS) if admin else set())):
        out[code] = _error(code)
    return out


def _payload_components(spec: APISpec, job_types: list[Any]) -> dict[str, str]:
    """Register each type's payload schema; returns type name -> component name."""
    names: dict[str, str] = {}
    by_key: dict[Any, str] = {}
    for job_type in job_types:
        component = f"{job_type.name}Payload"
        schema = job_type.schema
        if schema is None:
            spec.components.schema(component, component={
                "type": "object", "description": "Any JSON object (integers within 64 bits, finite numbers, "
                                                 f"at most {MAX_JSON_DEPTH} levels of nesting)."})
        else:
            instance = resolve_schema_instance(schema)
            key = make_schema_key(instance)
            if key in by_key:  # one schema shared by two types: register it once
                names[job_type.name] = by_key[key]
                continue
            spec.components.schema(component, schema=instance)
            by_key[key] = component
        names[job_type.name] = component
    return names


def _job_create_variants(spec: APISpec, plugin: MarshmallowPlugin, payloads: dict[str, str]) -> dict[str, Any]:
    """``POST /jobs`` body: one variant per job type (``type`` fixed, its own
    payload schema), so a client generating requests from this document
    builds payloads the server accepts."""
    base = plugin.converter.schema2jsonschema(s.JobCreateSchema)
    base["not"] = {"required": ["delay", "runAt"]}  # the schema's own cross-field rule
    if not payloads:
        spec.components.schema("JobCreate", component=base)
        return {"$ref": "#/components/schemas/JobCreate"}
    refs = {}
    for type_name, payload_component in sorted(payloads.items()):
        variant = copy.deepcopy(base)
        variant["properties"]["type"] = {"type": "string", "enum": [type_name]}
        variant["properties"]["payload"] = {"$ref": f"#/components/schemas/{payload_component}"}
        name = f"JobCreate_{type_name}"
        spec.components.schema(name, component=variant)
        refs[type_name] = f"#/components/schemas/{name}"
    return {"oneOf": [{"$ref": ref} for ref in refs.values()],
            "discriminator": {"propertyName": "type", "mapping": refs}}


def _operator_paths(spec: APISpec, job_id: dict[str, Any]) -> None:
    """Bulk retry/cancel, run now, workers and history (issue 17)."""
    for action, status, what in (("retry", "failed", "failed jobs -> pending"),
                                 ("cancel", "pending", "pending jobs -> cancelled")):
        by_ids = {"type": "object", "required": ["ids"], "additionalProperties": False, "properties": {
            "ids": {"type": "array", "minItems": 1, "maxItems": MAX_BULK_IDS, "items": {"type": "string"}}}}
        by_filter = {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
            "status": {"type": "string", "enum": [status]},
            "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_NAME_CHARS},
            "queue": {"type": "string", "pattern": f"^{QUEUE_NAME}$"}}}
        body = {"required": True, "content": {"application/json": {"schema": {"oneOf": [by_ids, by_filter]}}}}
        spec.path(f"/jobs/{action}", operations={"post": {
            "summary": f"Bulk {action}: {what}, by ids (at most 1,000) or a filter (admin)",
            "operationId": f"bulk{action.capitalize()}", "requestBody": body,
            "responses": _responses((200, "How many matched and how many changed.", "BulkResult"), 400, 413, 503)}})
    spec.path("/job/{id}/run-now", parameters=[job_id], operations={"post": {
        "summary": "Make a delayed or retry-scheduled job runnable now, counting no retry (admin)",
        "operationId": "runJobNow", "requestBody": NO_INPUT,
        "responses": _responses((200, "The job after the change.", "Job"), 400, 404, 409, 413, 503)}})
    spec.path("/workers", operations={"get": {
        "summary": "The workers that registered, alive or gone (admin)", "operationId": "listWorkers",
        "responses": _responses((200, "Worker records, most recently seen first.", "Workers"), 503)}})
    spec.path("/stats/history", operations={"get": {
        "summary": "Finished jobs per time bucket (admin)", "operationId": "getHistory",
        "parameters": [{"in": "query", "schema": s.HistoryQuerySchema}],
        "responses": _responses((200, "Buckets, oldest first.", "History"), 400, 503)}})
    spec.path("/jobs/search", operations={"get": {
        "summary": "Find jobs by id prefix (admin)", "operationId": "searchJobs",
        "parameters": [{"in": "query", "schema": s.JobSearchQuerySchema}],
        "responses": _responses((200, "The matching jobs, by id; nextBefore is null.", "JobPage"), 400, 503)}})


def _build(job_types: list[Any], server_url: str) -> dict[str, Any]:
    plugin = MarshmallowPlugin(schema_name_resolver=_name_resolver())
    spec = APISpec(title=TITLE, version=VERSION, openapi_version=OPENAPI_VERSION, plugins=[plugin],
                   info={"description": DESCRIPTION}, servers=[{"url": server_url or "/"}],
                   security=[{"bearerAuth": []}])
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    for name, schema in RESPONSE_COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    single = _job_create_variants(spec, plugin, _payload_components(spec, job_types))
    spec.components.schema("JobCreateOne", component=single)
    spec.components.schema("JobCreateMany", component={
        "type": "object", "required": ["jobs"], "additionalProperties": False,
        "description": "Bulk enqueue: every job is validated before any is stored; errors name the index.",
        "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": MAX_BULK_JOBS,
                                "items": {"$ref": "#/components/schemas/JobCreateOne"}}}})
    spec.components.schema("JobsCreated", component={
        "type": "object", "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobCreated"}}}})
    stamp = {"type": "string", "format": "date-time", "nullable": True}
    spec.components.schema("PublicJob", component={
        "type": "object", "description": "What an anonymous caller sees (web.public; a host's public_view hook "
                                         "may widen it): status fields only; a failed job's error is 'failed'.",
        "properties": {"id": {"type": "string", "format": "uuid"}, "type": {"type": "string"},
                       "status": {"type": "string", "enum": s.STATUSES}, "retryCount": {"type": "integer"},
                       "maxRetries": {"type": "integer"}, "createdAt": stamp, "runAt": stamp, "processedAt": stamp,
                       "completedAt": stamp, "progress": {"type": "object", "nullable": True},
                       "error": {"type": "string", "nullable": True}}})
    body = {"oneOf": [{"$ref": "#/components/schemas/JobCreateOne"}, {"$ref": "#/components/schemas/JobCreateMany"}]}
    job_id = {"in": "path", "name": "id", "required": True,
              "schema": {"type": "string", "format": "uuid"}, "description": "A job id (UUID)."}
    public: list[dict[str, Any]] = []

    spec.path("/jobs", operations={
        "post": {"summary": "Enqueue a job (admin)", "operationId": "createJob",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                 "responses": _responses((201, "Created (or the job already holding this idempotency key); "
                                          "for a bulk request, one answer per job in order.",
                                          {"oneOf": [{"$ref": "#/components/schemas/JobCreated"},
                                                     {"$ref": "#/components/schemas/JobsCreated"}]}),
                                         400, 413, 503)},
        "get": {"summary": "List jobs, newest first (admin)", "operationId": "listJobs",
                "parameters": [{"in": "query", "schema": s.JobListQuerySchema}],
                "responses": _responses((200, "One page of jobs.", "JobPage"), 400, 404, 503)},
    })
    spec.path("/job/{id}", parameters=[job_id], operations={
        "get": {"summary": "One job (public: anonymous callers get its status fields only, PublicJob; "
                           "admins the whole job)", "operationId": "getJob", "security": public,
                "responses": _responses((200, "The job.", {"oneOf": [{"$ref": "#/components/schemas/Job"},
                                                                     {"$ref": "#/components/schemas/PublicJob"}]}),
                                        404, 503, admin=False)},
    })
    for action, what in (("cancel", "pending -> cancelled"), ("retry", "failed -> pending, fresh retries")):
        spec.path(f"/job/{{id}}/{action}", parameters=[job_id], operations={
            "post": {"summary": f"{action.capitalize()} a job: {what} (admin)", "operationId": f"{action}Job",
                     "requestBody": NO_INPUT,
                     "responses": _responses((200, "The job after the change.", "Job"), 400, 404, 409, 413, 503)},
        })
    _operator_paths(spec, job_id)
    spec.path("/stats", operations={"get": {
        "summary": "Job counts by status (admin)", "operationId": "getStats",
        "responses": _responses((200, "Counts and oldest ages in seconds.", "StatsResponse"), 503)}})
    spec.path("/schedules", operations={"get": {
        "summary": "Periodic schedules: next run, last slot and its job (admin)", "operationId": "listSchedules",
        "responses": _responses((200, "Every registered schedule.", "SchedulesResponse"), 503)}})
    spec.path("/cleanup", operations={"post": {
        "summary": "Requeue jobs whose worker stopped heartbeating (admin)", "operationId": "cleanup",
        "requestBody": NO_INPUT,
        "responses": _responses((200, "How many stuck jobs were recovered.", "CleanupResponse"), 400, 413, 503)}})
    spec.path("/health", operations={"get": {
        "summary": "Health check (public)", "operationId": "health", "security": public,
        "responses": {
            200: {"description": "Healthy.", "content": {"application/json": {"schema": "Health"}}},
            503: {"description": "Unhealthy: `problems` says why.",
                  "content": {"application/json": {"schema": {"anyOf": [
                      {"$ref": "#/components/schemas/Health"}, {"$ref": "#/components/schemas/Error"}]}}}},
        }}})
    spec.path("/media/{name}", parameters=[{
        "in": "path", "name": "name", "required": True, "description": "A stored file's name.",
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}}], operations={"get": {
            "summary": "A processed image (public, immutable)", "operationId": "getMedia", "security": public,
            "responses": {
                200: {"description": "The file.",
                      "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                304: {"description": "Not modified (If-None-Match matched the ETag)."},
                404: {"description": "No such file.", "content": {"application/json": {"schema": "Error"}}},
                503: _error(503),
            }}})
    spec.components.schema("OpenApiDocument", component={"type": "object"})
    spec.path("/openapi.json", operations={"get": {
        "summary": "This document (admin)", "operationId": "openapi",
        "responses": _responses((200, "The OpenAPI document.", "OpenApiDocument"))}})
    return spec.to_dict()

