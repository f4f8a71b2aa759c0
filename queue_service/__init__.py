"""queue_service: a persistent background job queue inside a Flask app."""
from .core.clock import Clock, ManualClock
from .core.context import JobContext
from .core.errors import (ConfigurationError, InvalidTransition, JobNotFound, PermanentJobError, QueueError,
                          StoreError, StoreUnavailable, UnknownJobType, ValidationError)
from .core.jobs import Job, JobStatus
from .web.extension import JobQueue

#: The one place the version is written: pyproject.toml reads it (setuptools'
#: dynamic ``attr:``), and CHANGELOG.md names it.
__version__ = "0.1.0"

__all__ = [
    "Clock", "ConfigurationError", "InvalidTransition", "Job", "JobContext", "JobNotFound", "JobQueue",
    "JobStatus", "ManualClock", "PermanentJobError", "QueueError", "StoreError", "StoreUnavailable",
    "UnknownJobType", "ValidationError", "__version__",
]
