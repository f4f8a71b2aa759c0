"""SQLite store: the embedded default (stdlib sqlite3, WAL).

Safe when several processes share one file: claims run inside ``BEGIN
IMMEDIATE`` (a deferred transaction that reads and then writes fails with
SQLITE_BUSY_SNAPSHOT under contention, whatever busy_timeout says), and every
other write is one conditional statement. The statements are in ``queries``,
the pool and the writer lock in ``connections``. An idle claim looks for a
runnable job with a plain read first and takes no write lock when there is
none.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from ...core.errors import StoreError
from ...core.jobs import Job, JobStatus, capped_attempts, iso
from ...core.store import ScheduleState, Store, StoredFile, TypeCounts, media_etag, timing_row
from . import queries as q
from .connections import Connections, Immediate, Pooled

_NO_CURSOR = (float("inf"), "")  # LIST_JOBS: a cursor after every job


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    if value is None:
        return None
    # Round to the microsecond so a float round trip returns the same datetime.
    return datetime.fromtimestamp(round(value, 6), timezone.utc)


def _decode_attempts(text: str) -> list[dict[str, Any]]:
    if text == "[]":
        return []
    attempts = json.loads(text)
    for attempt in attempts:
        for key in ("startedAt", "endedAt"):
            if attempt.get(key):
                attempt[key] = datetime.fromisoformat(attempt[key])  # 3.11+ reads the "Z"
    return attempts


# retry_delays is nearly always one of a few lists (the app's or the type's):
# each text is decoded, and each list encoded, once.
@lru_cache(maxsize=64)
def _decoded_delays(text: str) -> tuple[float, ...]:
    return tuple(json.loads(text))


@lru_cache(maxsize=64)
def _encoded_delays(delays: tuple[float, ...]) -> str:
    return json.dumps(list(delays))


def _row_to_job(row: tuple) -> Job:
    """A row of ``queries.COLUMNS`` -> Job (positional: a name lookup in sqlite3.Row
    scans the column names case-insensitively, ~20 times per job)."""
    (job_id, job_type, payload, status, priority, retry_count, max_retries, retry_delays,
     created_at, run_at, processed_at, completed_at, heartbeat_at, worker_id, lock_token,
     error, result, progress, attempts, idempotency_key, queue, scheduled_by, slot, schema_fingerprint,
     attempts_dropped) = row
    return Job(
        id=job_id,
        type=job_type,
        payload=json.loads(payload),
        status=JobStatus(status),
        priority=priority,
        retry_count=retry_count,
        max_retries=max_retries,
        retry_delays=list(_decoded_delays(retry_delays)),
        created_at=_dt(created_at),
        run_at=_dt(run_at),
        processed_at=_dt(processed_at),
        completed_at=_dt(completed_at),
        heartbeat_at=_dt(heartbeat_at),
        worker_id=worker_id,
        lock_token=lock_token,
        error=error,
        result=None if result is None else json.loads(result),
        progress=None if progress is None else json.loads(progress),
        attempts=_decode_attempts(attempts),
        idempotency_key=idempotency_key,
        queue=queue,
        scheduled_by=scheduled_by,
        slot=_dt(slot),
        schema_fingerprint=schema_fingerprint,
        attempts_dropped=attempts_dropped or 0,
    )


def path_from_url(url: str) -> str:
    """``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url!r}")
    return url[len("sqlite:///"):] or ":memory:"


def _insert_params(job: Job) -> tuple:
    return (job.id, job.type, json.dumps(job.payload, separators=(",", ":")), str(job.status),
            job.priority, job.retry_count, job.max_retries, _encoded_delays(tuple(job.retry_delays)),
            _ts(job.created_at), _ts(job.run_at), job.idempotency_key, job.queue, job.scheduled_by, _ts(job.slot),
            job.schema_fingerprint)


def _fence(job: Job, now: datetime, **params: Any) -> dict[str, Any]:
    """Parameters of a statement ending ``job``'s claimed attempt."""
    return {"id": job.id, "token": job.lock_token, "now": _ts(now), "now_iso": iso(now), **params}


