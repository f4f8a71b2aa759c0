"""queue_service: a persistent background job queue inside a Flask app."""
from .clock import Clock, ManualClock
from .errors import (ConfigurationError, InvalidTransition, JobNotFound, PermanentJobError, QueueError,
                     StoreError, StoreUnavailable, UnknownJobType, ValidationError)
from .extension import JobQueue
from .jobs import Job, JobStatus

#: The one place the version is written: pyproject.toml reads it (setuptools'
#: dynamic ``attr:``), and CHANGELOG.md names it.
__version__ = "0.1.0"

__all__ = [
    "Clock", "ConfigurationError", "InvalidTransition", "Job", "JobNotFound", "JobQueue", "JobStatus",
    "ManualClock", "PermanentJobError", "QueueError", "StoreError", "StoreUnavailable", "UnknownJobType",
    "ValidationError", "__version__",
]
