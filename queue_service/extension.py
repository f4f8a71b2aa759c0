"""JobQueue: the Flask extension and the Python API.

Job types are code and live on the JobQueue object (like a blueprint's
routes). Everything that belongs to one app (settings, store, threads) lives
in ``app.extensions["queue_service"]``, so one JobQueue can serve several apps
in one process.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
from datetime import datetime, timedelta
from typing import Any, Callable

import marshmallow
from flask import Flask, current_app

from . import hosting
from .api import blueprint
from .cli import queue_cli
from .clock import Clock, ensure_aware
from .errors import ConfigurationError, InvalidTransition, JobNotFound, StoreError, UnknownJobType, ValidationError
from .jobs import Job, JobStatus, iso, new_job_id
from .registry import JobType, Registry
from .scheduler import Scheduler
from .settings import Settings
from .stores.base import Store
from .worker import Worker

log = logging.getLogger("queue_service")

EXTENSION_KEY = "queue_service"
PRIORITY_RANGE = (-1_000_000, 1_000_000)
MAX_DELAY_SECONDS = 366 * 24 * 3600
MAX_RETRIES_LIMIT = 100
MAX_IDEMPOTENCY_KEY_CHARS = 200


def _age_seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def _database_getter(mongo: Any) -> Callable[[], Any]:
    """How to reach the database of what a host app handed to ``init_app``:
    a ``flask_pymongo.PyMongo`` (its ``db``, read when used) or a pymongo
    (or mongomock) Database. Anything else is a ConfigurationError."""
    from .extras import require

    require("mongo", "mongo= (the MongoDB store)")
    from flask_pymongo import PyMongo

    if isinstance(mongo, PyMongo):
        def get_db() -> Any:
            if mongo.db is None:
                raise StoreError("the PyMongo instance has no database (put one in MONGO_URI)")
            return mongo.db
        return get_db
    # A Database is recognised by its class: an instance answers any attribute
    # name (db, cx, ...) with a collection of that name.
    if all(hasattr(type(mongo), name) for name in ("get_collection", "list_collection_names")):
        return lambda: mongo
    raise ConfigurationError(f"mongo= takes a flask_pymongo.PyMongo or a database, not {type(mongo).__name__}")


def _store_from_settings(settings: Settings, get_db: Callable[[], Any] | None) -> Store:
    """Pick the store from configuration: MongoDB when the host gave one or
    MONGO_URI is set, else the SQLite file. Nothing is connected here."""
    if get_db is not None or settings.mongo_uri:
        from .stores.mongo import MongoStore  # only the MongoDB path needs pymongo loaded

        if get_db is None:
            from flask_pymongo.wrappers import MongoClient

            # flask-pymongo's client, made here (after fork) without PyMongo(app),
            # which would replace the host app's JSON provider.
            client = MongoClient(settings.mongo_uri, connect=False, tz_aware=True)
            database = client.get_default_database()
            get_db = lambda: database  # noqa: E731
        return MongoStore(get_db, settings.mongo_collection, settings.completed_ttl)
    from .stores.sqlite import SQLiteStore, path_from_url

    return SQLiteStore(path_from_url(settings.database_url), settings.sqlite_synchronous)


class QueueState:
    """One app's queue: settings, store, worker and scheduler."""

    def __init__(self, queue: "JobQueue", app: Flask, settings: Settings, clock: Clock,
                 store: Store | None, get_db: Callable[[], Any] | None):
        self.queue = queue
        self.app = app
        self.settings = settings
        self.clock = clock
        self._injected_store = store
        self._get_db = get_db
        self._store: Store | None = None
        self._store_pid: int | None = None
        self._lock = threading.RLock()
        self.worker: Worker | None = None
        self.scheduler: Scheduler | None = None
        self.threads: list[threading.Thread] = []
        self._started_pid: int | None = None
        self._atexit_registered = False

    # -- store ----------------------------------------------------------------
    @property
    def store(self) -> Store:
        pid = os.getpid()
        if self._store is None or self._store_pid != pid:
            with self._lock:
                if self._store is None or self._store_pid != pid:
                    store = self._injected_store or _store_from_settings(self.settings, self._get_db)
                    store.setup()
                    self._store, self._store_pid = store, pid
        return self._store

    # -- threads --------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started_pid == os.getpid() and all(t.is_alive() for t in self.threads)

    def wants_threads_in_gunicorn(self) -> bool:
        return self.settings.autostart is not False

    def make_worker(self) -> Worker:
        return Worker(lambda: self.store, self.queue.registry, self.clock, self.app,
                      self.settings.heartbeat_interval, self.settings.poll_interval)

    def make_scheduler(self, worker: Worker | None) -> Scheduler:
        s = self.settings
        return Scheduler(lambda: self.store, self.clock, worker, s.cleanup_interval, s.stuck_after,
                         s.completed_ttl, s.failed_ttl, s.heartbeat_interval)

    def start(self, daemon: bool = True) -> bool:
        """Start one worker thread and one scheduler thread in this process.
        Idempotent; returns True if threads were started by this call."""
        with self._lock:
            if self._started_pid == os.getpid():
                return False
            self._started_pid = os.getpid()
            self.store  # create the store (and its schema) in this process
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
            log.info("[Queue] Started worker %s (store: %s)", self.worker.worker_id, self.store.kind)
            return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop claiming, wait up to ``timeout`` (default QUEUE_SHUTDOWN_TIMEOUT)
        for the in-flight job, then hand it back to pending. Returns True if
        nothing had to be handed back."""
        with self._lock:
            if self._started_pid != os.getpid() or self.worker is None:
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


class JobQueue:
    """The queue extension. ``JobQueue(app)`` or ``queue.init_app(app)``."""

    def __init__(self, app: Flask | None = None, *, clock: Clock | None = None,
                 builtins: bool = True, **init_kwargs: Any):
        self.registry = Registry()
        self.clock = clock or Clock()
        self._app = app
        self._states: list[QueueState] = []
        # Set by @queue.admin_check; read by queue_service.auth for admin routes.
        self.admin_check_func: Callable[[Any], bool] | None = None
        if builtins:
            from .handlers import register_builtins

            register_builtins(self)
        if app is not None:
            self.init_app(app, **init_kwargs)

    # -- Flask wiring ---------------------------------------------------------
    def init_app(self, app: Flask, *, store: Store | None = None, mongo: Any = None,
                 clock: Clock | None = None) -> QueueState:
        """Mount the queue in ``app``.

        ``store``: a Store to use as is. ``mongo``: the host's ``PyMongo`` (or a
        pymongo Database) to share. Otherwise MONGO_URI picks MongoDB and
        QUEUE_DATABASE_URL the SQLite file.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("queue_service is already initialised on this app")
        settings = Settings.from_config(app.config)
        get_db = _database_getter(mongo) if mongo is not None else None  # a wrong type fails here
        state = QueueState(self, app, settings, clock or self.clock, store, get_db)
        app.extensions[EXTENSION_KEY] = state
        self._states.append(state)
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix or None)
        if "queue" not in app.cli.commands:
            app.cli.add_command(queue_cli)
        hosting.register(state)
        if settings.autostart is not False:
            if hosting.armed():
                hosting.start_loaded(state)  # a gunicorn worker loading the app after post_fork
            elif not hosting.under_gunicorn():
                app.before_request(self._autostart_hook(state))
        return state

    @staticmethod
    def _autostart_hook(state: QueueState) -> Callable[[], None]:
        def autostart() -> None:
            if state._started_pid != os.getpid():
                state.start()
        return autostart

    def state(self, app: Flask | None = None) -> QueueState:
        if app is None:
            try:  # one proxy lookup (has_app_context() and current_app.x were three: ~1.5 us)
                state = current_app._get_current_object().extensions.get(EXTENSION_KEY)
            except RuntimeError:  # outside an app context
                state = None
            if state is not None:
                return state
            if self._app is not None:
                app = self._app
            elif len(self._states) == 1:
                return self._states[0]
            else:
                raise RuntimeError("no app: call inside an app context or pass app=")
        return app.extensions[EXTENSION_KEY]

    # -- job types ------------------------------------------------------------
    def job_type(self, name: str, *, schema: Any = None, max_retries: int | None = None,
                 retry_delays: list[float] | None = None) -> Callable:
        """Register ``handler(payload, job)`` for job type ``name``."""
        if isinstance(schema, type):
            schema = schema()
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or max_retries < 0):
            raise ValueError("max_retries must be an integer >= 0")

        def decorator(handler: Callable) -> Callable:
            self.registry.add(JobType(name, handler, schema, max_retries,
                                      tuple(retry_delays) if retry_delays else None))
            return handler
        return decorator

    def on_complete(self, name: str) -> Callable:
        """Register ``hook(job)`` to run after a job of type ``name`` completes."""
        def decorator(hook: Callable) -> Callable:
            job_type = self.registry.get(name)
            if job_type is None:
                raise UnknownJobType(name)
            job_type.on_complete.append(hook)
            return hook
        return decorator

    def admin_check(self, func: Callable[[Any], bool]) -> Callable[[Any], bool]:
        """Replace the admin routes' bearer-token check: ``func(request)``
        returns True to let the request through (e.g. the host app's login)."""
        self.admin_check_func = func
        return func

    # -- the API --------------------------------------------------------------
    def add_job(self, job_type: str, payload: Any, *, priority: int = 0,
                delay: float | timedelta | None = None, run_at: datetime | None = None,
                max_retries: int | None = None, idempotency_key: str | None = None,
                app: Flask | None = None) -> str:
        """Validate and enqueue a job; returns its id. Raises ValidationError
        (field -> messages) before anything is written."""
        state = self.state(app)
        errors: dict[str, Any] = {}
        spec = self.registry.get(job_type) if isinstance(job_type, str) else None
        if spec is None:
            raise UnknownJobType(str(job_type))
        try:
            loaded = spec.load(payload)
            stored_payload = json.loads(json.dumps(spec.dump(loaded)))  # the same JSON on every store
        except marshmallow.ValidationError as exc:
            errors["payload"] = exc.messages
        except (TypeError, ValueError) as exc:
            errors["payload"] = {"_schema": [f"Payload is not JSON-serializable: {exc}"]}
        if isinstance(priority, bool) or not isinstance(priority, int):
            errors["priority"] = ["Must be an integer."]
        elif not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            errors["priority"] = [f"Must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}."]
        now = state.clock.now()
        when = now
        if delay is not None and run_at is not None:
            errors["delay"] = ["Give delay or run_at, not both."]
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
                errors["delay"] = ["Must be a number of seconds."]
            elif not 0 <= seconds <= MAX_DELAY_SECONDS:
                errors["delay"] = [f"Must be between 0 and {MAX_DELAY_SECONDS} seconds."]
            else:
                when = now + timedelta(seconds=seconds)
        elif run_at is not None:
            try:
                when = max(now, ensure_aware(run_at, "run_at"))
            except (ValueError, AttributeError, TypeError):
                errors["run_at"] = ["Must be a timezone-aware datetime."]
        retries = spec.max_retries if spec.max_retries is not None else state.settings.max_retries
        if max_retries is not None:
            if isinstance(max_retries, bool) or not isinstance(max_retries, int):
                errors["max_retries"] = ["Must be an integer."]
            elif not 0 <= max_retries <= MAX_RETRIES_LIMIT:
                errors["max_retries"] = [f"Must be between 0 and {MAX_RETRIES_LIMIT}."]
            else:
                retries = max_retries
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS):
            errors["idempotency_key"] = [f"Must be a string of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."]
        if errors:
            raise ValidationError(errors)
        job = Job(id=new_job_id(), type=job_type, payload=stored_payload, priority=priority,
                  max_retries=retries,
                  retry_delays=list(spec.retry_delays or state.settings.retry_delays),
                  created_at=now, run_at=when, idempotency_key=idempotency_key)
        job_id, created = state.store.insert(job)
        if created:
            log.info("[Queue] Added job %s (type: %s, priority: %d)", job_id, job_type, priority)
            if state.worker is not None and when <= now:
                state.worker.wake.set()
        else:
            log.info("[Queue] Job %s already queued for idempotency key %r", job_id, idempotency_key)
        return job_id

    def get_job(self, job_id: str, app: Flask | None = None) -> Job | None:
        return self.state(app).store.get(job_id)

    def get_job_status(self, job_id: str, app: Flask | None = None) -> dict[str, Any] | None:
        job = self.get_job(job_id, app)
        return None if job is None else job.to_dict()

    def list_jobs(self, *, status: str | None = None, job_type: str | None = None, limit: int = 50,
                  before: str | None = None, app: Flask | None = None) -> list[Job]:
        state = self.state(app)
        errors: dict[str, Any] = {}
        if status is not None and status not in {s.value for s in JobStatus}:
            errors["status"] = [f"Must be one of: {', '.join(s.value for s in JobStatus)}."]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            errors["limit"] = ["Must be an integer between 1 and 100."]
        cursor = None
        if before is not None:
            anchor = state.store.get(before)
            if anchor is None:
                errors["before"] = ["Unknown job id."]
            else:
                cursor = (anchor.created_at, anchor.id)
        if errors:
            raise ValidationError(errors)
        return state.store.list_jobs(status, job_type, limit, cursor)

    def get_queue_stats(self, app: Flask | None = None) -> dict[str, Any]:
        state = self.state(app)
        now = state.clock.now()
        counts = state.store.counts(now)
        stats = {key: counts[key] for key in
                 ("pending", "processing", "completed", "failed", "cancelled", "total")}
        stats["oldestPendingAge"] = _age_seconds(now, counts["oldestPendingAt"])
        stats["oldestProcessingAge"] = _age_seconds(now, counts["oldestProcessingAt"])
        return stats

    def cleanup_stuck_jobs(self, app: Flask | None = None) -> int:
        """Recover jobs whose heartbeat is older than QUEUE_STUCK_AFTER now.
        Returns how many were recovered (requeued, or failed when out of retries)."""
        state = self.state(app)
        now = state.clock.now()
        requeued, failed = state.store.requeue_stuck(
            now - timedelta(seconds=state.settings.stuck_after), now,
            f"worker lost (no heartbeat for {state.settings.stuck_after:g}s)")
        if requeued or failed:
            log.info("[Queue] Cleanup: %d stuck job(s) requeued, %d failed", requeued, failed)
        return requeued + failed

    @staticmethod
    def _transition(state: QueueState, job_id: str, action: str,
                    change: Callable[[str, datetime], bool]) -> Job:
        """Apply a store transition; if it changed nothing, say why."""
        if not change(job_id, state.clock.now()):
            job = state.store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            raise InvalidTransition(job_id, str(job.status), action)
        return state.store.get(job_id)

    def cancel(self, job_id: str, app: Flask | None = None) -> Job:
        """pending -> cancelled. Raises JobNotFound or InvalidTransition."""
        state = self.state(app)
        job = self._transition(state, job_id, "cancel", state.store.cancel)
        log.info("[Queue] Cancelled job %s", job_id)
        return job

    def retry(self, job_id: str, app: Flask | None = None) -> Job:
        """failed -> pending with a fresh retry budget. Raises JobNotFound or
        InvalidTransition."""
        state = self.state(app)
        job = self._transition(state, job_id, "retry", state.store.requeue_failed)
        log.info("[Queue] Job %s requeued by hand", job_id)
        if state.worker is not None:
            state.worker.wake.set()
        return job

    def cancel_job(self, job_id: str, app: Flask | None = None) -> bool:
        try:
            self.cancel(job_id, app)
            return True
        except (JobNotFound, InvalidTransition):
            return False

    def retry_job(self, job_id: str, app: Flask | None = None) -> bool:
        try:
            self.retry(job_id, app)
            return True
        except (JobNotFound, InvalidTransition):
            return False

    def health_check(self, app: Flask | None = None) -> dict[str, Any]:
        state = self.state(app)
        now = state.clock.now()
        worker = state.worker
        current = worker.current if worker is not None else None
        problems: list[str] = []
        stats = None
        try:
            state.store.ping()
            stats = self.get_queue_stats(app)
        except StoreError as exc:
            problems.append(f"store: {exc}")
        threads_started = state._started_pid == os.getpid()
        if threads_started and not state.running:
            problems.append("a queue thread has died")
        scheduler = state.scheduler
        if threads_started and scheduler is not None and scheduler.last_tick_at is not None:
            late = (now - scheduler.last_tick_at).total_seconds()
            if late > 3 * max(state.settings.heartbeat_interval, 1.0) + 5:
                problems.append(f"scheduler has not ticked for {late:.0f}s")
        return {
            "healthy": not problems,
            "initialized": True,
            "problems": problems,
            "store": state.store.kind if state._store is not None else None,
            "stats": stats,
            "worker": {
                "running": threads_started and state.running,
                "workerId": worker.worker_id if worker else None,
                "isProcessing": current is not None,
                "processingJobId": current.id if current else None,
                "maxRetries": state.settings.max_retries,
            },
            "timestamp": iso(now),
        }

    def start(self, app: Flask | None = None, daemon: bool = True) -> bool:
        return self.state(app).start(daemon=daemon)

    def shutdown(self, timeout: float | None = None, app: Flask | None = None) -> bool:
        return self.state(app).shutdown(timeout)
