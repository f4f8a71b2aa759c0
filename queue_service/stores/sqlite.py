"""SQLite store: the embedded default (stdlib sqlite3, WAL).

Safe when several processes share one file: claims and sweeps run inside
``BEGIN IMMEDIATE`` (a deferred transaction that reads and then writes fails
with SQLITE_BUSY_SNAPSHOT under contention, whatever busy_timeout says), and
every other write is one conditional statement. Connections come from a
small pool, opened lazily in the process that uses them (never before fork).
Times are stored as REAL epoch seconds so they sort and compare natively.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from ..errors import StoreError, StoreUnavailable
from ..jobs import Job, JobStatus, iso
from .base import Store, StoredFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL,
    retry_delays TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    processed_at REAL,
    completed_at REAL,
    heartbeat_at REAL,
    worker_id TEXT,
    lock_token TEXT,
    error TEXT,
    result TEXT,
    progress TEXT,
    attempts TEXT NOT NULL DEFAULT '[]',
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS queue_jobs_pending
    ON queue_jobs (priority DESC, created_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS queue_jobs_processing
    ON queue_jobs (heartbeat_at) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS queue_jobs_finished
    ON queue_jobs (completed_at) WHERE completed_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS queue_jobs_active_key
    ON queue_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'processing');
CREATE TABLE IF NOT EXISTS queue_files (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_files_created ON queue_files (created_at);
"""

# Ends the current (last) attempt in the JSON attempts list.
_END_ATTEMPT = ("json_set(attempts, '$[#-1].endedAt', :now_iso, '$[#-1].outcome', :outcome, "
                "'$[#-1].error', :error, '$[#-1].nextDelaySeconds', :next_delay)")

MAX_IDLE_CONNECTIONS = 4

_FENCE = "id = :id AND status = 'processing' AND lock_token = :token"


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    if value is None:
        return None
    # Round to the microsecond so a float round trip returns the same datetime.
    return datetime.fromtimestamp(round(value, 6), timezone.utc)


def _decode_attempts(text: str) -> list[dict[str, Any]]:
    attempts = json.loads(text)
    for attempt in attempts:
        for key in ("startedAt", "endedAt"):
            if attempt.get(key):
                attempt[key] = datetime.fromisoformat(attempt[key].replace("Z", "+00:00"))
        if attempt.get("error") is None:
            attempt.pop("error", None)
        if attempt.get("nextDelaySeconds") is None:
            attempt.pop("nextDelaySeconds", None)
    return attempts


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        type=row["type"],
        payload=json.loads(row["payload"]),
        status=JobStatus(row["status"]),
        priority=row["priority"],
        retry_count=row["retry_count"],
        max_retries=row["max_retries"],
        retry_delays=json.loads(row["retry_delays"]),
        created_at=_dt(row["created_at"]),
        run_at=_dt(row["run_at"]),
        processed_at=_dt(row["processed_at"]),
        completed_at=_dt(row["completed_at"]),
        heartbeat_at=_dt(row["heartbeat_at"]),
        worker_id=row["worker_id"],
        lock_token=row["lock_token"],
        error=row["error"],
        result=None if row["result"] is None else json.loads(row["result"]),
        progress=None if row["progress"] is None else json.loads(row["progress"]),
        attempts=_decode_attempts(row["attempts"]),
        idempotency_key=row["idempotency_key"],
    )


