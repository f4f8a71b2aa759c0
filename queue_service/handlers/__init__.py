"""Built-in job types, registered through the public ``job_type`` API.

Each module keeps its heavy imports (Pillow, requests, smtplib) inside the
functions that need them, so registering the built-ins costs a process that
never runs them almost nothing.
"""
from __future__ import annotations

from typing import Any


def register_builtins(queue: Any) -> None:
    """Register IMAGE_PROCESS, EMAIL_SEND and CLEANUP on ``queue``, exactly as
    an app registers its own types."""
    from .cleanup import CleanupSchema, run_cleanup
    from .email import EmailSchema, send_email
    from .image import ImageProcessSchema, process_images

    queue.job_type("IMAGE_PROCESS", schema=ImageProcessSchema,
                   timeout=lambda settings: settings.image_job_timeout)(process_images)
    queue.job_type("EMAIL_SEND", schema=EmailSchema)(send_email)
    queue.job_type("CLEANUP", schema=CleanupSchema)(run_cleanup)
