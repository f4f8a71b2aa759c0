"""SQLite store: the embedded default (stdlib sqlite3, WAL).

Safe when several processes share one file: claims and sweeps run inside
``BEGIN IMMEDIATE`` (a deferred transaction that reads and then writes fails
with SQLITE_BUSY_SNAPSHOT under contention, whatever busy_timeout says), and
every other write is one conditional statement. Connections come from a
small pool, opened lazily in the process that uses them (never before fork).
Times are stored as REAL epoch seconds so they sort and compare natively.

Writers take a writer lock (a thread lock, then ``flock`` on a side file)
around each write transaction, so threads and processes on one host queue
for SQLite's write lock instead of sleeping in its busy handler (see
_WriterLock); SQLite's own locking still decides. An idle claim looks for a
runnable job with a plain read first and takes no write lock when there is
none.
"""
from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from functools import lru_cache
from datetime import datetime, timezone
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from ..errors import StoreError, StoreUnavailable
from ..jobs import Job, JobStatus, iso
from .base import Store, StoredFile, TypeCounts

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
-- No index on completed_at: each completion would write one more page (drain
-- ~15% slower). purge() bounds its scan by created_at instead (a job finishes
-- after it was created). Files made before this change drop theirs.
DROP INDEX IF EXISTS queue_jobs_finished;
-- GET /jobs lists newest first: scanned backwards, no sort of the table. Ascending,
-- so each insert appends at its right edge (a DESC index inserts at the left edge,
-- where SQLite splits pages half-empty: enqueue p99 was ~2x).
CREATE INDEX IF NOT EXISTS queue_jobs_newest ON queue_jobs (created_at, id);
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

# The columns of a job row, in the order _row_to_job reads them (named, not
# ``*``, so a file whose table gained columns later still reads right).
_COLUMNS = ("id, type, payload, status, priority, retry_count, max_retries, retry_delays,"
            " created_at, run_at, processed_at, completed_at, heartbeat_at, worker_id,"
            " lock_token, error, result, progress, attempts, idempotency_key")


def _end_attempt(*keys: str) -> str:
    """SQL ending the current (last) attempt in the JSON attempts list with
    endedAt, outcome and the named parameters ``keys`` (attempt key = SQL
    parameter name). Keys whose value would be null are not named, so they are
    left out (as the MongoDB store does): a successful attempt is
    {startedAt, worker, endedAt, outcome}."""
    pairs = [("endedAt", "now_iso"), ("outcome", "outcome"), *((k, k) for k in keys)]
    return "json_set(attempts, " + ", ".join(f"'$[#-1].{key}', :{param}" for key, param in pairs) + ")"


MAX_IDLE_CONNECTIONS = 4

_FENCE = "id = :id AND status = 'processing' AND lock_token = :token"


@lru_cache(maxsize=None)  # a handful of (set_sql, keys) pairs, built once each
def _end_sql(set_sql: str, keys: tuple[str, ...]) -> str:
    return f"UPDATE queue_jobs SET {set_sql}, attempts = {_end_attempt(*keys)} WHERE {_FENCE}"


_RUNNABLE = "status = 'pending' AND run_at <= :now"
_IDLE_CHECK = f"SELECT 1 FROM queue_jobs WHERE {_RUNNABLE} LIMIT 1"
_CLAIM = ("UPDATE queue_jobs SET status = 'processing', lock_token = :token, worker_id = :worker,"
          " processed_at = :now, heartbeat_at = :now, progress = NULL,"
          " attempts = json_insert(attempts, '$[#]', json_object('startedAt', :now_iso, 'worker', :worker))"
          f" WHERE seq = (SELECT seq FROM queue_jobs WHERE {_RUNNABLE}"
          f" ORDER BY priority DESC, created_at, seq LIMIT 1) RETURNING {_COLUMNS}")
_INSERT = ("INSERT INTO queue_jobs (id, type, payload, status, priority, retry_count, max_retries,"
           " retry_delays, created_at, run_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


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
        # Rows written before null keys were left out still carry them.
        if "error" in attempt and attempt["error"] is None:
            del attempt["error"]
        if "nextDelaySeconds" in attempt and attempt["nextDelaySeconds"] is None:
            del attempt["nextDelaySeconds"]
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
    """A row of ``_COLUMNS`` -> Job (positional: a name lookup in sqlite3.Row
    scans the column names case-insensitively, ~20 times per job)."""
    (job_id, job_type, payload, status, priority, retry_count, max_retries, retry_delays,
     created_at, run_at, processed_at, completed_at, heartbeat_at, worker_id, lock_token,
     error, result, progress, attempts, idempotency_key) = row
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
    )


