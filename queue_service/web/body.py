"""Reading and guarding request input: the JSON body, the query string, ids.

A body is read up to ``QUEUE_MAX_BODY_BYTES`` (or the host's smaller
MAX_CONTENT_LENGTH) and must be one JSON object that both stores can hold:
bounded nesting, 64-bit integers, finite numbers, valid Unicode, sent as
``Content-Type: application/json`` (415 otherwise). Anything else is an
``ApiError`` with the 4xx to answer.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import marshmallow
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.errors import JobNotFound, ValidationError
from ..core.limits import INT64_RANGE, MAX_JSON_DEPTH
from .schemas import JOB_ID
from .state import queue_state

READ_CHUNK_BYTES = 16384


class ApiError(Exception):
    """A 4xx answer decided while reading the request."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}


def read_json_object(optional: bool = False, state: Any = None) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError (400/413). With
    ``optional``, an empty body reads as ``{}``. ``state``: the queue's, if the
    caller has it already."""
    req = request._get_current_object()  # one proxy lookup (web/state.py)
    raw = read_body(body_limit(state), req)
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "Request body is empty; send a JSON object.", {"body": ["Missing data."]})
    if req.mimetype != "application/json":
        # A browser form (text/plain, urlencoded, multipart) or a no-cors fetch can
        # send those cross-origin without a preflight; application/json cannot.
        raise ApiError(415, "Content-Type must be application/json.",
                       {"contentType": [f"Got {req.mimetype or 'none'!r}; send application/json."]})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "Request body is not valid UTF-8.",
                       {"body": [f"Invalid UTF-8 at byte {exc.start}."]}) from None
    try:
        value = _DECODER.decode(text)
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
    if _may_hold_unstorable(text):
        _check_json_value(value)
    return value


def body_limit(state: Any = None) -> int:
    """QUEUE_MAX_BODY_BYTES, or the host's MAX_CONTENT_LENGTH if smaller."""
    state = state or queue_state()
    limit = state.settings.max_body_bytes
    host_limit = state.app.config.get("MAX_CONTENT_LENGTH")
    return min(limit, int(host_limit)) if host_limit else limit


def read_body(limit: int, req: Any = None) -> bytes:
    """At most ``limit`` bytes of body (of ``req``, default the current
    request), or 413. Reads ``limit + 1`` bytes at most, whatever the client
    sends: a chunked body has no Content-Length to check up front, and
    Werkzeug's own cap stops silently at the limit."""
    req = req or request._get_current_object()
    stream = req.stream
    length = req.content_length
    if length is not None and length <= limit:
        # Werkzeug's stream ends at Content-Length: one read is the whole body
        # (a client that sends less is a ClientDisconnected, a 400).
        return stream.read(length)
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


# One decoder, made once (json.loads with an option builds one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# What the walk below refuses can only come from text holding one of these: a
# \u escape (a lone surrogate; valid UTF-8 holds none), a run of 19 digits (an
# integer outside 64 bits, or a float that overflows without an exponent), an
# exponent (1e999), or more brackets than MAX_JSON_DEPTH (nesting; json.loads
# itself stops at Python's recursion limit). Text with none of them is not walked.
_MAYBE_UNSTORABLE = re.compile(r"\\u|[0-9]{19}|[0-9][eE]")


def _may_hold_unstorable(text: str) -> bool:
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        return True
    return _MAYBE_UNSTORABLE.search(text) is not None


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
