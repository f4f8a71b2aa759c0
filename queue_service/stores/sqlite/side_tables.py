"""The SQLite store's side tables: stored media, periodic schedules, worker
records, and the operator's history read from the jobs' attempts.

A mixin of ``SQLiteStore`` (it uses the store's ``_db``, the Connections);
the jobs themselves are in ``store.py``.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from ...core.jobs import Job, iso
from ...core.store import ScheduleState, StoredFile, media_etag, timing_row
from . import queries as q
from . import side_queries as sq
from .connections import Immediate, Pooled
from .rows import dt, insert_params, ts


class _Refused(Exception):
    """enqueue_slot: roll the transaction back."""


class SideTables:
    # -- operator views -------------------------------------------------------
    def history(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        rows = self._db.read(sq.HISTORY, {"bucket": int(bucket_seconds), "since": int(since.timestamp()),
                                         "until": int(until.timestamp())})
        return [{"bucket": int(b), "type": t, "completed": int(c), "failed": int(f)} for b, t, c, f in rows]

    def history_timings(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        rows = self._db.read(sq.HISTORY_TIMINGS, {"bucket": int(bucket_seconds), "since": int(since.timestamp()),
                                                 "until": int(until.timestamp())})
        return [timing_row(int(b), t, int(n), (w50, w95, r50, r95)) for b, t, n, w50, w95, r50, r95 in rows]

    def register_worker(self, record: dict[str, Any]) -> None:
        self._db.write(sq.REGISTER_WORKER, {"id": record["id"], "seen": ts(record["lastSeenAt"]),
                                           "record": json.dumps(record, default=iso)})

    def list_workers(self) -> list[dict[str, Any]]:
        out = []
        for (text,) in self._db.read(sq.LIST_WORKERS):
            record = json.loads(text)
            for key in ("startedAt", "lastSeenAt"):
                if record.get(key):
                    record[key] = datetime.fromisoformat(record[key])
            out.append(record)
        return out

    def purge_workers(self, seen_before: datetime) -> int:
        return self._db.write(sq.PURGE_WORKERS, (ts(seen_before),))
    # -- schedules --------------------------------------------------------------
    def enqueue_slot(self, schedule_name: str, slot: datetime, job: Job, now: datetime) -> bool:
        advance = {"name": schedule_name, "slot": ts(slot), "job_id": job.id, "now": ts(now)}
        try:
            with Pooled(self._db) as conn, Immediate(conn, self._db):
                if conn.execute(sq.ADVANCE_SCHEDULE, advance).fetchone() is None:
                    raise _Refused  # an equal or later slot is stored
                if conn.execute(q.INSERT_UNLESS_KEY_HELD, insert_params(job)).fetchone() is None:
                    raise _Refused  # the slot's job id exists (its state was purged since)
        except _Refused:  # rolled back: nothing written
            return False
        return True

    def schedule_states(self) -> dict[str, ScheduleState]:
        return {name: ScheduleState(name, dt(last_slot), last_job_id, dt(seen_at), runs)
                for name, last_slot, last_job_id, seen_at, runs in self._db.read(sq.SCHEDULE_STATES)}

    def touch_schedules(self, names: list[str], now: datetime) -> None:
        with Pooled(self._db) as conn, Immediate(conn, self._db):
            conn.executemany(sq.TOUCH_SCHEDULE, [(name, ts(now)) for name in names])

    def purge_schedules(self, seen_before: datetime) -> int:
        return self._db.write(sq.PURGE_SCHEDULES, (ts(seen_before),))

    # -- media ----------------------------------------------------------------
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        self._db.write(sq.PUT_FILE, (name, sqlite3.Binary(data), content_type, ts(now), media_etag(data)))

    def get_file(self, name: str) -> StoredFile | None:
        rows = self._db.read(sq.GET_FILE, (name,))
        if not rows:
            return None
        r = rows[0]
        data = bytes(r[1])
        return StoredFile(r[0], data, r[2], dt(r[3]), r[4] or media_etag(data))

    def file_etag(self, name: str) -> str | None:
        rows = self._db.read(sq.FILE_ETAG, (name,))
        if not rows:
            return None
        return rows[0][0] if rows[0][0] is not None else super().file_etag(name)

    def purge_files(self, created_before: datetime) -> int:
        return self._db.write(sq.PURGE_FILES, (ts(created_before),))
