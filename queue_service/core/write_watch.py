"""Which store methods write, and a store's memory of a refused write.

``Store.__init_subclass__`` wraps every concrete write method of a store class
(its own or a mixin's): a ``StoreRefusesWrites`` sets ``refusing_writes`` on the
store, a write that succeeds clears it. ``QueueService.health`` reports it as
"store refuses writes": the store may answer pings and reads all along, so
only a write can tell.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from .errors import StoreRefusesWrites

REFUSES_WRITES = "store refuses writes"
WRITE_METHODS = (
    "insert", "insert_many", "claim", "heartbeat", "complete", "complete_and_claim", "retry_later", "fail",
    "release", "recover_lost", "cancel", "requeue_failed", "run_now", "purge", "register_worker",
    "purge_workers", "enqueue_slot", "touch_schedules", "purge_schedules", "put_file", "purge_files",
)


def _watched(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except StoreRefusesWrites:
            self.refusing_writes = True
            raise
        if self.refusing_writes:
            self.refusing_writes = False
        return result

    write.__watched__ = True  # type: ignore[attr-defined]
    return write


def watch_writes(cls: type) -> None:
    for name in WRITE_METHODS:
        method = getattr(cls, name, None)
        if method is None or getattr(method, "__watched__", False) or getattr(method, "__isabstractmethod__", False):
            continue
        setattr(cls, name, _watched(method))
