"""One app's queue in one process: its store, its worker and scheduler threads.

The store is made lazily in the process that uses it (never in a gunicorn
master before fork) and made again after a fork (``core.lazy_store``); a
store that cannot be set up never stops ``start()``: the threads start and
retry, and every caller gets ``StoreUnavailable`` until the store answers. ``start()`` starts exactly
one worker thread and one scheduler thread per process; ``started_here`` says
whether this process started them.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Callable

from .lazy_store import LazyStore
from .store import Store
from .clock import Clock
from .periodic import Schedules
from .registry import Registry
from .scheduler import Scheduler
from .settings import Settings
from .worker import Worker

log = logging.getLogger("queue_service")


class Runtime:
    def __init__(self, registry: Registry, settings: Settings, clock: Clock,
                 store_factory: Callable[[], Store], app: Any, schedules: Schedules | None = None):
        """``store_factory`` makes this app's store (not yet set up); ``app`` is
        the host app, whose context every handler runs in."""
        self.registry = registry
        self.schedules = schedules if schedules is not None else Schedules()
        self.settings = settings
        self.clock = clock
        self.app = app
        self.lazy_store = LazyStore(store_factory, clock)
        self._lock = threading.RLock()
        self.worker: Worker | None = None
        self.scheduler: Scheduler | None = None
        self.threads: list[threading.Thread] = []
        self._started_pid: int | None = None
        self._atexit_registered = False
        #: The queues this process's worker consumes (None: every queue); set
        #: before start() to override QUEUE_WORKER_QUEUES (``flask queue worker --queues``).
        self.worker_queues: tuple[str, ...] | None = settings.worker_queues
        #: What this process's worker record calls it: "web", or "standalone" (set by ``flask queue worker``).
        self.worker_kind = "web"

    # -- store ----------------------------------------------------------------
    @property
    def store(self) -> Store:
        """This process's store, set up on first use. Raises StoreNotReady
        (a StoreUnavailable) while its setup fails."""
        return self.lazy_store.get()

    @property
    def store_kind(self) -> str | None:
        """The store's kind once this process has made it, else None."""
        return self.lazy_store.kind

    # -- threads --------------------------------------------------------------
    @property
    def started_here(self) -> bool:
        """True when this process started the threads (and has not shut them down)."""
        return self._started_pid == os.getpid()

    @property
    def running(self) -> bool:
        return self.started_here and all(t.is_alive() for t in self.threads)

    def wants_threads_in_gunicorn(self) -> bool:
        return self.settings.autostart is not False

    def make_worker(self) -> Worker:
        return Worker(lambda: self.store, self.registry, self.clock, self.app, self.settings,
                      queues=self.worker_queues, kind=self.worker_kind)

    def make_scheduler(self, worker: Worker | None) -> Scheduler:
        return Scheduler(lambda: self.store, self.clock, worker, self.settings, self.schedules)

    def wake_worker(self, queue: str | None = None) -> None:
        """A job became runnable (on ``queue``): this process's worker looks at
        once, if it consumes that queue."""
        if self.worker is not None and (queue is None or self.worker_queues is None
                                        or queue in self.worker_queues):
            self.worker.wake.set()

    def start(self, daemon: bool = True) -> bool:
        """Start one worker thread and one scheduler thread in this process.
        Idempotent; returns True if threads were started by this call."""
        with self._lock:
            if self.started_here:
                return False
            self._started_pid = os.getpid()
            # The store is set up by its first user (the worker's first claim,
            # a request): a store that is down must not fail post_fork or init_app.
            self.worker = self.make_worker()
            self.scheduler = self.make_scheduler(self.worker)
            self.threads = [
                threading.Thread(target=self.worker.run_forever, name="queue-worker", daemon=daemon),
                threading.Thread(target=self.scheduler.run_forever, name="queue-scheduler", daemon=daemon),
            ]
            for thread in self.threads:
                thread.start()
            if not self._atexit_registered:
                atexit.register(self.shutdown)
                self._atexit_registered = True
            log.info("[Queue] Started worker %s", self.worker.worker_id)
            return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop claiming, wait up to ``timeout`` (default QUEUE_SHUTDOWN_TIMEOUT)
        for the in-flight job, then hand it back to pending. Returns True if
        nothing had to be handed back."""
        with self._lock:
            if not self.started_here or self.worker is None:
                return True
            worker, scheduler, threads = self.worker, self.scheduler, self.threads
            self._started_pid = None
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        worker.stop()
        scheduler.stop()
        threads[0].join(timeout)
        clean = True
        if threads[0].is_alive():
            clean = worker.release_current("worker shut down before the job finished") is None
        threads[1].join(1.0)
        return clean
