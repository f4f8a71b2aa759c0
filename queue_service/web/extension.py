"""JobQueue: the Flask extension and the Python API.

Job types are code and live on the JobQueue object (like a blueprint's
routes). Everything that belongs to one app (settings, store, threads) lives
in ``app.extensions["queue_service"]`` (``web.state``), so one JobQueue can
serve several apps in one process. Every operation is the core service's;
this class finds the right app's service and hands the call on.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable

from flask import Flask, current_app

from .. import hosting
from ..core.clock import Clock
from ..core.errors import ConfigurationError, InvalidTransition, JobNotFound, StoreError, UnknownJobType
from ..core.jobs import Job
from ..core.periodic import Schedule, Schedules, make_schedule
from ..core.registry import JobType, Registry
from ..core.runtime import Runtime
from ..core.service import QueueService
from ..core.settings import Settings
from ..core.store import Store
from .api import blueprint
from .cli import queue_cli
from .state import EXTENSION_KEY, QueueState


def _database_getter(mongo: Any) -> Callable[[], Any]:
    """How to reach the database of what a host app handed to ``init_app``:
    a ``flask_pymongo.PyMongo`` (its ``db``, read when used) or a pymongo
    (or mongomock) Database. Anything else is a ConfigurationError."""
    from ..core.extras import require

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


def _own_database(uri: str) -> Callable[[], Any]:
    """The database of the queue's own client for MONGO_URI: one client per
    process, made on first use after fork and kept (a store whose setup
    failed reuses it rather than opening another). Its waits are bounded
    (``stores.mongo_uri.client_options``)."""
    import os
    import threading

    made: dict[str, Any] = {}
    lock = threading.Lock()

    def get_db() -> Any:
        if made.get("pid") == os.getpid():
            return made["database"]
        with lock:
            if made.get("pid") == os.getpid():
                return made["database"]
            from flask_pymongo.wrappers import MongoClient

            from ..stores import mongo_uri

            # flask-pymongo's client, made here (after fork) without PyMongo(app),
            # which would replace the host app's JSON provider.
            client = MongoClient(uri, connect=False, tz_aware=True, **mongo_uri.client_options(uri))
            made.update(pid=os.getpid(), client=client, database=client.get_default_database())
            return made["database"]

    def close() -> None:
        with lock:
            if made.get("pid") == os.getpid():
                made.pop("client").close()
                made.clear()
    get_db.close = close  # type: ignore[attr-defined]  # MongoStore.close() calls it
    return get_db


def _store_factory(settings: Settings, store: Store | None,
                   get_db: Callable[[], Any] | None) -> Callable[[], Store]:
    """How this app's store is made (in each process, when first used):
    the Store handed over, MongoDB when the host gave a database or MONGO_URI
    is set, else the SQLite file. Nothing is connected here."""
    if store is not None:
        return lambda: store
    if get_db is not None or settings.mongo_uri:
        if get_db is None:
            from ..stores import mongo_uri

            mongo_uri.check(settings.mongo_uri)  # a URI without a database fails init_app, offline
            get_db = _own_database(settings.mongo_uri)

        def mongo_store() -> Store:
            from ..stores.mongo import MongoStore  # only the MongoDB path loads pymongo

            return MongoStore(get_db, settings.mongo_collection, settings.completed_ttl)
        return mongo_store

    def sqlite_store() -> Store:
        from ..stores.sqlite import SQLiteStore, path_from_url

        return SQLiteStore(path_from_url(settings.database_url), settings.sqlite_synchronous)
    return sqlite_store


class JobQueue:
    """The queue extension. ``JobQueue(app)`` or ``queue.init_app(app)``."""

    def __init__(self, app: Flask | None = None, *, clock: Clock | None = None,
                 builtins: bool = True, **init_kwargs: Any):
        self.registry = Registry()
        self.schedules = Schedules()
        self.clock = clock or Clock()
        self._app = app
        self._states: list[QueueState] = []
        # Set by @queue.admin_check; read by web.auth for admin routes.
        self.admin_check_func: Callable[[Any], bool] | None = None
        # Set by @queue.public_view; read by web.public for anonymous job reads.
        self.public_view_func: Callable[[Any, dict], dict] | None = None
        if builtins:
            from ..handlers import register_builtins

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
        settings = Settings.from_config(app.config, mongo_given=mongo is not None)
        get_db = _database_getter(mongo) if mongo is not None else None  # a wrong type fails here
        runtime = Runtime(self.registry, settings, clock or self.clock, _store_factory(settings, store, get_db), app,
                          self.schedules)
        state = QueueState(app, self, settings, QueueService(self.registry, runtime), runtime)
        app.extensions[EXTENSION_KEY] = state
        self._states.append(state)
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix or None)
        if "queue" not in app.cli.commands:
            app.cli.add_command(queue_cli)
        hosting.register(runtime)
        if settings.autostart is not False:
            if hosting.armed():
                hosting.start_loaded(runtime)  # a gunicorn worker loading the app after post_fork
            elif not hosting.under_gunicorn():
                app.before_request(self._autostart_hook(runtime))
        return state

    @staticmethod
    def _autostart_hook(runtime: Runtime) -> Callable[[], None]:
        def autostart() -> None:
            if not runtime.started_here:
                runtime.start()
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
                 retry_delays: list[float] | None = None, queue: str | None = None,
                 timeout: float | Callable[[Any], float | None] | None = None) -> Callable:
        """Register ``handler(payload, job)`` for job type ``name``; ``job`` is
        a ``queue_service.JobContext``. ``queue``: the named queue its jobs go
        to unless ``add_job(queue=...)`` says otherwise (default "default").
        ``timeout``: seconds (or ``settings -> seconds``) one attempt may take,
        shown to the handler as ``job.deadline`` / ``job.remaining_seconds()``;
        the handler must check it (a thread cannot be killed)."""
        if isinstance(schema, type):
            schema = schema()

        def decorator(handler: Callable) -> Callable:
            self.registry.add(JobType(name, handler, schema, max_retries,
                                      tuple(retry_delays) if retry_delays else None, queue=queue,
                                      timeout=timeout))
            return handler
        return decorator

    def periodic(self, job_type: str, payload: dict[str, Any] | None = None, *, cron: str | None = None,
                 every: float | timedelta | None = None, name: str | None = None, tz: str = "UTC",
                 priority: int = 0, catchup: str = "once", queue: str | None = None) -> Callable:
        """Enqueue ``job_type`` with ``payload`` on a schedule: ``cron`` (five
        fields, in time zone ``tz``) or ``every`` (seconds or a timedelta), on
        the named ``queue`` (default: the type's).
        Each slot is enqueued once across all processes (see core.periodic).

        Registers at once when the type is known; with no payload it also
        works as a decorator above ``@queue.job_type(...)`` (payload ``{}``).
        Made and checked by ``core.periodic.make_schedule``: raises
        ValueError for a bad schedule or a taken name, and InvalidSchedule
        (a ValidationError and a ValueError) for a priority or payload that
        add_job would refuse."""
        def register() -> Schedule:
            return self.schedules.add(make_schedule(self.registry, job_type, payload, cron=cron, every=every,
                                                    name=name, tz=tz, priority=priority, catchup=catchup,
                                                    queue=queue))

        if payload is not None or job_type in self.registry:
            register()
            return lambda handler: handler

        def decorator(handler: Callable) -> Callable:
            register()
            return handler
        return decorator

    def on_complete(self, name: str) -> Callable:
        """Register ``hook(job)`` to run after a job of type ``name`` completes."""
        def decorator(hook: Callable) -> Callable:
            job_type = self.registry.get(name)
            if job_type is None:
                raise UnknownJobType(name, self.registry.names())
            job_type.on_complete.append(hook)
            return hook
        return decorator

    def admin_check(self, func: Callable[[Any], bool]) -> Callable[[Any], bool]:
        """Replace the admin routes' bearer-token check: ``func(request)``
        returns True to let the request through (e.g. the host app's login)."""
        self.admin_check_func = func
        return func

    def public_view(self, func: Callable[[Any, dict], dict]) -> Callable[[Any, dict], dict]:
        """Widen what anonymous callers see of a job: ``func(job, default)``
        returns the dict to send (see ``web.public``). The default is status only."""
        self.public_view_func = func
        return func

    # -- the API (each call is the core service's) --------------------------------
    def add_job(self, job_type: str, payload: Any, *, priority: int = 0,
                delay: float | timedelta | None = None, run_at: datetime | None = None,
                max_retries: int | None = None, idempotency_key: str | None = None,
                queue: str | None = None, app: Flask | None = None) -> str:
        """Validate and enqueue a job; returns its id. Raises ValidationError
        (field -> messages) before anything is written."""
        return self.state(app).service.submit(job_type, payload, priority=priority, delay=delay, run_at=run_at,
                                              max_retries=max_retries, idempotency_key=idempotency_key,
                                              queue=queue).id

    def add_jobs(self, jobs: list[dict[str, Any]], app: Flask | None = None) -> list[str]:
        """Enqueue many jobs at once: each item a dict of ``type``, ``payload``
        and ``add_job``'s options. All are validated before anything is
        written (the ValidationError names the index and field), then stored
        in one transaction (SQLite) or one ``insert_many`` (MongoDB). Returns
        the ids in order; an item whose idempotency key is held answers the
        holder's id."""
        return [submitted.id for submitted in self.state(app).service.submit_many(jobs)]

    def get_job(self, job_id: str, app: Flask | None = None) -> Job | None:
        return self.state(app).service.get(job_id)

    def get_job_status(self, job_id: str, app: Flask | None = None) -> dict[str, Any] | None:
        job = self.get_job(job_id, app)
        return None if job is None else job.to_dict()

    def list_jobs(self, *, status: str | None = None, job_type: str | None = None, limit: int = 50,
                  before: str | None = None, queue: str | None = None, app: Flask | None = None) -> list[Job]:
        return self.state(app).service.list(status=status, job_type=job_type, limit=limit, before=before,
                                            queue=queue)

    def get_queue_stats(self, app: Flask | None = None) -> dict[str, Any]:
        return self.state(app).service.stats()

    def cleanup_stuck_jobs(self, app: Flask | None = None) -> int:
        """Recover jobs whose heartbeat is older than QUEUE_STUCK_AFTER now.
        Returns how many were recovered (requeued, or failed when out of retries)."""
        return self.state(app).service.recover_stuck()

    def cancel(self, job_id: str, app: Flask | None = None) -> Job:
        """pending -> cancelled. Raises JobNotFound or InvalidTransition."""
        return self.state(app).service.cancel(job_id)

    def retry(self, job_id: str, app: Flask | None = None) -> Job:
        """failed -> pending with a fresh retry budget. Raises JobNotFound or
        InvalidTransition."""
        return self.state(app).service.retry(job_id)

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
        return self.state(app).service.health()

    def run_pending(self, app: Flask | None = None, *, include_delayed: bool = False) -> int:
        """Run every runnable job in the calling thread, one at a time, until
        none is left (tests, scripts); ``include_delayed=True``: also delayed
        jobs and retries, without waiting. Returns how many ran."""
        return self.state(app).service.run_pending(include_delayed=include_delayed)

    def start(self, app: Flask | None = None, daemon: bool = True) -> bool:
        return self.state(app).runtime.start(daemon=daemon)

    def shutdown(self, timeout: float | None = None, app: Flask | None = None) -> bool:
        return self.state(app).runtime.shutdown(timeout)
