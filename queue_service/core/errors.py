"""The exception tree. Every error the package raises derives from QueueError.

Stores re-raise driver errors ``from exc`` as StoreError / StoreUnavailable, so
callers above the store never see sqlite3 or pymongo exceptions. Only the
blueprint turns these into HTTP status codes.
"""
from __future__ import annotations

import marshmallow


class QueueError(Exception):
    """Base class of every exception raised by queue_service."""


class ValidationError(QueueError, marshmallow.ValidationError):
    """Input refused before anything was written.

    ``messages`` maps field names to lists of messages (marshmallow's shape),
    e.g. ``{"payload": {"to": ["Not a valid email address."]}}``.
    """


class UnknownJobType(ValidationError):
    """``add_job`` was given a type no handler is registered for.

    The message (and ``messages["type"]``) lists the registered types, which
    are also in ``registered``: a typo or a module that was never imported
    (so its ``@queue.job_type`` never ran) shows at once."""

    def __init__(self, job_type: str, registered: "list[str] | tuple[str, ...]" = ()):
        self.registered = sorted(registered)
        known = ", ".join(self.registered) or "none"
        super().__init__({"type": [f"Unknown job type: {job_type!r}. Registered types: {known}."]})
        self.job_type = job_type


class InvalidSchedule(ValidationError, ValueError):
    """``queue.periodic(...)`` was given a priority or payload that ``add_job``
    would refuse (``messages`` as for add_job). It is also a ValueError, as
    every other bad argument of a schedule is (cron, every, tz, catchup...)."""


class DuplicateJobType(QueueError):
    """A job type was registered twice."""


class JobNotFound(QueueError):
    """No job has this id."""


class InvalidTransition(QueueError):
    """The job exists but is not in a state that allows the operation."""

    def __init__(self, job_id: str, status: str, operation: str):
        super().__init__(f"job {job_id} is {status}; cannot {operation} it")
        self.job_id = job_id
        self.status = status
        self.operation = operation


class PermanentJobError(QueueError):
    """Raised by a handler: fail the job now, without retries."""


class StoreError(QueueError):
    """The store failed in a way that retrying the same call will not fix."""


class UnstorableValue(StoreError):
    """A value the store cannot keep (too large, an integer beyond 64 bits, a
    NUL in a key): writing it again will fail the same way."""


class StoreUnavailable(StoreError):
    """The store could not be reached (locked, down, timed out)."""


class StoreRefusesWrites(StoreUnavailable):
    """The store answers reads but refuses writes (MongoDB Atlas over its
    quota, code 8000; a read-only or full SQLite file). Health says "store
    refuses writes" until a write succeeds again (``core.write_watch``)."""


class ConfigurationError(QueueError):
    """A setting has a value the queue cannot use."""
