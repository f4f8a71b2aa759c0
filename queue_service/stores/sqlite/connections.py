"""SQLite connections: the pool, the writer lock, immediate transactions.

Connections are opened lazily in the process that uses them (never before a
fork) and kept in a small pool rather than one per thread: werkzeug's dev
server and gthread workers start a thread per request, and thread-local
connections would pile up unclosed. A connection is used by one thread at a
time and goes back to the pool after each call.

Writers take a writer lock (a thread lock, then ``flock`` on a side file)
around each write transaction, so threads and processes on one host queue for
SQLite's write lock instead of sleeping in its busy handler (see WriterLock);
SQLite's own locking still decides. Every class here is a class-based context
manager: on the hot paths a generator context manager cost ~2 us per use.
"""
from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from ...core.errors import StoreError, StoreRefusesWrites, StoreUnavailable

MAX_IDLE_CONNECTIONS = 4
# The commit that takes the WAL past this many pages copies them back into the
# database file and syncs it, inline. SQLite's default is 1,000 (4 MB): with
# five B-trees written per enqueue, one enqueue in ~200 paid for a checkpoint,
# and each checkpoint rewrote the same hot right-edge pages again. At 4,000
# (16 MB of WAL at most, then reused) a checkpoint copies one version of
# pages written many times: add_job 249 -> 220 us mean, 250 -> 172 us median
# (100-call batches, default and 4,000 interleaved in one process). The WAL
# file keeps its largest size until the last connection closes.
WAL_AUTOCHECKPOINT_PAGES = 4000


class WriterLock:
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
    def __enter__(self) -> "WriterLock":
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


def translate(exc: sqlite3.Error) -> StoreError:
    """A driver error as the contract's exception (raise it ``from exc``)."""
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc)
        if "readonly database" in message or "disk is full" in message:
            return StoreRefusesWrites(f"SQLite: {message}")
        if "locked" in message or "busy" in message or "unable to open" in message:
            return StoreUnavailable(f"SQLite: {message}")
        return StoreError(f"SQLite: {message}")
    return StoreError(f"SQLite: {exc}")


class Pooled:
    """``with Pooled(connections) as conn``: a connection from the pool for
    one call, given back after it; a sqlite3 error leaves as the contract's
    StoreError/StoreUnavailable. Class-based, like Immediate and WriterLock:
    a generator context manager cost ~2 us per use on the hot paths."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: "Connections"):
        self.pool = pool

    def __enter__(self) -> sqlite3.Connection:
        self.conn = self.pool.acquire()
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, sqlite3.Error):
            self.pool.failed(self.conn, exc)
            raise translate(exc) from exc
        self.pool.release(self.conn)


class Immediate:
    """``BEGIN IMMEDIATE`` on ``conn`` under the writer lock; COMMIT on
    success, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection, lock: WriterLock):
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


class Connections:
    """The pool of one store's database file, and its writer lock."""

    def __init__(self, path: str, synchronous: str, busy_timeout_seconds: float, writer_wait_seconds: float):
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_seconds = busy_timeout_seconds
        self._pid = os.getpid()
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Set when a write failed on a read-only file; ping then tries a write.
        side_file = None if path == ":memory:" or fcntl is None else f"{path}-writer.lock"
        self.writer = WriterLock(side_file, writer_wait_seconds)

    def open(self) -> sqlite3.Connection:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                # Created 0600 (payloads hold addresses); SQLite gives its -wal
                # and -shm files the database file's permissions. O_EXCL: an
                # existing file is never opened here, because closing any
                # descriptor of the file drops every POSIX lock this process holds
                # on it, SQLite's included ("How To Corrupt An SQLite Database
                # File", 2.2). Another process's last-looking connection then
                # checkpointed and reset the WAL under our live ones: two workers
                # ran the same job, and outside readers saw "malformed".
                try:
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass
            except OSError as exc:  # NotADirectoryError, PermissionError, read-only filesystem...
                raise StoreUnavailable(f"cannot open SQLite database {self.path}: "
                                       f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        try:
            conn = sqlite3.connect(self.path, isolation_level=None,
                                   timeout=self.busy_timeout_seconds, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    def acquire(self) -> sqlite3.Connection:
        """Used through Pooled."""
        with self._lock:
            if self._pid != os.getpid():  # forked: never reuse the parent's handles or locks
                self._idle, self._pid = [], os.getpid()
                self.writer.after_fork()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.open()
        return conn

    def failed(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> None:
        """After a driver error: a connection that hit "attempt to write a
        readonly database" (or an I/O error) is closed, not pooled. SQLite
        opens a file it cannot write read-only and keeps it so for the life
        of the connection, so a pooled one would fail forever after the file
        became writable again."""
        message = str(exc)
        if "readonly" in message or "disk I/O" in message:
            try:
                conn.close()
            except sqlite3.Error:
                pass
            return
        self.release(conn)

    def release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # only after a failure we could not roll back
            conn.close()
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS and self._pid == os.getpid():
                self._idle.append(conn)
                return
        conn.close()

    def write(self, sql: str, params: dict[str, Any] | tuple = ()) -> int:
        """One statement in its own (autocommit) transaction; its rowcount."""
        with Pooled(self) as conn, self.writer:
            return conn.execute(sql, params).rowcount

    def read(self, sql: str, params: dict[str, Any] | tuple = ()) -> list[tuple]:
        with Pooled(self) as conn:
            return conn.execute(sql, params).fetchall()

    def probe_write(self, probe: str) -> None:
        """A write that changes nothing, in a transaction: raises what a real
        write would (BEGIN IMMEDIATE succeeds on a read-only file; a write does not)."""
        with Pooled(self) as conn, Immediate(conn, self.writer):
            conn.execute(probe)

    def script(self, sql: str) -> None:
        with Pooled(self) as conn, self.writer:
            conn.executescript(sql)

    def close(self) -> None:
        """Close the idle connections (those in use close when returned)."""
        with self._lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()
        if self._pid == os.getpid():
            self.writer.close()
