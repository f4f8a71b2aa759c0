"""The one clock. Everything that needs "now" asks a Clock object.

The queue holds one clock; tests hand it a ``ManualClock`` and move time
forward explicitly, so retry delays, heartbeats and the stuck threshold are
tested without sleeping. Stores never read a clock: they are given ``now``.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone


def utcnow() -> datetime:
    """Aware UTC now, truncated to milliseconds (the precision BSON keeps)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def ensure_aware(value: datetime, field: str = "datetime") -> datetime:
    """Refuse naive datetimes at the boundary; normalise aware ones to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware (got a naive datetime)")
    return value.astimezone(timezone.utc)


class Clock:
    """Wall clock. ``wait`` blocks on an event for at most ``seconds``."""

    def now(self) -> datetime:
        return utcnow()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that only moves when told to. For tests.

    ``wait`` does not sleep through time; it returns at once (or as soon as
    the event is set, if it is set already), so loops driven by a manual
    clock spin only as fast as the test advances it.
    """

    def __init__(self, start: datetime | None = None):
        self._now = ensure_aware(start) if start else datetime(2030, 1, 1, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now = self._now + timedelta(seconds=seconds)
            return self._now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(min(seconds, 0.01))


class ShiftedClock(Clock):
    """Another clock's time moved forward by an offset that only grows: the
    view of a worker that runs delayed jobs and retries without waiting
    (``Worker.drain``)."""

    def __init__(self, base: Clock):
        self.base = base
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self.base.now() + self.offset

    def catch_up(self, when: datetime) -> bool:
        """Move forward so that ``now() >= when``; False if it already was."""
        behind = when - self.now()
        if behind <= timedelta(0):
            return False
        self.offset += behind
        return True

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return self.base.wait(event, seconds)
