"""queue_service: a persistent background job queue inside a Flask app."""
from .clock import Clock, ManualClock
from .errors import (InvalidTransition, JobNotFound, PermanentJobError, QueueError, StoreError,
                     StoreUnavailable, UnknownJobType, ValidationError)
from .extension import JobQueue
from .jobs import Job, JobStatus

__all__ = [
    "Clock", "InvalidTransition", "Job", "JobNotFound", "JobQueue", "JobStatus", "ManualClock",
    "PermanentJobError", "QueueError", "StoreError", "StoreUnavailable", "UnknownJobType",
    "ValidationError",
]
