"""Job types: a name, a handler, a payload schema and a retry policy."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import marshmallow

from .errors import DuplicateJobType
from .fingerprint import dump_is_identity, load_is_identity, schema_fingerprint
from .jobs import DEFAULT_QUEUE
from .limits import MAX_RETRIES_LIMIT, require_queue_name

JOB_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

Handler = Callable[[Any, Any], Any]
Hook = Callable[[Any], None]


@dataclass
class JobType:
    name: str
    handler: Handler
    schema: marshmallow.Schema | None = None
    max_retries: int | None = None
    retry_delays: tuple[float, ...] | None = None
    on_complete: list[Hook] = field(default_factory=list)
    queue: str | None = None  # None: the default queue
    # Seconds one attempt may take (JobContext.deadline), or settings -> seconds; None: no deadline.
    timeout: float | Callable[[Any], float | None] | None = None
    # Decided once, here (core/fingerprint.py): the schema's fingerprint, stored
    # with each job at enqueue, and whether the worker may then skip loading.
    fingerprint: str | None = field(init=False, default=None, repr=False, compare=False)
    load_is_identity: bool = field(init=False, default=False, repr=False, compare=False)
    dump_is_identity: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.fingerprint = schema_fingerprint(self.schema)
        self.load_is_identity = load_is_identity(self.schema)
        self.dump_is_identity = dump_is_identity(self.schema)

    def queue_for(self, asked: str | None) -> str:
        """The queue a job of this type goes to: the one asked for (by add_job
        or a schedule), else the type's, else the queue "default"."""
        return asked or self.queue or DEFAULT_QUEUE

    def timeout_seconds(self, settings: Any) -> float | None:
        return self.timeout(settings) if callable(self.timeout) else self.timeout

    def load(self, payload: Any) -> Any:
        """Validate and deserialize a payload; raises marshmallow.ValidationError."""
        if self.schema is None:
            if not isinstance(payload, dict):
                raise marshmallow.ValidationError({"_schema": ["Payload must be an object."]})
            return payload
        return self.schema.load(payload)

    def load_stored(self, payload: Any, fingerprint: str | None) -> Any:
        """A stored payload for the handler: loaded again unless it was stored
        under this very schema (same fingerprint) and loading is the identity."""
        if self.load_is_identity and fingerprint is not None and fingerprint == self.fingerprint:
            return payload
        return self.load(payload)

    def dump(self, loaded: Any) -> dict[str, Any]:
        """The JSON form stored for a loaded payload (the loaded payload itself
        when dumping would return an equal one: core/fingerprint.py)."""
        return loaded if self.schema is None or self.dump_is_identity else self.schema.dump(loaded)


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def add(self, job_type: JobType) -> None:
        if not JOB_TYPE_NAME.match(job_type.name):
            raise ValueError(f"job type names are UPPER_SNAKE_CASE strings, got {job_type.name!r}")
        if job_type.name in self._types:
            raise DuplicateJobType(f"job type {job_type.name} is already registered")
        # Checked once here: build_job then takes a type's queue and
        # max_retries as valid (the bounds add_job's own options have).
        if job_type.queue is not None:
            require_queue_name(job_type.queue)
        retries = job_type.max_retries
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                    or not 0 <= retries <= MAX_RETRIES_LIMIT):
            raise ValueError(f"max_retries must be an integer from 0 to {MAX_RETRIES_LIMIT}, got {retries!r}")
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self):
        return iter(self._types.values())
