"""``GET {prefix}/dashboard``: the operator's page, served by the blueprint.

The page holds no job data: its script reads everything from the REST API
with the admin token the operator enters (kept in sessionStorage, sent as a
Bearer header), so the API's admin check, and a host app's own hook, guard
the data. No build step and no external assets: one HTML template, one
script and one stylesheet from ``queue_service/static``, under a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response, render_template_string, request, url_for

from .schemas import error_response
from .state import queue_state

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE = PACKAGE_DIR / "templates" / "queue_dashboard.html"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard-ops.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Everything the page needs comes from this origin; nothing runs inline, so a
# job value that slipped into markup still could not execute.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
ASSET_MAX_AGE_SECONDS = 3600


@lru_cache(maxsize=None)
def _asset(name: str) -> tuple[bytes, str]:
    """The file's bytes and a short content hash (its cache-busting version)."""
    data = (STATIC_DIR / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


@lru_cache(maxsize=1)
def _template() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _asset_url(name: str) -> str:
    return url_for(".dashboard_asset", name=name, v=_asset(name)[1])


def human_duration(seconds: float) -> str:
    """604800 -> "7 days", 43200 -> "12 hours": for the retention hints."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def dashboard_page() -> Response:
    state = queue_state()
    api_base = url_for(".dashboard_page").rsplit("/dashboard", 1)[0]
    html = render_template_string(
        _template(),
        api_base=api_base,
        stuck_after=f"{state.settings.stuck_after:g}",
        kept_completed=human_duration(state.settings.completed_ttl),
        kept_failed=human_duration(state.settings.failed_ttl),
        asset=_asset_url,
    )
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return _secure(response)


def dashboard_asset(name: str) -> Response:
    if name not in ASSETS:
        return error_response(404, "Not found: no such dashboard asset.", {"asset": name[:80]})
    data, version = _asset(name)
    response = Response(data, content_type=ASSETS[name])
    response.set_etag(version)
    # Versioned URLs (?v=hash) may be cached; a bare URL is revalidated.
    response.cache_control.public = True
    response.cache_control.max_age = ASSET_MAX_AGE_SECONDS if request.args.get("v") == version else 0
    return _secure(response.make_conditional(request))


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/dashboard", "dashboard_page", dashboard_page, methods=["GET"])
    blueprint.add_url_rule("/dashboard/assets/<name>", "dashboard_asset", dashboard_asset, methods=["GET"])
