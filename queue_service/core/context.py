"""JobContext: what a handler gets as its second argument.

A handler sees its job's identity and attempt, the clock, the settings and
the host app, and the few store operations a handler may need (storing a
file, the retention purges), never the store itself.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from .clock import Clock
from .jobs import Job
from .settings import Settings
from .store import Store


class JobContext:
    """The running attempt of one job.

    ``id``, ``type``, ``attempt`` (1-based), ``retry_count``, ``max_retries``;
    ``app`` is the host app whose context the handler runs in; ``settings``
    the queue's parsed settings (mail, images, …).
    """

    def __init__(self, job: Job, *, store: Store, clock: Clock, settings: Settings, app: Any,
                 heartbeat: Callable[..., bool], deadline: datetime | None = None):
        """Made by the worker for each attempt; ``heartbeat(job, progress=...)``
        is the worker's, so progress also renews the worker's claim."""
        self.job = job
        self.id = job.id
        self.type = job.type
        self.attempt = job.attempt_number
        self.retry_count = job.retry_count
        self.max_retries = job.max_retries
        self.app = app
        self.settings = settings
        self.clock = clock
        self._store = store
        self._heartbeat = heartbeat
        #: When this attempt's time budget (the job type's ``timeout``) runs
        #: out, or None. Nothing enforces it: a thread cannot be killed, so
        #: long work checks ``remaining_seconds()`` and stops by itself.
        self.deadline = deadline

    def now(self) -> datetime:
        return self.clock.now()

    def remaining_seconds(self) -> float | None:
        """Seconds left before ``deadline`` (0.0 once passed), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - self.now()).total_seconds())

    @property
    def store_kind(self) -> str:
        """"sqlite" or "mongodb"."""
        return self._store.kind

    def progress(self, **progress: Any) -> bool:
        """Record progress (shown by ``GET /job/<id>``) and renew the claim.
        Returns False if the claim was lost (the handler may stop early)."""
        return self._heartbeat(self.job, progress=progress)

    def put_file(self, name: str, data: bytes, content_type: str) -> None:
        """Store (or replace) a file, served at ``{prefix}/media/<name>``."""
        self._store.put_file(name, data, content_type, self.now())

    def purge_finished_jobs(self, before: datetime) -> int:
        """Delete completed, failed and cancelled jobs that finished before ``before``."""
        return self._store.purge(before, before)

    def purge_files(self, before: datetime) -> int:
        """Delete stored files created before ``before``."""
        return self._store.purge_files(before)