def path_from_url(url: str) -> str:
    """``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url!r}")
    return url[len("sqlite:///"):] or ":memory:"


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str, synchronous: str = "NORMAL", busy_timeout_seconds: float = 30.0):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous setting {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        self.busy_timeout_seconds = busy_timeout_seconds
        self._pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()

    # -- connections ----------------------------------------------------------
    # A small pool rather than one connection per thread: werkzeug's dev server
    # and gthread workers start a thread per request, and thread-local
    # connections would pile up unclosed. A connection is used by one thread at
    # a time and goes back to the pool after each call.
    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None,
                                   timeout=self.busy_timeout_seconds, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._pid != os.getpid():  # forked: never reuse the parent's handles
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # only after a failure we could not roll back
                conn.close()
                return
            with self._pool_lock:
                if len(self._idle) < MAX_IDLE_CONNECTIONS and self._pid == os.getpid():
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" in message or "busy" in message or "unable to open" in message:
                raise StoreUnavailable(f"SQLite: {message}") from exc
            raise StoreError(f"SQLite: {message}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn, self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _write(self, sql: str, params: dict[str, Any] | tuple = ()) -> int:
        with self._connection() as conn, self._errors():
            return conn.execute(sql, params).rowcount

    def _read(self, sql: str, params: dict[str, Any] | tuple = ()) -> list[sqlite3.Row]:
        with self._connection() as conn, self._errors():
            return conn.execute(sql, params).fetchall()

    # -- lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        with self._connection() as conn, self._errors():
            conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the idle connections (those in use close when returned)."""
        with self._pool_lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()

    def ping(self) -> None:
        self._read("SELECT 1 FROM queue_jobs LIMIT 1")

    # -- jobs -----------------------------------------------------------------
    def insert(self, job: Job) -> tuple[str, bool]:
        params = {
            "id": job.id, "type": job.type, "payload": json.dumps(job.payload, separators=(",", ":")),
            "status": str(job.status), "priority": job.priority, "retry_count": job.retry_count,
            "max_retries": job.max_retries, "retry_delays": json.dumps(job.retry_delays),
            "created_at": _ts(job.created_at), "run_at": _ts(job.run_at),
            "idempotency_key": job.idempotency_key,
        }
        sql = ("INSERT INTO queue_jobs (id, type, payload, status, priority, retry_count, max_retries,"
               " retry_delays, created_at, run_at, idempotency_key) VALUES (:id, :type, :payload,"
               " :status, :priority, :retry_count, :max_retries, :retry_delays, :created_at, :run_at,"
               " :idempotency_key)")
        if job.idempotency_key is None:
            self._write(sql, params)
            return job.id, True
        sql += " ON CONFLICT DO NOTHING RETURNING id"
        with self._immediate() as conn:
            if conn.execute(sql, params).fetchone() is not None:
                return job.id, True
            row = conn.execute(
                "SELECT id FROM queue_jobs WHERE idempotency_key = ? AND status IN ('pending', 'processing')",
                (job.idempotency_key,)).fetchone()
        if row is None:  # the key's holder is gone and the id itself collided: impossible with uuid4
            raise StoreError("insert conflicted on something other than the idempotency key")
        return row["id"], False

    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM queue_jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def claim(self, worker_id: str, lock_token: str, now: datetime) -> Job | None:
        attempt = json.dumps({"startedAt": iso(now), "worker": worker_id})
        sql = (
            "UPDATE queue_jobs SET status = 'processing', lock_token = :token, worker_id = :worker,"
            " processed_at = :now, heartbeat_at = :now, progress = NULL,"
            " attempts = json_insert(attempts, '$[#]', json(:attempt))"
            " WHERE seq = (SELECT seq FROM queue_jobs WHERE status = 'pending' AND run_at <= :now"
            " ORDER BY priority DESC, created_at, seq LIMIT 1) RETURNING *")
        with self._immediate() as conn:
            row = conn.execute(sql, {"token": lock_token, "worker": worker_id, "now": _ts(now),
                                     "attempt": attempt}).fetchone()
        return _row_to_job(row) if row is not None else None

    def _end(self, job: Job, now: datetime, set_sql: str, outcome: str,
             error: str | None = None, next_delay: float | None = None, **extra: Any) -> bool:
        sql = f"UPDATE queue_jobs SET {set_sql}, attempts = {_END_ATTEMPT} WHERE {_FENCE}"
        params = {"id": job.id, "token": job.lock_token, "now": _ts(now), "now_iso": iso(now),
                  "outcome": outcome, "error": error, "next_delay": next_delay, **extra}
        return self._write(sql, params) == 1

    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        if progress is None:
            sql = f"UPDATE queue_jobs SET heartbeat_at = :now WHERE {_FENCE}"
            params = {"now": _ts(now), "id": job.id, "token": job.lock_token}
        else:
            sql = f"UPDATE queue_jobs SET heartbeat_at = :now, progress = :progress WHERE {_FENCE}"
            params = {"now": _ts(now), "id": job.id, "token": job.lock_token,
                      "progress": json.dumps(progress)}
        return self._write(sql, params) == 1

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._end(job, now, "status = 'completed', completed_at = :now, result = :result,"
                         " lock_token = NULL, error = NULL", "completed",
                         result=json.dumps(result, separators=(",", ":")))

    def retry_later(self, job: Job, now: datetime, error: str, run_at: datetime) -> bool:
        delay = round(run_at.timestamp() - now.timestamp(), 3)
        return self._end(job, now, "status = 'pending', retry_count = retry_count + 1,"
                         " run_at = :run_at, lock_token = NULL, error = :error", "retry",
                         error=error, next_delay=delay, run_at=_ts(run_at))

    def fail(self, job: Job, now: datetime, error: str) -> bool:
        return self._end(job, now, "status = 'failed', completed_at = :now, lock_token = NULL,"
                         " error = :error", "failed", error=error)

    def release(self, job: Job, now: datetime, reason: str) -> bool:
        return self._end(job, now, "status = 'pending', run_at = :now, lock_token = NULL",
                         "released", error=reason)

    def requeue_stuck(self, heartbeat_before: datetime, now: datetime, error: str) -> tuple[int, int]:
        params = {"before": _ts(heartbeat_before), "now": _ts(now), "now_iso": iso(now),
                  "outcome": "lost", "error": error, "next_delay": None}
        with self._immediate() as conn:
            requeued = conn.execute(
                "UPDATE queue_jobs SET status = 'pending', retry_count = retry_count + 1,"
                f" run_at = :now, lock_token = NULL, error = :error, attempts = {_END_ATTEMPT}"
                " WHERE status = 'processing' AND heartbeat_at < :before"
                " AND retry_count < max_retries", params).rowcount
            failed = conn.execute(
                "UPDATE queue_jobs SET status = 'failed', completed_at = :now, lock_token = NULL,"
                f" error = :error, attempts = {_END_ATTEMPT}"
                " WHERE status = 'processing' AND heartbeat_at < :before", params).rowcount
        return requeued, failed

    def cancel(self, job_id: str, now: datetime) -> bool:
        return self._write("UPDATE queue_jobs SET status = 'cancelled', completed_at = :now"
                           " WHERE id = :id AND status = 'pending'",
                           {"id": job_id, "now": _ts(now)}) == 1

    def requeue_failed(self, job_id: str, now: datetime) -> bool:
        try:
            return self._write(
                "UPDATE queue_jobs SET status = 'pending', run_at = :now, retry_count = 0,"
                " completed_at = NULL, error = NULL, lock_token = NULL"
                " WHERE id = :id AND status = 'failed'", {"id": job_id, "now": _ts(now)}) == 1
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                return False  # another active job holds its idempotency key
            raise

    def counts(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {s.value: 0 for s in JobStatus}
        for row in self._read("SELECT status, COUNT(*) AS n FROM queue_jobs GROUP BY status"):
            out[row["status"]] = row["n"]
        out["total"] = sum(out[s.value] for s in JobStatus)
        row = self._read("SELECT MIN(run_at) AS t FROM queue_jobs WHERE status = 'pending'"
                         " AND run_at <= ?", (_ts(now),))[0]
        out["oldestPendingAt"] = _dt(row["t"])
        row = self._read("SELECT MIN(processed_at) AS t FROM queue_jobs WHERE status = 'processing'")[0]
        out["oldestProcessingAt"] = _dt(row["t"])
        return out

    def list_jobs(self, status: str | None = None, job_type: str | None = None,
                  limit: int = 50, before: tuple[datetime, str] | None = None) -> list[Job]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if job_type is not None:
            where.append("type = ?")
            params.append(job_type)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [_ts(before[0]), _ts(before[0]), before[1]]
        sql = "SELECT * FROM queue_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(int(limit))
        return [_row_to_job(r) for r in self._read(sql, params)]

    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        return self._write(
            "DELETE FROM queue_jobs WHERE completed_at IS NOT NULL AND ("
            "(status = 'completed' AND completed_at < ?) OR "
            "(status IN ('failed', 'cancelled') AND completed_at < ?))",
            (_ts(completed_before), _ts(finished_before)))

    # -- media ----------------------------------------------------------------
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        self._write("INSERT OR REPLACE INTO queue_files (name, data, content_type, created_at)"
                    " VALUES (?, ?, ?, ?)", (name, sqlite3.Binary(data), content_type, _ts(now)))

    def get_file(self, name: str) -> StoredFile | None:
        rows = self._read("SELECT * FROM queue_files WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return StoredFile(r["name"], bytes(r["data"]), r["content_type"], _dt(r["created_at"]))

    def purge_files(self, created_before: datetime) -> int:
        return self._write("DELETE FROM queue_files WHERE created_at < ?", (_ts(created_before),))