class _WriterLock:
    """Serialises this store's write transactions across the threads and the
    processes of one host, ahead of SQLite's own lock.

    SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries,
    so a writer that collided a few times sleeps long after the lock is free
    (HTTP enqueue p99 ~20-30 ms with four writers). Here a thread waits on a
    thread lock (woken at release) and then on ``flock`` of a side file
    ``<db>-writer.lock``, tried at least every millisecond. Both waits are
    bounded by ``wait_seconds``; SQLite's lock still arbitrates, so a process
    that does not take this lock only makes ours wait in busy_timeout again.
    """

    POLL_SECONDS = (0.0001, 0.0002, 0.0005, 0.001)  # then every 1 ms

    def __init__(self, path: str | None, wait_seconds: float):
        self.path = path  # None: no side file (":memory:", or no fcntl)
        self.wait_seconds = wait_seconds
        self.thread_lock = threading.Lock()
        self._fd: int | None = None

    def after_fork(self) -> None:
        """In a child: a fresh thread lock (another thread may have held the
        parent's at fork time) and our own file description."""
        self.thread_lock = threading.Lock()
        if self._fd is not None:
            os.close(self._fd)  # the parent's description (and any lock on it) stays the parent's
            self._fd = None

    def acquire(self) -> None:
        if not self.thread_lock.acquire(timeout=self.wait_seconds):
            raise StoreUnavailable("SQLite: database is locked (other threads of this process kept"
                                   f" writing for {self.wait_seconds:g}s)")
        if self.path is None:
            return
        try:
            self._lock_file()
        except BaseException:
            self.thread_lock.release()
            raise

    def release(self) -> None:
        try:
            if self.path is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()

    # A class-based context manager: cheap on the hot paths, unlike a generator.
    def __enter__(self) -> "_WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def close(self) -> None:
        with self.thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _lock_file(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self.path = None  # a read-only directory: SQLite's busy handler alone, as before
                return
        deadline = time.monotonic() + self.wait_seconds
        for attempt in itertools.count():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable("SQLite: database is locked (another process kept writing"
                                           f" for {self.wait_seconds:g}s)") from None
            time.sleep(self.POLL_SECONDS[min(attempt, len(self.POLL_SECONDS) - 1)])


def _translate(exc: sqlite3.Error) -> StoreError:
    """A driver error as the contract's exception (raise it ``from exc``)."""
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc)
        if "locked" in message or "busy" in message or "unable to open" in message:
            return StoreUnavailable(f"SQLite: {message}")
        return StoreError(f"SQLite: {message}")
    return StoreError(f"SQLite: {exc}")


class _Pooled:
    """``with _Pooled(store) as conn``: a connection from the store's pool for
    one call, given back after it; a sqlite3 error leaves as the contract's
    StoreError/StoreUnavailable. Class-based, like _Immediate and _WriterLock:
    a generator context manager cost ~2 us per use on the hot paths."""

    __slots__ = ("store", "conn")

    def __init__(self, store: "SQLiteStore"):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.conn = self.store._acquire()
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.store._release(self.conn)
        if exc_type is not None and issubclass(exc_type, sqlite3.Error):
            raise _translate(exc) from exc


