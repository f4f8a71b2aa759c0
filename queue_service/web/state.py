"""The one extension key, and the typed accessor every web surface uses.

``app.extensions[EXTENSION_KEY]`` holds one ``QueueState`` per app: the
JobQueue that was mounted, the parsed settings, the core's service and the
process runtime beneath it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from ..core.runtime import Runtime
from ..core.service import QueueService
from ..core.settings import Settings

EXTENSION_KEY = "queue_service"


@dataclass
class QueueState:
    app: Any
    queue: Any  # the web.extension.JobQueue mounted (its registry, its admin_check hook)
    settings: Settings
    service: QueueService
    runtime: Runtime


def queue_state(app: Any = None) -> QueueState:
    """The state of ``app`` (default: the current app). The proxy is resolved
    once: each attribute read through Werkzeug's LocalProxy costs ~1-2 us, and
    the request path reads many (see web/body.py)."""
    target = current_app._get_current_object() if app is None else app
    return target.extensions[EXTENSION_KEY]
