"""Where the threads start: gunicorn hooks, the dev server, the CLI.

gunicorn calls ``post_fork`` in each worker *before* the worker loads the app
(unless ``preload_app``). So ``on_post_fork`` arms this process: queues
already initialised here (preloaded, inherited from the master) start now, and
any queue initialised later in this process starts from ``init_app``. The
master never starts threads: nothing is armed there.
"""
from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any, Iterable

log = logging.getLogger("queue_service.hosting")

# gunicorn SIGKILLs a worker graceful_timeout after its SIGTERM; the queue's
# wait for the in-flight job ends this much earlier, so the job is handed
# back to pending before the kill (not stranded until QUEUE_STUCK_AFTER).
GRACEFUL_MARGIN_SECONDS = 2.0

_armed_pid: int | None = None
_runtimes: "weakref.WeakSet[Any]" = weakref.WeakSet()
_routed_handlers: list[logging.Handler] = []


def register(runtime: Any) -> None:
    """Called by ``init_app`` for every app's queue runtime (``core.runtime.Runtime``)."""
    _runtimes.add(runtime)


def armed() -> bool:
    """True in a gunicorn worker process whose ``post_fork`` hook has run."""
    return _armed_pid == os.getpid()


def under_gunicorn() -> bool:
    return "gunicorn.arbiter" in sys.modules or armed()


def on_post_fork(start: bool = True) -> int:
    """Arm this worker process and (unless ``start`` is False) start every
    queue already loaded in it. Returns how many queues were started.

    gunicorn drops privileges (``--user``/``--group``) after ``post_fork``,
    in the worker's ``init_process``: gunicorn.conf.py therefore passes
    ``start=False`` and calls ``start_preloaded()`` from ``post_worker_init``,
    so a preloaded queue neither opens its database nor runs a job as the
    master's user."""
    global _armed_pid
    _armed_pid = os.getpid()
    return start_preloaded() if start else 0


def start_preloaded() -> int:
    """Start every queue loaded in this armed process that is not running yet."""
    if not armed():
        return 0
    started = 0
    for runtime in list(_runtimes):
        if runtime.wants_threads_in_gunicorn() and not runtime.started_here and runtime.start():
            started += 1
    return started


def start_loaded(runtime: Any) -> bool:
    """``init_app`` in an armed worker (the app loads after ``post_fork``):
    start now. If the app configured logging before this point, that
    configuration gets the worker's first records too: ``post_worker_init``
    only runs once the whole app has loaded, and jobs may run before then."""
    yield_logs_to_host()
    return runtime.start()


def shutdown_timeout(runtime: Any, graceful_timeout: float | None) -> float:
    """How long ``worker_exit`` waits for this queue's in-flight job."""
    timeout = runtime.settings.shutdown_timeout
    if graceful_timeout is None:
        return timeout
    ceiling = max(0.0, graceful_timeout - GRACEFUL_MARGIN_SECONDS)
    if timeout > ceiling:
        log.warning("[Queue] QUEUE_SHUTDOWN_TIMEOUT %gs is not below gunicorn's graceful_timeout %gs: "
                    "waiting %gs for the in-flight job", timeout, graceful_timeout, ceiling)
        return ceiling
    return timeout


def on_worker_exit(timeout: float | None = None, graceful_timeout: float | None = None) -> None:
    """Graceful stop of every queue running in this process: ``timeout`` (default
    each queue's QUEUE_SHUTDOWN_TIMEOUT, capped to end before gunicorn's
    ``graceful_timeout`` when given) for the in-flight job, then hand it back."""
    for runtime in list(_runtimes):
        if not runtime.started_here:
            continue  # not running here (the master, or a queue never started)
        runtime.shutdown(timeout if timeout is not None else shutdown_timeout(runtime, graceful_timeout))


def on_worker_abort(reason: str = "worker aborted (gunicorn worker timeout)") -> int:
    """gunicorn's ``worker_abort`` (SIGABRT, the master's timeout): no grace
    is given, the process exits at once, so hand every in-flight job back to
    pending now instead of leaving it ``processing`` until QUEUE_STUCK_AFTER.
    The handler's thread may still be running; its result is fenced off (the
    claim is gone). Returns how many jobs were handed back."""
    handed_back = 0
    for runtime in list(_runtimes):
        worker = runtime.worker if runtime.started_here else None
        if worker is None:
            continue
        try:
            if worker.release_current(reason) is not None:
                handed_back += 1
        except Exception:  # the process is dying: log, never raise from the hook
            log.exception("[Queue] Could not hand back the in-flight job on abort")
    return handed_back


# -- logs -----------------------------------------------------------------------
# Nothing in a gunicorn worker shows INFO records of a logger nobody configured,
# so the queue's logs ("[Worker] Processing job ...") would vanish. Until the
# host app configures logging itself, they go where gunicorn's error log goes.
def _host_configured_logging() -> bool:
    queue_log = logging.getLogger("queue_service")
    own = [h for h in queue_log.handlers if h not in _routed_handlers]
    return bool(logging.getLogger().handlers or own)


def route_logs(handlers: Iterable[logging.Handler], level: int) -> bool:
    """``post_fork``: send queue logs to ``handlers`` (gunicorn's error log)
    unless the host app already configured logging. Returns True if routed."""
    handlers = list(handlers)
    if not handlers or _routed_handlers or _host_configured_logging():
        return False
    queue_log = logging.getLogger("queue_service")
    for handler in handlers:
        queue_log.addHandler(handler)
        _routed_handlers.append(handler)
    queue_log.setLevel(level)
    queue_log.propagate = False
    return True


def yield_logs_to_host() -> bool:
    """``post_worker_init`` (the app is loaded now): if the app configured
    logging while loading, its configuration wins from here on. Returns True
    if the routing to gunicorn's log was undone."""
    if not _routed_handlers or not _host_configured_logging():
        return False
    queue_log = logging.getLogger("queue_service")
    for handler in _routed_handlers:
        queue_log.removeHandler(handler)
    _routed_handlers.clear()
    queue_log.setLevel(logging.NOTSET)
    queue_log.propagate = True
    return True
