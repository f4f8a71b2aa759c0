"""The worker's memory policy on a 512 MB dyno: when to collect, and giving
a big job's freed heap back to the OS.

A full ``gc.collect()`` after each job that ran GC_AFTER_JOB_SECONDS or more,
and when the queue goes idle (measured: after every small job it cost more
than it freed). The first collection in a process freezes what survives it
(``gc.freeze``): by then that is the loaded app (modules, Flask, the handlers'
libraries), which lives as long as the process, and later collections skip it
(5-20 ms each in a Flask process before, well under 1 ms after). Frozen objects
are still freed by reference counting; only a cycle among them would never be
collected.
"""
from __future__ import annotations

import gc
import os
from typing import Any

GC_AFTER_JOB_SECONDS = 0.1  # a job this long pays for its own full collection
GC_MAX_INTERVAL_SECONDS = 5.0  # after small jobs, at most this long between collections
_frozen_pid: int | None = None  # the process whose long-lived objects gc.freeze() set aside
_malloc_trim: Any = False  # glibc's malloc_trim once looked up; None where there is none


def trim_heap() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``).
    A big job (a decoded photo) frees tens of MB that glibc otherwise keeps
    in the process for reuse, fragmented, so the next big job peaks higher.
    Returns False where there is no such call (musl, macOS): nothing to do."""
    global _malloc_trim
    if _malloc_trim is False:
        try:
            import ctypes  # here, not at import: ~0.3 MB that idle workers never pay

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (ImportError, OSError, AttributeError, TypeError):  # TypeError: CDLL(None) on Windows
            _malloc_trim = None
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def full_collection(trim: bool = False) -> None:
    """A full collection; the first one in a process also freezes what
    survives it; ``trim``: then hand the freed heap back (trim_heap), which is
    what returns a big job's memory."""
    global _frozen_pid
    gc.collect()
    if _frozen_pid != os.getpid():
        gc.freeze()
        _frozen_pid = os.getpid()
    if trim:
        trim_heap()
