"""Periodic jobs: schedules, their slots, catch-up, and enqueuing each slot once.

A ``Schedule`` is code (like a job type): registered on the JobQueue with
``queue.periodic(...)``, made and validated by ``make_schedule`` (cron
expression, interval, time zone, queue name; the type, priority and payload
by add_job's own checks, ``core.submission``), so a bad schedule fails at
start-up. Each slot's job is made by ``submission.new_job``, as add_job's
is, and carries its type's schema fingerprint. A *slot* is an instant the
schedule fires at: for ``every=N`` the multiples of N seconds since the Unix
epoch (UTC), for ``cron=`` the times croniter gives in the schedule's time
zone.

Every process's scheduler thread runs ``Periodic.tick(now)``: for each
schedule it finds the latest slot at or before ``now`` and, if that slot is
due, asks the store to ``enqueue_slot`` it. The store enqueues a slot only if
it is later than the schedule's stored last slot, atomically with the insert,
and the job id is derived from (name, slot): however many processes race,
each slot is enqueued once.

Due: a slot later than the last one known (stored, or seen by this process).
A schedule never run before starts with the first slot at or after the
moment this process registered it (a nightly job added at 5 p.m. does not
run at once). After downtime, ``catchup="once"`` enqueues the latest missed
slot once; ``catchup="skip"`` enqueues a slot only while it is fresh (less
than half a period, at most a minute, late) and otherwise waits for the next.
"""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from .errors import InvalidSchedule
from .jobs import Job
from .limits import require_queue_name
from .registry import JobType, Registry
from .submission import check_priority, new_job, registered_type, stored_payload
from .store import ScheduleState  # noqa: F401  (re-exported: the state periodic reads)

log = logging.getLogger("queue_service.periodic")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CATCHUP_MODES = ("once", "skip")
#: Stored state of a schedule no process has registered for this long is purged.
FORGET_AFTER = timedelta(days=30)
#: How late a slot may be and still count as on time for catchup="skip".
MAX_FRESH_SECONDS = 60.0
_SLOT_NAMESPACE = uuid.UUID("6f1c3a52-6b1e-4d8e-9a57-0c1d2e3f4a5b")


def slot_job_id(name: str, slot: datetime) -> str:
    """The job id of (schedule, slot): the same in every process (uuid5)."""
    return str(uuid.uuid5(_SLOT_NAMESPACE, f"{name}\x00{slot.astimezone(timezone.utc).isoformat()}"))


