"""Admin authorization for the queue's blueprint views.

Admin routes need ``Authorization: Bearer $QUEUE_ADMIN_TOKEN``; the token is
compared in constant time. A host app can put its own check in place (its
login, say) with the ``JobQueue.admin_check`` hook::

    @queue.admin_check
    def is_admin(request) -> bool:
        return current_user.is_authenticated and current_user.is_admin

With a hook registered the token is not consulted at all, and since such
a hook usually trusts a session cookie that a browser sends on any site's
behalf, a state-changing request (POST...) from a browser on another origin
(``Origin`` not this ``Host``, or ``Sec-Fetch-Site: cross-site``) is refused
with 403 before the hook is asked. Bearer-token requests carry no ambient
credential and are not checked. Without a hook and
without a token the admin routes answer 403, unless QUEUE_DEVELOPMENT is on.
"""
from __future__ import annotations

import functools
import hmac
from urllib.parse import urlsplit
from typing import Any, Callable, TypeVar

from flask import Response, request

from .schemas import error_response
from .state import queue_state

View = TypeVar("View", bound=Callable[..., Any])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_origin() -> bool:
    """True for a browser request from another site: ``Sec-Fetch-Site:
    cross-site`` (or ``same-site``: a sibling subdomain is another origin),
    or an ``Origin`` whose host is not this request's ``Host``. Clients that
    are not browsers send neither header and are never refused."""
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    if origin.strip().lower() == "null":  # sandboxed iframes, file: pages, some redirects
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return True
    default_port = {"http": "80", "https": "443"}

    def normal(netloc: str, scheme: str) -> str:
        netloc = netloc.lower()
        return netloc if ":" in netloc.rsplit("]", 1)[-1] else f"{netloc}:{default_port[scheme]}"
    # The Origin's scheme gives both default ports: behind a TLS-terminating
    # proxy the request itself looks like plain http.
    return normal(parts.netloc, parts.scheme) != normal(request.host, parts.scheme)


def _unauthorized(message: str) -> Response:
    response = error_response(401, message, {"authorization": [message]})
    # RFC 6750: tell the client which scheme the route expects.
    response.headers["WWW-Authenticate"] = 'Bearer realm="queue"'
    return response


def admin_denied() -> Response | None:
    """None when the current request may use admin routes, else the JSON
    answer to send (401 or 403)."""
    state = queue_state()
    req = request._get_current_object()  # one proxy lookup (web/state.py)
    hook = state.queue.admin_check_func
    if hook is not None:
        if req.method not in SAFE_METHODS and cross_origin():
            return error_response(403, "Cross-origin request refused.",
                                  {"origin": ["A state-changing request must come from this site."]})
        if hook(req):
            return None
        return _unauthorized("Admin authorization required.")
    token = state.settings.admin_token
    if not token:
        if state.settings.development:
            return None
        return error_response(
            403, "Admin routes are disabled: QUEUE_ADMIN_TOKEN is not configured "
            "(looked in app.config and the environment).",
            {"authorization": ["No admin token is configured on the server."]})
    header = req.headers.get("Authorization", "")
    scheme, _, supplied = header.strip().partition(" ")
    supplied = supplied.strip()
    if scheme.lower() != "bearer" or not supplied:
        return _unauthorized("Missing bearer token.")
    # Bytes on both sides: compare_digest refuses non-ASCII str, and header
    # values arrive as latin-1 decoded text.
    if not hmac.compare_digest(supplied.encode("utf-8", "replace"), token.encode("utf-8", "replace")):
        return _unauthorized("Invalid bearer token.")
    return None


def admin_required(view: View) -> View:
    """Decorator for blueprint views that only admins may call."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        denied = admin_denied()
        if denied is not None:
            return denied
        return view(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
