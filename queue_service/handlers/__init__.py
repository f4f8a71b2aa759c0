"""Built-in job types, registered through the public ``job_type`` API."""
from __future__ import annotations

from typing import Any


def register_builtins(queue: Any) -> None:
    """Register IMAGE_PROCESS, EMAIL_SEND and CLEANUP on ``queue``."""
