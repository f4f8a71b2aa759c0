"""This process's store, made and set up on first use, and again after a failure.

A store that cannot be reached or set up (MongoDB down, an SQLite path that
cannot be created) never fails the host app: ``get()`` raises
``StoreNotReady`` (a ``StoreUnavailable``, so the API answers 503 with
Retry-After) and the next attempt waits a capped backoff measured on the
queue's clock. While one thread attempts, callers that already saw a failure
get ``StoreNotReady`` at once instead of waiting on the lock, so no request
queues up behind a 5 s server selection. The driver's text goes to the log
(once per change of state, not once per attempt); ``reason`` is the generic
words a public health check may show.
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from typing import Callable

from .clock import Clock
from .errors import ConfigurationError, StoreRefusesWrites, StoreUnavailable
from .store import Store
from .write_watch import REFUSES_WRITES

log = logging.getLogger("queue_service")

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 15.0
UNREACHABLE = "store unreachable"
MISCONFIGURED = "store refused the queue's setup"


class StoreNotReady(StoreUnavailable):
    """This process's store is not set up yet (its last setup failed)."""


def describe_cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"


class LazyStore:
    def __init__(self, factory: Callable[[], Store], clock: Clock):
        self._factory = factory
        self._clock = clock
        self._reset(None)

    def _reset(self, pid: int | None) -> None:
        # A fork keeps the parent's store (its client, its locks) unusable: start over.
        self._pid = pid
        self._lock = threading.Lock()
        self._made: Store | None = None
        self._ready: Store | None = None
        self.failures = 0
        self.reason: str | None = None  # generic words while failing, None when ready or untried
        self._detail: str | None = None  # the failing state last logged
        self._retry_at: datetime | None = None

    # -- state ------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready is not None and self._pid == os.getpid()

    @property
    def kind(self) -> str | None:
        made = self._made if self._pid == os.getpid() else None
        return made.kind if made is not None else None

    def retry_in(self) -> float:
        """Seconds until the next setup attempt is allowed (0 when it is)."""
        if self._retry_at is None:
            return 0.0
        return max(0.0, (self._retry_at - self._clock.now()).total_seconds())

    def close(self) -> None:
        """Close this process's store (set up or not); the next use makes it again."""
        with self._lock:
            made = self._made if self._pid == os.getpid() else None
            self._reset(self._pid)
        if made is not None:
            made.close()

    # -- access -----------------------------------------------------------------
    def get(self) -> Store:
        pid = os.getpid()
        if self._pid != pid:
            self._reset(pid)
        store = self._ready
        if store is not None:
            return store
        if self.failures and self.retry_in() > 0:
            raise StoreNotReady(self.reason or UNREACHABLE)
        # The first attempt is waited for; once one failed, nobody waits behind another.
        if not self._lock.acquire(blocking=not self.failures):
            raise StoreNotReady(self.reason or UNREACHABLE)
        try:
            if self._ready is not None:
                return self._ready
            if self.failures and self.retry_in() > 0:
                raise StoreNotReady(self.reason or UNREACHABLE)
            return self._attempt()
        finally:
            self._lock.release()

    def _attempt(self) -> Store:
        try:
            if self._made is None:
                self._made = self._factory()
            self._made.setup()
        except Exception as exc:  # whatever a driver raises, the host app keeps running
            self._failed(exc)
            raise StoreNotReady(self.reason or UNREACHABLE) from exc
        if self.failures:
            log.warning("[Queue] Store is back after %d failed setup attempt(s)", self.failures)
        self._ready = self._made
        self.failures, self.reason, self._detail, self._retry_at = 0, None, None, None
        return self._ready

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (self.failures - 1))
        self._retry_at = self._clock.now() + timedelta(seconds=delay)
        is_config = isinstance(exc, ConfigurationError) or isinstance(exc.__cause__, ConfigurationError)
        self.reason = MISCONFIGURED if is_config else UNREACHABLE
        detail = describe_cause(exc)
        # The state is the kind of failure: a driver's text changes on every
        # attempt (timings, topology ids), so it cannot be the key.
        state = type(exc.__cause__ or exc).__name__
        if state != self._detail:  # once per change of state, not once per attempt
            log.error("[Queue] Store setup failed (%s); the queue retries with backoff up to %gs, "
                      "the host app keeps serving: %s", self.reason, MAX_RETRY_SECONDS, detail)
            self._detail = state
        else:
            log.debug("[Queue] Store setup failed again (attempt %d): %s", self.failures, detail)


def log_loop_failure(logger: logging.Logger, what: str, exc: Exception, failures: int, wait: float) -> None:
    """A thread loop's failure, logged once per streak: StoreNotReady is the
    LazyStore's to log; anything else gets its traceback the first time and
    a debug line after."""
    if isinstance(exc, StoreNotReady):
        logger.debug("%s: store not ready; retrying in %.1fs", what, wait)
    elif failures == 1:
        logger.exception("%s; retrying in %.1fs (repeats are logged at DEBUG)", what, wait)
    else:
        logger.debug("%s again (%d in a row): %s", what, failures, describe_cause(exc))


def public_reason(exc: BaseException) -> str:
    """What a public health check may say about a store failure: no hosts, no driver text."""
    if isinstance(exc, StoreNotReady):
        return str(exc) if str(exc) in (UNREACHABLE, MISCONFIGURED) else UNREACHABLE
    if isinstance(exc, StoreRefusesWrites):
        return REFUSES_WRITES
    if isinstance(exc, StoreUnavailable):
        return UNREACHABLE
    return "store error"
