"""Serving stored media (the IMAGE_PROCESS outputs) from the job store."""
from __future__ import annotations

import hashlib
import json
import re

from flask import Response, request

from ..core.store import Store

MEDIA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CACHE_FOREVER = "public, max-age=31536000, immutable"


def media_response(store: Store, name: str) -> Response:
    """The file under ``name`` with an ETag and an immutable cache header, a
    304 when the client's copy matches, or a JSON 404."""
    stored = store.get_file(name) if MEDIA_NAME.match(name) else None
    if stored is None:
        # json.dumps, not jsonify: the host app's JSON provider is not ours to use.
        body = json.dumps({"error": "media not found", "details": {"name": name[:128]}})
        return Response(body, status=404, mimetype="application/json")
    etag = hashlib.sha256(stored.data).hexdigest()[:32]
    if etag in request.if_none_match:
        response = Response(status=304)
    else:
        response = Response(stored.data, mimetype=stored.content_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = CACHE_FOREVER
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
