"""Serving stored media (the IMAGE_PROCESS outputs) from the job store."""
from __future__ import annotations

import json
import re

from flask import Response, request

from ..core.store import Store, media_etag

MEDIA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CACHE_FOREVER = "public, max-age=31536000, immutable"


def media_response(store: Store, name: str) -> Response:
    """The file under ``name`` with an ETag and an immutable cache header, a
    304 when the client's copy matches, or a JSON 404."""
    valid = MEDIA_NAME.match(name) is not None
    etag = store.file_etag(name) if valid and request.if_none_match else None
    if etag is not None and etag in request.if_none_match:  # the ETag is stored: no file read
        return _headers(Response(status=304), etag)
    stored = store.get_file(name) if valid else None
    if stored is None:
        # json.dumps, not jsonify: the host app's JSON provider is not ours to use.
        body = json.dumps({"error": "media not found", "details": {"name": name[:128]}})
        return Response(body, status=404, mimetype="application/json")
    etag = stored.etag or media_etag(stored.data)
    if etag in request.if_none_match:
        return _headers(Response(status=304), etag)
    return _headers(Response(stored.data, mimetype=stored.content_type), etag)


def _headers(response: Response, etag: str) -> Response:
    response.set_etag(etag)
    response.headers["Cache-Control"] = CACHE_FOREVER
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
