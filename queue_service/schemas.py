"""Request and response schemas of the REST API, and the JSON helpers.

The queue serializes its own JSON with ``json.dumps``: a host app may have
replaced ``app.json`` (flask-pymongo does), and the queue's answers must not
change with it.
"""
from __future__ import annotations

import json
from typing import Any

from flask import Response


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    response = Response(body + "\n", status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> Response:
    """``{"error": message, "details": {...}}`` with ``status``."""
    return json_response({"error": message, "details": details or {}}, status)