def _zone(tz: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(tz, str) or not tz:
        raise ValueError("tz must be an IANA time zone name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r} (IANA names, e.g. 'Europe/Berlin')") from exc


def _check_cron(cron: str) -> str:
    from croniter import croniter

    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise ValueError(f"cron takes five fields (minute hour day month weekday), got {cron!r}")
    if not croniter.is_valid(cron):
        raise ValueError(f"not a valid cron expression: {cron!r}")
    return " ".join(cron.split())


def _check_every(every: Any) -> float:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0.001:
        raise ValueError(f"every takes a number of seconds or a timedelta of at least 1 ms, got {every!r}")
    return float(seconds)


@dataclass
class Schedule:
    name: str
    job_type: JobType
    payload: dict[str, Any]          # validated, in its stored JSON form
    cron: str | None = None
    every: float | None = None       # seconds
    tz: str = "UTC"
    priority: int = 0
    catchup: str = "once"
    queue: str | None = None         # None: the type's queue, else "default"
    _zone: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron= and every=")
        if self.cron is not None:
            self.cron = _check_cron(self.cron)
        else:
            self.every = _check_every(self.every)
        self._zone = _zone(self.tz)
        if self.queue is not None:
            require_queue_name(self.queue)
        if self.catchup not in CATCHUP_MODES:
            raise ValueError(f"catchup must be one of {', '.join(CATCHUP_MODES)}, got {self.catchup!r}")

    @staticmethod
    def default_name(job_type: str, cron: str | None, every: Any) -> str:
        if (cron is None) == (every is None):
            raise ValueError("give exactly one of cron= and every=")
        if cron is not None:
            return f"{job_type}@cron:{' '.join(str(cron).split())}"
        return f"{job_type}@every:{_check_every(every):g}s"

    # -- slots ----------------------------------------------------------------
    def latest_slot(self, now: datetime) -> datetime:
        """The latest slot at or before ``now`` (aware UTC)."""
        if self.every is not None:
            step = timedelta(microseconds=round(self.every * 1_000_000))
            return EPOCH + step * ((now - EPOCH) // step)
        from croniter import croniter

        local = now.astimezone(self._zone) + timedelta(microseconds=1)  # get_prev is strict
        return croniter(self.cron, local).get_prev(datetime).astimezone(timezone.utc)

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after ``after``."""
        if self.every is not None:
            step = timedelta(microseconds=round(self.every * 1_000_000))
            return EPOCH + step * ((after - EPOCH) // step + 1)
        from croniter import croniter

        return croniter(self.cron, after.astimezone(self._zone)).get_next(datetime).astimezone(timezone.utc)

    def fresh_for_seconds(self, slot: datetime) -> float:
        """How late ``slot`` may be enqueued under catchup="skip"."""
        return min(MAX_FRESH_SECONDS, (self.next_slot(slot) - slot).total_seconds() / 2)

    def make_job(self, slot: datetime, now: datetime, max_retries: int, retry_delays: Iterable[float]) -> Job:
        """The job of ``slot``: its id derived from (name, slot); ``max_retries``
        and ``retry_delays`` apply unless the type has its own."""
        return new_job(self.job_type, slot_job_id(self.name, slot), dict(self.payload), now, now,
                       max_retries, retry_delays, priority=self.priority, queue=self.queue,
                       scheduled_by=self.name, slot=slot)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.job_type.name, "cron": self.cron, "every": self.every,
                "tz": self.tz, "priority": self.priority, "catchup": self.catchup,
                "queue": self.job_type.queue_for(self.queue)}


def make_schedule(registry: Registry, job_type: str, payload: Any = None, *, cron: str | None = None,
                  every: float | timedelta | None = None, name: str | None = None, tz: str = "UTC",
                  priority: int = 0, catchup: str = "once", queue: str | None = None) -> Schedule:
    """The Schedule ``queue.periodic(...)`` registers (payload None: ``{}``).
    The type, priority and payload pass add_job's checks (``core.submission``),
    once, here. Raises UnknownJobType, InvalidSchedule (a ValidationError and
    a ValueError) for the priority or the payload, ValueError for the rest."""
    spec = registered_type(registry, job_type)
    errors: dict[str, Any] = {}
    check_priority(priority, errors)
    stored = stored_payload(spec, {} if payload is None else payload, errors)
    if errors:
        raise InvalidSchedule(errors)
    return Schedule(name or Schedule.default_name(job_type, cron, every), spec, stored, cron=cron,
                    every=every, tz=tz, priority=priority, catchup=catchup, queue=queue)


class Schedules:
    """The schedules registered on one JobQueue; names are unique."""

    def __init__(self) -> None:
        self._by_name: dict[str, Schedule] = {}

    def add(self, schedule: Schedule) -> Schedule:
        if schedule.name in self._by_name:
            raise ValueError(f"a schedule named {schedule.name!r} is already registered")
        self._by_name[schedule.name] = schedule
        return schedule

    def get(self, name: str) -> Schedule | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self):
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)


class Periodic:
    """One process's view of the schedules: which slot is due, enqueue it.

    ``known`` is the latest slot this process knows to be done (enqueued by
    anyone, or skipped); it is read from the store once, at the first tick,
    and moved forward after every attempt, so a tick with nothing due costs
    no store call.
    """

    def __init__(self, schedules: Schedules, max_retries: int, retry_delays: Iterable[float]):
        self.schedules = schedules
        self.max_retries = max_retries
        self.retry_delays = tuple(retry_delays)
        self.known: dict[str, datetime | None] = {}
        self.started_at: datetime | None = None
        self.enqueued = 0

    def load(self, store: Any, now: datetime) -> None:
        states = store.schedule_states()
        for schedule in self.schedules:
            state = states.get(schedule.name)
            self.known[schedule.name] = state.last_slot if state else None
        self.started_at = now

    def due_slot(self, schedule: Schedule, now: datetime) -> datetime | None:
        """The slot to enqueue now, or None; marks a skipped slot as known."""
        latest = schedule.latest_slot(now)
        known = self.known.get(schedule.name)
        if known is not None and latest <= known:
            return None
        if known is None and self.started_at is not None and latest < self.started_at:
            return None  # never run: begin with the first slot from registration on
        late = (now - latest).total_seconds()
        if schedule.catchup == "skip" and late > schedule.fresh_for_seconds(latest):
            self.known[schedule.name] = latest  # missed: wait for the next slot
            return None
        return latest

    def tick(self, store: Any, now: datetime) -> list[Job]:
        """Enqueue every due slot; returns the jobs this process enqueued."""
        if not len(self.schedules):
            return []
        if self.started_at is None:
            self.load(store, now)
        enqueued = []
        for schedule in self.schedules:
            slot = self.due_slot(schedule, now)
            if slot is None:
                continue
            job = schedule.make_job(slot, now, self.max_retries, self.retry_delays)
            if store.enqueue_slot(schedule.name, slot, job, now):
                enqueued.append(job)
                self.enqueued += 1
                log.info("[Scheduler] Enqueued %s for slot %s (job %s)", schedule.name, slot.isoformat(), job.id)
            self.known[schedule.name] = slot
        return enqueued

    def next_due(self, now: datetime) -> datetime | None:
        """When the next slot of any schedule falls (for the scheduler's wait)."""
        times = [s.next_slot(now) for s in self.schedules]
        return min(times) if times else None

    def forget_removed(self, store: Any, now: datetime) -> int:
        """Mark this process's schedules as seen; purge state nobody saw for FORGET_AFTER."""
        if len(self.schedules):
            store.touch_schedules(self.schedules.names(), now)
        return store.purge_schedules(now - FORGET_AFTER)


def overview(schedules: Schedules, store: Any, now: datetime) -> list[dict[str, Any]]:
    """Each registered schedule with its stored state and its last job's status
    (what ``GET /schedules`` and ``flask queue schedules`` show)."""
    from .jobs import iso

    states = store.schedule_states() if len(schedules) else {}
    rows = []
    for schedule in sorted(schedules, key=lambda s: s.name):
        state = states.get(schedule.name)
        last_job = store.get(state.last_job_id) if state and state.last_job_id else None
        rows.append({**schedule.describe(), "nextRun": iso(schedule.next_slot(now)),
                     "lastSlot": iso(state.last_slot) if state else None,
                     "lastJobId": state.last_job_id if state else None,
                     "lastJobStatus": str(last_job.status) if last_job else None,
                     "runs": state.runs if state else 0})
    return rows
