"""SQLite store: the embedded default (stdlib sqlite3, WAL).

Safe when several processes share one file: claims run inside ``BEGIN
IMMEDIATE`` (a deferred transaction that reads and then writes fails with
SQLITE_BUSY_SNAPSHOT under contention, whatever busy_timeout says), and every
other write is one conditional statement. The statements are in ``queries``,
the pool, the waits for SQLite's lock and the WAL's backstop in
``connections``, rows <-> Jobs in ``rows``, and
the media, schedules, workers and history tables in ``side_tables``. An idle claim looks for a
runnable job with a plain read first and takes no write lock when there is
none.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from functools import lru_cache
from typing import Any

from ...core.errors import StoreError
from ...core.jobs import Job, JobStatus, capped_attempts, iso
from ...core.store import Store, TypeCounts
from . import queries as q
from .connections import Connections, Immediate, Pooled, execute_polled
from .rows import dt, insert_params, row_to_job, ts
from .side_tables import SideTables

_NO_CURSOR = (float("inf"), "")  # LIST_JOBS: a cursor after every job


def path_from_url(url: str) -> str:
    """``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url!r}")
    return url[len("sqlite:///"):] or ":memory:"


def _fence(job: Job, now: datetime, **params: Any) -> dict[str, Any]:
    """Parameters of a statement ending ``job``'s claimed attempt."""
    return {"id": job.id, "token": job.lock_token, "now": ts(now), "now_iso": iso(now), **params}


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