class _Immediate:
    """``BEGIN IMMEDIATE`` on ``conn`` under the writer lock; COMMIT on
    success, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection, lock: _WriterLock):
        self.conn, self.lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


def path_from_url(url: str) -> str:
    """``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite:/// URL: {url!r}")
    return url[len("sqlite:///"):] or ":memory:"


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
        self._pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        # Held around every write transaction (see _WriterLock).
        side_file = None if path == ":memory:" or fcntl is None else f"{path}-writer.lock"
        self._write_lock = _WriterLock(side_file, self.writer_wait_seconds)
        # Set when the last claim found nothing: the next one reads first.
        self._idle_poll = True

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
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    # Used through _Pooled.
    def _acquire(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._pid != os.getpid():  # forked: never reuse the parent's handles or locks
                self._idle, self._pid = [], os.getpid()
                self._write_lock.after_fork()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # only after a failure we could not roll back
            conn.close()
            return
        with self._pool_lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS and self._pid == os.getpid():
                self._idle.append(conn)
                return
        conn.close()

    def _write(self, sql: str, params: dict[str, Any] | tuple = ()) -> int:
        """One statement in its own (autocommit) transaction."""
        with _Pooled(self) as conn, self._write_lock:
            return conn.execute(sql, params).rowcount

    def _read(self, sql: str, params: dict[str, Any] | tuple = ()) -> list[tuple]:
        with _Pooled(self) as conn:
            return conn.execute(sql, params).fetchall()

    # -- lifecycle ------------------------------------------------------------
    def setup(self) -> None:
        with _Pooled(self) as conn, self._write_lock:
            conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the idle connections (those in use close when returned)."""
        with self._pool_lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()
        if self._pid == os.getpid():
            self._write_lock.close()

    def ping(self) -> None:
        self._read("SELECT 1 FROM queue_jobs LIMIT 1")

    # -- jobs -----------------------------------------------------------------
    def insert(self, job: Job) -> tuple[str, bool]:
        params = (job.id, job.type, json.dumps(job.payload, separators=(",", ":")), str(job.status),
                  job.priority, job.retry_count, job.max_retries, _encoded_delays(tuple(job.retry_delays)),
                  _ts(job.created_at), _ts(job.run_at), job.idempotency_key)
        if job.idempotency_key is None:
            self._write(_INSERT, params)
            return job.id, True
        with _Pooled(self) as conn, _Immediate(conn, self._write_lock):
            if conn.execute(_INSERT + " ON CONFLICT DO NOTHING RETURNING id", params).fetchone() is not None:
                return job.id, True
            row = conn.execute(
                "SELECT id FROM queue_jobs WHERE idempotency_key = ? AND status IN ('pending', 'processing')",
                (job.idempotency_key,)).fetchone()
        if row is None:  # the key's holder is gone and the id itself collided: impossible with uuid4
            raise StoreError("insert conflicted on something other than the idempotency key")
        return row[0], False

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM queue_jobs WHERE id = ?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    @staticmethod
    def _claim_params(worker_id: str, lock_token: str, now: datetime) -> dict[str, Any]:
        return {"token": lock_token, "worker": worker_id, "now": now.timestamp(), "now_iso": iso(now)}

    def _claimed(self, row: tuple | None) -> Job | None:
        self._idle_poll = row is None
        return _row_to_job(row) if row is not None else None

    def claim(self, worker_id: str, lock_token: str, now: datetime) -> Job | None:
        with _Pooled(self) as conn:
            # After a claim that found nothing (an idle poll), a plain read
            # first: with nothing runnable no write lock is taken, so idle
            # pollers never hold up other writers. The read sees the last
            # commit; a job committed after it is found by the next poll, as
            # it would be had the claim run a moment earlier. In a burst the
            # read is skipped (it would cost ~5% of a claim for nothing).
            if self._idle_poll and conn.execute(_IDLE_CHECK, {"now": now.timestamp()}).fetchone() is None:
                return None
            with _Immediate(conn, self._write_lock):
                row = conn.execute(_CLAIM, self._claim_params(worker_id, lock_token, now)).fetchone()
        return self._claimed(row)

    def complete_and_claim(self, job: Job, now: datetime, result: Any, worker_id: str,
                           lock_token: str) -> tuple[bool, Job | None]:
        """Both in one write transaction: a drained job costs one commit, and
        the pages the two share (the row's table page, the processing index's
        edge) are written once."""
        with _Pooled(self) as conn, _Immediate(conn, self._write_lock):
            done = conn.execute(*self._complete_statement(job, now, result)).rowcount == 1
            row = conn.execute(_CLAIM, self._claim_params(worker_id, lock_token, now)).fetchone()
        return done, self._claimed(row)

    @staticmethod
    def _end_statement(job: Job, now: datetime, set_sql: str, outcome: str, error: str | None = None,
                       next_delay: float | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
        """The fenced UPDATE ending ``job``'s attempt: (sql, params)."""
        ended = {"error": error, "nextDelaySeconds": next_delay}
        ended = {key: value for key, value in ended.items() if value is not None}
        sql = _end_sql(set_sql, tuple(ended))
        params = {"id": job.id, "token": job.lock_token, "now": _ts(now), "now_iso": iso(now),
                  "outcome": outcome, **ended, **extra}
        return sql, params

    def _end(self, job: Job, now: datetime, set_sql: str, outcome: str, **kwargs: Any) -> bool:
        return self._write(*self._end_statement(job, now, set_sql, outcome, **kwargs)) == 1

    def heartbeat(self, job: Job, now: datetime, progress: dict[str, Any] | None = None) -> bool:
        if progress is None:
            sql = f"UPDATE queue_jobs SET heartbeat_at = :now WHERE {_FENCE}"
            params = {"now": _ts(now), "id": job.id, "token": job.lock_token}
        else:
            sql = f"UPDATE queue_jobs SET heartbeat_at = :now, progress = :progress WHERE {_FENCE}"
            params = {"now": _ts(now), "id": job.id, "token": job.lock_token,
                      "progress": json.dumps(progress)}
        return self._write(sql, params) == 1

    @classmethod
    def _complete_statement(cls, job: Job, now: datetime, result: Any) -> tuple[str, dict[str, Any]]:
        return cls._end_statement(job, now, "status = 'completed', completed_at = :now, result = :result,"
                                   " lock_token = NULL, error = NULL", "completed",
                                   result="null" if result is None else json.dumps(result, separators=(",", ":")))

    def complete(self, job: Job, now: datetime, result: Any) -> bool:
        return self._write(*self._complete_statement(job, now, result)) == 1

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
                  "outcome": "lost", "error": error}
        end = _end_attempt("error")
        with _Pooled(self) as conn, _Immediate(conn, self._write_lock):
            requeued = conn.execute(
                "UPDATE queue_jobs SET status = 'pending', retry_count = retry_count + 1,"
                f" run_at = :now, lock_token = NULL, error = :error, attempts = {end}"
                " WHERE status = 'processing' AND heartbeat_at < :before"
                " AND retry_count < max_retries", params).rowcount
            failed = conn.execute(
                "UPDATE queue_jobs SET status = 'failed', completed_at = :now, lock_token = NULL,"
                f" error = :error, attempts = {end}"
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
        for status, n in self._read("SELECT status, COUNT(*) FROM queue_jobs GROUP BY status"):
            out[status] = n
        out["total"] = sum(out[s.value] for s in JobStatus)
        row = self._read("SELECT MIN(run_at) FROM queue_jobs WHERE status = 'pending'"
                         " AND run_at <= ?", (_ts(now),))[0]
        out["oldestPendingAt"] = _dt(row[0])
        row = self._read("SELECT MIN(processed_at) FROM queue_jobs WHERE status = 'processing'")[0]
        out["oldestProcessingAt"] = _dt(row[0])
        return out

    def counts_by_type(self) -> TypeCounts:
        # Two full scans (json_each parses every attempts list): ~70 + ~120 ms
        # for 100,000 jobs here; a metrics scrape every 15 s can afford it.
        jobs = self._read("SELECT type, status, COUNT(*) FROM queue_jobs GROUP BY type, status")
        attempts = self._read(
            "SELECT q.type, COALESCE(json_extract(a.value, '$.outcome'), 'running'), COUNT(*)"
            " FROM queue_jobs AS q, json_each(q.attempts) AS a GROUP BY 1, 2")
        return TypeCounts({(t, s): n for t, s, n in jobs}, {(t, o): n for t, o, n in attempts})

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
        sql = f"SELECT {_COLUMNS} FROM queue_jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(int(limit))
        return [_row_to_job(r) for r in self._read(sql, params)]

    def purge(self, completed_before: datetime, finished_before: datetime) -> int:
        # Only jobs created before the later cutoff can have finished before it:
        # the scan walks queue_jobs_newest up to there, not the whole table.
        return self._write(
            "DELETE FROM queue_jobs WHERE created_at < :latest AND completed_at IS NOT NULL AND ("
            "(status = 'completed' AND completed_at < :completed) OR "
            "(status IN ('failed', 'cancelled') AND completed_at < :finished))",
            {"latest": max(_ts(completed_before), _ts(finished_before)),
             "completed": _ts(completed_before), "finished": _ts(finished_before)})

    # -- media ----------------------------------------------------------------
    def put_file(self, name: str, data: bytes, content_type: str, now: datetime) -> None:
        self._write("INSERT OR REPLACE INTO queue_files (name, data, content_type, created_at)"
                    " VALUES (?, ?, ?, ?)", (name, sqlite3.Binary(data), content_type, _ts(now)))

    def get_file(self, name: str) -> StoredFile | None:
        rows = self._read("SELECT name, data, content_type, created_at FROM queue_files WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return StoredFile(r[0], bytes(r[1]), r[2], _dt(r[3]))

    def purge_files(self, created_before: datetime) -> int:
        return self._write("DELETE FROM queue_files WHERE created_at < ?", (_ts(created_before),))
