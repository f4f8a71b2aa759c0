"""queue_service: a persistent background job queue inside a Flask app."""
from .core.clock import Clock, ManualClock
from .core.context import JobContext
from .core.errors import (InvalidTransition, JobNotFound, PermanentJobError, QueueError, StoreError,
                          StoreUnavailable, UnknownJobType, ValidationError)
from .core.jobs import Job, JobStatus
from .web.extension import JobQueue

__all__ = [
    "Clock", "InvalidTransition", "Job", "JobContext", "JobNotFound", "JobQueue", "JobStatus", "ManualClock",
    "PermanentJobError", "QueueError", "StoreError", "StoreUnavailable", "UnknownJobType",
    "ValidationError",
]
