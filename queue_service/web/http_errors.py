"""Errors as HTTP answers: the one place the queue's exceptions get status codes.

Every answer is JSON, errors included (``{"error": ..., "details": {...}}``):
ValidationError 400, JobNotFound 404, InvalidTransition 409, store failures
503. Routing errors (404 for an unknown path, 405) happen before Flask knows
the blueprint, so ``install`` puts app-level handlers in place that answer
JSON for paths under the queue's prefix and leave every other path to the
host app.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import marshmallow
from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from ..core.errors import InvalidTransition, JobNotFound, QueueError, StoreError, StoreUnavailable, ValidationError
from .body import ApiError, body_limit
from .schemas import error_response

log = logging.getLogger("queue_service.api")

ECHO_CHARS = 80  # how much of a bad id an error repeats back


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


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.details)


def _validation_error(exc: marshmallow.ValidationError) -> Response:
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return error_response(400, "Invalid fields: " + ", ".join(sorted(map(str, messages))) + ".", messages)


def _not_found(exc: JobNotFound) -> Response:
    job_id = str(exc.args[0]) if exc.args else ""
    return error_response(404, "Job not found.", {"id": job_id[:ECHO_CHARS]})


def _conflict(exc: InvalidTransition) -> Response:
    return error_response(409, f"Cannot {exc.operation} a job that is {exc.status}.",
                          {"id": exc.job_id, "status": exc.status, "operation": exc.operation})


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


def _unexpected(exc: Exception) -> Response:
    log.exception("[API] %s %s failed", request.method, request.path)
    return error_response(500, "Internal error.", {})


def _under(prefix: str, path: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


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


def install(blueprint: Blueprint) -> None:
    """The blueprint's error handlers, and the app-level routing handlers."""
    blueprint.register_error_handler(ApiError, _api_error)
    blueprint.register_error_handler(marshmallow.ValidationError, _validation_error)
    blueprint.register_error_handler(ValidationError, _validation_error)
    blueprint.register_error_handler(JobNotFound, _not_found)
    blueprint.register_error_handler(InvalidTransition, _conflict)
    for exc_class in (StoreUnavailable, StoreError, QueueError):
        blueprint.register_error_handler(exc_class, _store_error)
    blueprint.register_error_handler(HTTPException, _http_error)
    blueprint.register_error_handler(Exception, _unexpected)
    blueprint.record_once(_install_routing_error_handlers)
