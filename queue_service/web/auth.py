"""Admin authorization for the queue's blueprint views.

Admin routes need ``Authorization: Bearer $QUEUE_ADMIN_TOKEN``; the token is
compared in constant time. A host app can put its own check in place (its
login, say) with the ``JobQueue.admin_check`` hook::

    @queue.admin_check
    def is_admin(request) -> bool:
        return current_user.is_authenticated and current_user.is_admin

With a hook registered the token is not consulted at all. Without a hook and
without a token the admin routes answer 403, unless QUEUE_DEVELOPMENT is on.
"""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, TypeVar

from flask import Response, request

from .schemas import error_response
from .state import queue_state

View = TypeVar("View", bound=Callable[..., Any])

def _unauthorized(message: str) -> Response:
    response = error_response(401, message, {"authorization": [message]})
    # RFC 6750: tell the client which scheme the route expects.
    response.headers["WWW-Authenticate"] = 'Bearer realm="queue"'
    return response


def admin_denied() -> Response | None:
    """None when the current request may use admin routes, else the JSON
    answer to send (401 or 403)."""
    state = queue_state()
    hook = state.queue.admin_check_func
    if hook is not None:
        if hook(request):
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
    header = request.headers.get("Authorization", "")
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
