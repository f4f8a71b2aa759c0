"""How long an idle worker waits before it polls the store again.

The first wait after a job (or after a wake-up: ``add_job`` in this process
sets the worker's event) is ``QUEUE_POLL_INTERVAL``; each poll that finds
nothing doubles it, up to ``QUEUE_POLL_MAX_INTERVAL`` (by default 10 s on
MongoDB, where a poll is a round trip against the quota: one claim per 10 s
per idle process, 0.1 operations/s of Atlas M0's ~100; on SQLite, where it is a
local read, the default ceiling is the first interval: no backoff). A job added
by another process, or a delayed job coming due, may wait up to the ceiling.
"""
from __future__ import annotations


class IdleBackoff:
    def __init__(self, first: float, ceiling: float):
        self.first = first
        self.ceiling = max(first, ceiling)
        self.next = first

    def found_work(self) -> None:
        self.next = self.first

    def waited(self, woken: bool) -> None:
        """After a wait of ``next``: woken early (a job was added here) starts
        again from the first interval; a wait that ran out doubles it."""
        self.next = self.first if woken else min(self.ceiling, self.next * 2)