class SQLiteStore(SideTables, Store):
    kind = "sqlite"

    def __init__(self, path: str, synchronous: str = "NORMAL", busy_timeout_seconds: float = 30.0,
                 writer_wait_seconds: float | None = None):
        """``busy_timeout_seconds``: how long a statement SQLite refuses while
        another connection writes is tried again (connections.execute_polled);
        ``writer_wait_seconds`` (default the same): how long a transaction
        waits for its turn at the writer lock (other threads, other processes
        of this store on this host)."""
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
        params = insert_params(job)
        if job.idempotency_key is None:
            self._db.write(q.INSERT, params)
            return job.id, True
        with Pooled(self._db) as conn, Immediate(conn, self._db):
            if conn.execute(q.INSERT_UNLESS_KEY_HELD, params).fetchone() is not None:
                return job.id, True
            row = conn.execute(q.ACTIVE_JOB_WITH_KEY, (job.idempotency_key,)).fetchone()
        if row is None:  # the key's holder is gone and the id itself collided: impossible with uuid4
            raise StoreError("insert conflicted on something other than the idempotency key")
        return row[0], False

    def insert_many(self, jobs: list[Job]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        with Pooled(self._db) as conn, Immediate(conn, self._db):
            plain: list[tuple] = []  # a run of jobs without a key, inserted by one executemany
            for job in jobs:
                if job.idempotency_key is None:
                    plain.append(insert_params(job))
                    out.append((job.id, True))
                    continue
                if plain:  # before this keyed job, so rows keep the order given
                    conn.executemany(q.INSERT, plain)
                    plain = []
                params = insert_params(job)
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
        return row_to_job(rows[0]) if rows else None

    def _claimed(self, row: tuple | None) -> Job | None:
        self._idle_poll = row is None
        if row is None:
            return None
        job = row_to_job(row)
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
            if self._idle_poll and self._nothing_runnable(conn, now, queues, self.busy_timeout_seconds):
                return None
            with Immediate(conn, self._db):
                row = conn.execute(*_claim_params(worker_id, lock_token, now, queues)).fetchone()
        return self._claimed(row)

    @staticmethod
    def _nothing_runnable(conn: sqlite3.Connection, now: datetime, queues: tuple[str, ...] | None,
                          wait_seconds: float) -> bool:
        if queues is None:
            sql, params = q.ANY_RUNNABLE, {"now": now.timestamp()}
        else:
            sql, params = q.ANY_RUNNABLE_IN_QUEUES, {"now": now.timestamp(), "queues": _encoded_queues(queues)}
        return execute_polled(conn, sql, params, wait_seconds).fetchone() is None

    def complete_and_claim(self, job: Job, now: datetime, result: Any, worker_id: str,
                           lock_token: str, queues: tuple[str, ...] | None = None) -> tuple[bool, Job | None]:
        """Both in one write transaction: a drained job costs one commit, and
        the pages the two share (the row's table page, the processing index's
        edge) are written once."""
        with Pooled(self._db) as conn, Immediate(conn, self._db):
            done = conn.execute(q.COMPLETE, _complete_params(job, now, result)).rowcount == 1
            row = conn.execute(*_claim_params(worker_id, lock_token, now, queues)).fetchone()
        return done, self._claimed(row)

    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        params = {"now": ts(now), "id": job.id, "token": job.lock_token}
        if progress is None:
            return self._db.write(q.HEARTBEAT, params) == 1
        return self._db.write(q.HEARTBEAT_WITH_PROGRESS, {**params, "progress": json.dumps(progress)}) == 1

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._db.write(q.COMPLETE, _complete_params(job, now, result)) == 1

    def retry_later(self, job: Job, now: datetime, error: str, run_at: datetime,
                    traceback: str | None = None) -> bool:
        delay = round(run_at.timestamp() - now.timestamp(), 3)
        params = _fence(job, now, error=error, next_delay=delay, run_at=ts(run_at))
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
        return [row_to_job(r) for r in self._db.read(q.FIND_STUCK, {"before": ts(heartbeat_before),
                                                                      "limit": int(limit)})]

    def recover_lost(self, job: Job, heartbeat_before: datetime, now: datetime, error: str,
                     retry: bool) -> bool:
        sql = q.RECOVER_FOR_RETRY if retry else q.RECOVER_AS_FAILED
        return self._db.write(sql, _fence(job, now, error=error, before=ts(heartbeat_before))) == 1

    def cancel(self, job_id: str, now: datetime) -> bool:
        return self._db.write(q.CANCEL, {"id": job_id, "now": ts(now)}) == 1

    def requeue_failed(self, job_id: str, now: datetime) -> bool:
        try:
            return self._db.write(q.REQUEUE_FAILED, {"id": job_id, "now": ts(now)}) == 1
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                return False  # another active job holds its idempotency key
            raise

    def run_now(self, job_id: str, now: datetime) -> bool:
        return self._db.write(q.RUN_NOW, {"id": job_id, "now": ts(now)}) == 1

    def counts(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {s.value: 0 for s in JobStatus}
        for status, n in self._db.read(q.COUNT_BY_STATUS):
            out[status] = n
        out["total"] = sum(out[s.value] for s in JobStatus)
        out["scheduled"] = self._db.read(q.COUNT_SCHEDULED, (ts(now),))[0][0]
        out["oldestPendingAt"] = dt(self._db.read(q.OLDEST_RUNNABLE_PENDING, (ts(now),))[0][0])
        out["oldestProcessingAt"] = dt(self._db.read(q.OLDEST_PROCESSING)[0][0])
        return out

    def counts_by_queue(self, now: datetime) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for queue, status, n in self._db.read(q.COUNT_BY_QUEUE_AND_STATUS):
            out.setdefault(queue, {"oldestPendingAt": None})[status] = n
        for queue, oldest in self._db.read(q.OLDEST_RUNNABLE_PENDING_BY_QUEUE, (ts(now),)):
            out.setdefault(queue, {})["oldestPendingAt"] = dt(oldest)
        return out

    def counts_by_type(self, now: datetime | None = None) -> TypeCounts:
        jobs = self._db.read(q.COUNT_BY_TYPE_AND_STATUS)
        attempts = self._db.read(q.COUNT_ATTEMPTS_BY_TYPE_AND_OUTCOME)
        return TypeCounts({(t, s): n for t, s, n in jobs}, {(t, o): n for t, o, n in attempts})

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None,
                  queue: str | None = None, summary: bool = False, due_by: datetime | None = None,
                  due_after: datetime | None = None) -> list[Job]:
        before_at, before_id = _NO_CURSOR if before is None else (ts(before[0]), before[1])
        rows = self._db.read(q.LIST_JOBS, {"status": status, "type": job_type, "queue": queue,
                                           "due_by": ts(due_by), "due_after": ts(due_after),
                                           "before_at": before_at, "before_id": before_id, "limit": int(limit)})
        jobs = [row_to_job(r) for r in rows]
        if summary:  # the row is read anyway (one local page); the list view gets the same shape
            for job in jobs:
                job.payload = job.result = job.progress = None
        return jobs

    def jobs_with_id_prefix(self, prefix: str, limit: int = 20) -> list[Job]:
        rows = self._db.read(q.JOBS_WITH_ID_PREFIX, {"low": prefix, "high": prefix + "g", "limit": int(limit)})
        return [row_to_job(r) for r in rows]

    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        return self._db.write(q.PURGE, {"latest": max(ts(completed_before), ts(finished_before)),
                                        "completed": ts(completed_before), "finished": ts(finished_before)})
