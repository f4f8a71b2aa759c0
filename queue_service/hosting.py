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
from typing import Any

log = logging.getLogger("queue_service.hosting")

_armed_pid: int | None = None
_states: "weakref.WeakSet[Any]" = weakref.WeakSet()


def register(state: Any) -> None:
    """Called by ``init_app`` for every queue state."""
    _states.add(state)


def armed() -> bool:
    """True in a gunicorn worker process whose ``post_fork`` hook has run."""
    return _armed_pid == os.getpid()


def under_gunicorn() -> bool:
    return "gunicorn.arbiter" in sys.modules or armed()


def on_post_fork() -> int:
    """Arm this worker process and start every queue already loaded in it.
    Returns how many queues were started."""
    global _armed_pid
    _armed_pid = os.getpid()
    started = 0
    for state in list(_states):
        if state.wants_threads_in_gunicorn() and state.start():
            started += 1
    return started


def on_worker_exit(timeout: float | None = None) -> None:
    """Graceful stop of every queue running in this process."""
    for state in list(_states):
        state.shutdown(timeout)