def _claim_params(worker_id: str, lock_token: str, now: datetime,
                  queues: tuple[str, ...] | None) -> tuple[str, dict[str, Any]]:
    """The claim statement for ``queues`` (None: every queue) and its parameters."""
    params = {"token": lock_token, "worker": worker_id, "now": now.timestamp(), "now_iso": iso(now)}
    if queues is None:
        return q.CLAIM, params
    return q.CLAIM_FROM_QUEUES, {**params, "queues": _encoded_queues(queues)}


@lru_cache(maxsize=16)
def _encoded_queues(queues: tuple[str, ...]) -> str:
    return json.dumps(list(queues))


def _complete_params(job: Job, now: datetime, result: Any) -> dict[str, Any]:
    # None is written as JSON null without json.dumps (most handlers return nothing).
    encoded = "null" if result is None else json.dumps(result, separators=(",", ":"))
    return _fence(job, now, result=encoded)


class _Refused(Exception):
    """enqueue_slot: roll the transaction back."""


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str, synchronous: str = "NORMAL", busy_timeout_seconds: float = 30.0,
                 writer_wait_seconds: float | None = None):
        """``busy_timeout_seconds``: how long SQLite waits for its write lock;
        ``writer_wait_seconds`` (default the same): how long a write waits for
        its turn at the writer lock (other threads, other processes of this
        store on this host)."""
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous setting {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout_seconds = busy_timeout_seconds
        self.writer_wait_seconds = busy_timeout_seconds if writer_wait_seconds is None else writer_wait_seconds
        self._db = Connections(path, self.synchronous, busy_timeout_seconds, self.writer_wait_seconds)
        # Set when the last claim found nothing: the next one reads first.
        self._idle_poll = True

    # -- lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        self._db.script(q.TABLES)
        for table, added in (("queue_jobs", q.ADDED_COLUMNS), ("queue_files", q.ADDED_FILE_COLUMNS)):
            self._add_columns(table, added)
        self._db.script(q.INDEXES)

    def _add_columns(self, table: str, added: dict[str, str]) -> None:
        present = {row[0] for row in self._db.read(q.TABLE_COLUMNS, (table,))}
        for column, statement in added.items():
            if column not in present:
                try:
                    self._db.write(statement)
                except StoreError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def close(self) -> None:
        self._db.close()

    def ping(self) -> None:
        self._db.read(q.PING)
        if self.refusing_writes:
            # After a refused write (core.write_watch), health asks the file
            # itself: it may be writable again before the next real write.
            self._db.probe_write(q.WRITE_PROBE)
            self.refusing_writes = False

    # -- jobs -----------------------------------------------------------------
    def insert(self, job: Job) -> tuple[str, bool]:
        params = _insert_params(job)
        if job.idempotency_key is None:
            self._db.write(q.INSERT, params)
            return job.id, True
        with Pooled(self._db) as conn, Immediate(conn, self._db.writer):
            if conn.execute(q.INSERT_UNLESS_KEY_HELD, params).fetchone() is not None:
                return job.id, True
            row = conn.execute(q.ACTIVE_JOB_WITH_KEY, (job.idempotency_key,)).fetchone()
        if row is None:  # the key's holder is gone and the id itself collided: impossible with uuid4
            raise StoreError("insert conflicted on something other than the idempotency key")
        return row[0], False

    def insert_many(self, jobs: list[Job]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        with Pooled(self._db) as conn, Immediate(conn, self._db.writer):
            plain: list[tuple] = []  # a run of jobs without a key, inserted by one executemany
            for job in jobs:
                if job.idempotency_key is None:
                    plain.append(_insert_params(job))
                    out.append((job.id, True))
                    continue
                if plain:  # before this keyed job, so rows keep the order given
                    conn.executemany(q.INSERT, plain)
                    plain = []
                params = _insert_params(job)
                if conn.execute(q.INSERT_UNLESS_KEY_HELD, params).fetchone() is not None:
                    out.append((job.id, True))
                else:
                    row = conn.execute(q.ACTIVE_JOB_WITH_KEY, (job.idempotency_key,)).fetchone()
                    if row is None:
                        raise StoreError("insert conflicted on something other than the idempotency key")
                    out.append((row[0], False))
            if plain:
                conn.executemany(q.INSERT, plain)
        return out

    def get(self, job_id: str) -> Job | None:
        rows = self._db.read(q.GET, (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def _claimed(self, row: tuple | None) -> Job | None:
        self._idle_poll = row is None
        if row is None:
            return None
        job = _row_to_job(row)
        capped = capped_attempts(job.attempts)
        if capped is not None:
            job.attempts, dropped = capped
            job.attempts_dropped += dropped
            self._db.write(q.CAP_ATTEMPTS, {"attempts": json.dumps(job.attempts, default=iso), "dropped": dropped,
                                            "id": job.id, "token": job.lock_token})
        return job

    def claim(self, worker_id: str, lock_token: str, now: datetime,
              queues: tuple[str, ...] | None = None) -> Job | None:
        with Pooled(self._db) as conn:
            # After a claim that found nothing (an idle poll), a plain read
            # first: with nothing runnable no write lock is taken, so idle
            # pollers never hold up other writers. The read sees the last
            # commit; a job committed after it is found by the next poll, as
            # it would be had the claim run a moment earlier. In a burst the
            # read is skipped (it would cost ~5% of a claim for nothing).
            if self._idle_poll and self._nothing_runnable(conn, now, queues):
                return None
            with Immediate(conn, self._db.writer):
                row = conn.execute(*_claim_params(worker_id, lock_token, now, queues)).fetchone()
        return self._claimed(row)

    @staticmethod
    def _nothing_runnable(conn: sqlite3.Connection, now: datetime, queues: tuple[str, ...] | None) -> bool:
        if queues is None:
            return conn.execute(q.ANY_RUNNABLE, {"now": now.timestamp()}).fetchone() is None
        params = {"now": now.timestamp(), "queues": _encoded_queues(queues)}
        return conn.execute(q.ANY_RUNNABLE_IN_QUEUES, params).fetchone() is None

    def complete_and_claim(self, job: Job, now: datetime, result: Any, worker_id: str,
                           lock_token: str, queues: tuple[str, ...] | None = None) -> tuple[bool, Job | None]:
        """Both in one write transaction: a drained job costs one commit, and
        the pages the two share (the row's table page, the processing index's
        edge) are written once."""
        with Pooled(self._db) as conn, Immediate(conn, self._db.writer):
            done = conn.execute(q.COMPLETE, _complete_params(job, now, result)).rowcount == 1
            row = conn.execute(*_claim_params(worker_id, lock_token, now, queues)).fetchone()
        return done, self._claimed(row)

    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        params = {"now": _ts(now), "id": job.id, "token": job.lock_token}
        if progress is None:
            return self._db.write(q.HEARTBEAT, params) == 1
        return self._db.write(q.HEARTBEAT_WITH_PROGRESS, {**params, "progress": json.dumps(progress)}) == 1

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._db.write(q.COMPLETE, _complete_params(job, now, result)) == 1

    def retry_later(self, job: Job, now: datetime, error: str, run_at: datetime,
                    traceback: str | None = None) -> bool:
        delay = round(run_at.timestamp() - now.timestamp(), 3)
        params = _fence(job, now, error=error, next_delay=delay, run_at=_ts(run_at))
        if traceback is None:
            return self._db.write(q.RETRY_LATER, params) == 1
        return self._db.write(q.RETRY_LATER_WITH_TRACEBACK, {**params, "traceback": traceback}) == 1

    def fail(self, job: Job, now: datetime, error: str, traceback: str | None = None) -> bool:
        if traceback is None:
            return self._db.write(q.FAIL, _fence(job, now, error=error)) == 1
        return self._db.write(q.FAIL_WITH_TRACEBACK, _fence(job, now, error=error, traceback=traceback)) == 1

    def release(self, job: Job, now: datetime, reason: str) -> bool:
        return self._db.write(q.RELEASE, _fence(job, now, error=reason)) == 1

    def find_stuck(self, heartbeat_before: datetime, limit: int = 1000) -> list[Job]:
        return [_row_to_job(r) for r in self._db.read(q.FIND_STUCK, {"before": _ts(heartbeat_before),
                                                                      "limit": int(limit)})]

    def recover_lost(self, job: Job, heartbeat_before: datetime, now: datetime, error: str,
                     retry: bool) -> bool:
        sql = q.RECOVER_FOR_RETRY if retry else q.RECOVER_AS_FAILED
        return self._db.write(sql, _fence(job, now, error=error, before=_ts(heartbeat_before))) == 1

    def cancel(self, job_id: str, now: datetime) -> bool:
        return self._db.write(q.CANCEL, {"id": job_id, "now": _ts(now)}) == 1

    def requeue_failed(self, job_id: str, now: datetime) -> bool:
        try:
            return self._db.write(q.REQUEUE_FAILED, {"id": job_id, "now": _ts(now)}) == 1
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                return False  # another active job holds its idempotency key
            raise

    def run_now(self, job_id: str, now: datetime) -> bool:
        return self._db.write(q.RUN_NOW, {"id": job_id, "now": _ts(now)}) == 1

    def counts(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {s.value: 0 for s in JobStatus}
        for status, n in self._db.read(q.COUNT_BY_STATUS):
            out[status] = n
        out["total"] = sum(out[s.value] for s in JobStatus)
        out["scheduled"] = self._db.read(q.COUNT_SCHEDULED, (_ts(now),))[0][0]
        out["oldestPendingAt"] = _dt(self._db.read(q.OLDEST_RUNNABLE_PENDING, (_ts(now),))[0][0])
        out["oldestProcessingAt"] = _dt(self._db.read(q.OLDEST_PROCESSING)[0][0])
        return out

    def counts_by_queue(self, now: datetime) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for queue, status, n in self._db.read(q.COUNT_BY_QUEUE_AND_STATUS):
            out.setdefault(queue, {"oldestPendingAt": None})[status] = n
        for queue, oldest in self._db.read(q.OLDEST_RUNNABLE_PENDING_BY_QUEUE, (_ts(now),)):
            out.setdefault(queue, {})["oldestPendingAt"] = _dt(oldest)
        return out

    def counts_by_type(self, now: datetime | None = None) -> TypeCounts:
        jobs = self._db.read(q.COUNT_BY_TYPE_AND_STATUS)
        attempts = self._db.read(q.COUNT_ATTEMPTS_BY_TYPE_AND_OUTCOME)
        return TypeCounts({(t, s): n for t, s, n in jobs}, {(t, o): n for t, o, n in attempts})

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None,
                  queue: str | None = None, summary: bool = False, due_by: datetime | None = None,
                  due_after: datetime | None = None) -> list[Job]:
        before_at, before_id = _NO_CURSOR if before is None else (_ts(before[0]), before[1])
        rows = self._db.read(q.LIST_JOBS, {"status": status, "type": job_type, "queue": queue,
                                           "due_by": _ts(due_by), "due_after": _ts(due_after),
                                           "before_at": before_at, "before_id": before_id, "limit": int(limit)})
        jobs = [_row_to_job(r) for r in rows]
        if summary:  # the row is read anyway (one local page); the list view gets the same shape
            for job in jobs:
                job.payload = job.result = job.progress = None
        return jobs

    def jobs_with_id_prefix(self, prefix: str, limit: int = 20) -> list[Job]:
        rows = self._db.read(q.JOBS_WITH_ID_PREFIX, {"low": prefix, "high": prefix + "g", "limit": int(limit)})
        return [_row_to_job(r) for r in rows]

    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        return self._db.write(q.PURGE, {"latest": max(_ts(completed_before), _ts(finished_before)),
                                        "completed": _ts(completed_before), "finished": _ts(finished_before)})

    # -- operator views -------------------------------------------------------
    def history(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        rows = self._db.read(q.HISTORY, {"bucket": int(bucket_seconds), "since": int(since.timestamp()),
                                         "until": int(until.timestamp())})
        return [{"bucket": int(b), "type": t, "completed": int(c), "failed": int(f)} for b, t, c, f in rows]

    def history_timings(self, since: datetime, until: datetime, bucket_seconds: int) -> list[dict[str, Any]]:
        rows = self._db.read(q.HISTORY_TIMINGS, {"bucket": int(bucket_seconds), "since": int(since.timestamp()),
                                                 "until": int(until.timestamp())})
        return [timing_row(int(b), t, int(n), (w50, w95, r50, r95)) for b, t, n, w50, w95, r50, r95 in rows]

    def register_worker(self, record: dict[str, Any]) -> None:
        self._db.write(q.REGISTER_WORKER, {"id": record["id"], "seen": _ts(record["lastSeenAt"]),
                                           "record": json.dumps(record, default=iso)})

    def list_workers(self) -> list[dict[str, Any]]:
        out = []
        for (text,) in self._db.read(q.LIST_WORKERS):
            record = json.loads(text)
            for key in ("startedAt", "lastSeenAt"):
                if record.get(key):
                    record[key] = datetime.fromisoformat(record[key])
            out.append(record)
        return out

    def purge_workers(self, seen_before: datetime) -> int:
        return self._db.write(q.PURGE_WORKERS, (_ts(seen_before),))
    # -- schedules --------------------------------------------------------------
    def enqueue_slot(self, schedule_name: str, slot: datetime, job: Job, now: datetime) -> bool:
        advance = {"name": schedule_name, "slot": _ts(slot), "job_id": job.id, "now": _ts(now)}
        try:
            with Pooled(self._db) as conn, Immediate(conn, self._db.writer):
                if conn.execute(q.ADVANCE_SCHEDULE, advance).fetchone() is None:
                    raise _Refused  # an equal or later slot is stored
                if conn.execute(q.INSERT_UNLESS_KEY_HELD, _insert_params(job)).fetchone() is None:
                    raise _Refused  # the slot's job id exists (its state was purged since)
        except _Refused:  # rolled back: nothing written
            return False
        return True

    def schedule_states(self) -> dict[str, ScheduleState]:
        return {name: ScheduleState(name, _dt(last_slot), last_job_id, _dt(seen_at), runs)
                for name, last_slot, last_job_id, seen_at, runs in self._db.read(q.SCHEDULE_STATES)}

    def touch_schedules(self, names: list[str], now: datetime) -> None:
        with Pooled(self._db) as conn, Immediate(conn, self._db.writer):
            conn.executemany(q.TOUCH_SCHEDULE, [(name, _ts(now)) for name in names])

    def purge_schedules(self, seen_before: datetime) -> int:
        return self._db.write(q.PURGE_SCHEDULES, (_ts(seen_before),))

    # -- media ----------------------------------------------------------------
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        self._db.write(q.PUT_FILE, (name, sqlite3.Binary(data), content_type, _ts(now), media_etag(data)))

    def get_file(self, name: str) -> StoredFile | None:
        rows = self._db.read(q.GET_FILE, (name,))
        if not rows:
            return None
        r = rows[0]
        data = bytes(r[1])
        return StoredFile(r[0], data, r[2], _dt(r[3]), r[4] or media_etag(data))

    def file_etag(self, name: str) -> str | None:
        rows = self._db.read(q.FILE_ETAG, (name,))
        if not rows:
            return None
        return rows[0][0] if rows[0][0] is not None else super().file_etag(name)

    def purge_files(self, created_before: datetime) -> int:
        return self._db.write(q.PURGE_FILES, (_ts(created_before),))
