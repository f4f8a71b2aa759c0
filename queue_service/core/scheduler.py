"""The scheduler: renews the local worker's claim and sweeps the store.

``Scheduler.tick()`` is one step. A sweep requeues jobs whose heartbeat is
older than ``stuck_after`` and purges finished jobs past their retention. It
runs at start-up and then every ``cleanup_interval``; a stalled scheduler
(an app that slept) sweeps once and skips the ticks it missed. Every sweep is
a set of conditional updates, so N processes may sweep at once.

Periodic jobs (``core.periodic``): each tick enqueues the schedules' due
slots, and the thread wakes for the next slot, not only for the next sweep.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from .store import Store
from .clock import Clock
from .jobs import Job, RetryPolicy
from .lazy_store import log_loop_failure
from .periodic import Periodic, Schedules
from .settings import Settings
from .worker import Worker

log = logging.getLogger("queue_service.scheduler")

MAX_BACKOFF_SECONDS = 30.0
WORKER_RECORD_KEPT_SECONDS = 3600.0  # a worker record not renewed for this long is purged


def recover_stuck(store: Store, policy: RetryPolicy, now: datetime) -> tuple[int, int]:
    """Recover every processing job whose heartbeat is older than the policy's
    threshold: back to pending while it has retries left (a retry), else failed
    ("worker lost"). Each recovery is conditional, so N processes may sweep at
    once. Returns ``(requeued, failed)``."""
    before = policy.stuck_before(now)
    requeued = failed = 0
    for _ in range(100):  # pages of find_stuck; a recovered job is not found again
        stuck = store.find_stuck(before)
        for job in stuck:
            retry = policy.may_retry(job)
            if store.recover_lost(job, before, now, policy.lost_error, retry):
                requeued += retry
                failed += not retry
        if len(stuck) < 1000:
            break
    return requeued, failed


@dataclass
class SweepReport:
    requeued: int = 0
    failed: int = 0
    purged: int = 0


class Scheduler:
    def __init__(self, store_getter: Callable[[], Store], clock: Clock, worker: Worker | None,
                 settings: Settings, schedules: Schedules | None = None):
        self._store_getter = store_getter
        self.clock = clock
        self.worker = worker
        self.policy = settings.retry_policy
        self.cleanup_interval = settings.cleanup_interval
        self.completed_ttl = settings.completed_ttl
        self.failed_ttl = settings.failed_ttl
        self.heartbeat_interval = settings.heartbeat_interval
        self.next_sweep_at: datetime | None = None  # None: sweep on the first tick
        self.last_tick_at: datetime | None = None
        self.stopping = threading.Event()
        self.periodic = Periodic(schedules or Schedules(), settings.max_retries, settings.retry_delays)

    @property
    def store(self) -> Store:
        return self._store_getter()

    def sweep(self, now: datetime) -> SweepReport:
        store = self.store
        requeued, failed = recover_stuck(store, self.policy, now)
        purged = store.purge(now - timedelta(seconds=self.completed_ttl), now - timedelta(seconds=self.failed_ttl))
        store.purge_workers(now - timedelta(seconds=max(WORKER_RECORD_KEPT_SECONDS, 3 * self.heartbeat_interval)))
        self.periodic.forget_removed(store, now)
        report = SweepReport(requeued, failed, purged)
        if requeued or failed or purged:
            log.info("[Scheduler] Sweep: %d stuck job(s) requeued, %d failed (worker lost), %d purged",
                     requeued, failed, purged)
        return report

    def enqueue_due(self, now: datetime) -> list[Job]:
        """Enqueue the schedules' due slots (each once across all processes)."""
        jobs = self.periodic.tick(self.store, now)
        if jobs and self.worker is not None:
            self.worker.wake.set()
        return jobs

    def tick(self) -> SweepReport | None:
        """One step: heartbeat the local job if due; enqueue due slots; sweep if due."""
        now = self.clock.now()
        self.last_tick_at = now
        if self.worker is not None:
            self.worker.heartbeat_if_due(now)
            self.worker.register_if_due(now)
        self.enqueue_due(now)
        if self.next_sweep_at is None or now >= self.next_sweep_at:
            report = self.sweep(now)
            self.next_sweep_at = self.clock.now() + timedelta(seconds=self.cleanup_interval)
            return report
        return None

    def seconds_until_next_tick(self) -> float:
        if self.next_sweep_at is None:
            return 0.0
        until_sweep = (self.next_sweep_at - self.clock.now()).total_seconds()
        # Half the interval: a claim made between two ticks is still renewed in time.
        wait = min(until_sweep, self.heartbeat_interval / 2) if self.worker else until_sweep
        next_slot = self.periodic.next_due(self.clock.now())
        if next_slot is not None:
            wait = min(wait, (next_slot - self.clock.now()).total_seconds())
        return max(0.0, wait)

    def run_forever(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self.tick()
                if failures:
                    log.warning("[Scheduler] Ticking again after %d failure(s)", failures)
                failures = 0
                wait = self.seconds_until_next_tick()
            except Exception as exc:
                failures += 1
                wait = min(MAX_BACKOFF_SECONDS, 2.0 ** min(failures, 5))
                log_loop_failure(log, "[Scheduler] Tick failed", exc, failures, wait)
            self.clock.wait(self.stopping, wait)

    def stop(self) -> None:
        self.stopping.set()
