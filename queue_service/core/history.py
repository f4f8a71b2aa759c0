"""Throughput over the last hours: attempts that ended per time bucket (completed, failed), for the
dashboard's charts and ``GET /stats/history``.

The store groups (``Store.history``); this module picks the bucket size (5
minutes up to 6 hours, an hour beyond), aligns the window to it, and fills the
empty buckets so that a chart needs no arithmetic of its own.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError
from .jobs import iso
from .store import Store

MAX_HOURS = 168  # a week: the default retention of completed jobs
FINE_BUCKET_SECONDS = 300
COARSE_BUCKET_SECONDS = 3600
FINE_UP_TO_HOURS = 6


#: Per bucket and per type: nearest-rank median and p95 of the queue latency
#: (runAt -> startedAt) and of the run time (startedAt -> endedAt), seconds.
TIMING_KEYS = ("waitP50", "waitP95", "runP50", "runP95")
_NO_TIMINGS = dict.fromkeys(TIMING_KEYS)


def bucket_seconds(hours: int) -> int:
    return FINE_BUCKET_SECONDS if hours <= FINE_UP_TO_HOURS else COARSE_BUCKET_SECONDS


def check_hours(hours: Any) -> int:
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_HOURS:
        raise ValidationError({"hours": [f"Must be an integer between 1 and {MAX_HOURS}."]})
    return hours


def history(store: Store, now: datetime, hours: int) -> dict[str, Any]:
    """``{hours, bucketSeconds, since, until, buckets: [{start, completed,
    failed, waitP50, waitP95, runP50, runP95, types: {type: {completed, failed,
    waitP50, ...}}}]}`` (timings None where no attempt ended), oldest bucket first; the
    last bucket is the one holding ``now``."""
    hours = check_hours(hours)
    size = bucket_seconds(hours)
    end_epoch = (int(now.timestamp()) // size + 1) * size
    count = hours * 3600 // size
    start_epoch = end_epoch - count * size
    since = datetime.fromtimestamp(start_epoch, timezone.utc)
    until = datetime.fromtimestamp(end_epoch, timezone.utc)
    buckets = [{"start": iso(since + timedelta(seconds=i * size)), "completed": 0, "failed": 0, "types": {},
                **_NO_TIMINGS} for i in range(count)]
    for row in store.history(since, until, size):
        index = (row["bucket"] - start_epoch) // size
        if not 0 <= index < count:
            continue
        bucket = buckets[index]
        bucket["completed"] += row["completed"]
        bucket["failed"] += row["failed"]
        bucket["types"][row["type"]] = {"completed": row["completed"], "failed": row["failed"], **_NO_TIMINGS}
    for row in store.history_timings(since, until, size):
        index = (row["bucket"] - start_epoch) // size
        if not 0 <= index < count:
            continue
        timings = {key: row[key] for key in TIMING_KEYS}
        if row["type"] is None:
            buckets[index].update(timings)
        else:
            counts = buckets[index]["types"].setdefault(row["type"], {"completed": 0, "failed": 0})
            counts.update(timings)
    return {"hours": hours, "bucketSeconds": size, "since": iso(since), "until": iso(until), "buckets": buckets}
