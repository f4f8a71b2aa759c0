"""SQLite connections: the pool, waiting for SQLite's write lock, immediate
transactions, the WAL's size.

Connections are opened lazily in the process that uses them (never before a
fork) and kept in a small pool rather than one per thread: werkzeug's dev
server and gthread workers start a thread per request, and thread-local
connections would pile up unclosed. A connection is used by one thread at a
time and goes back to the pool after each call.

SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries,
so a writer that collided a few times sleeps long after the lock is free. Our
connections have no busy handler: a statement that SQLite refuses with
SQLITE_BUSY is tried again here at least every millisecond (``execute_polled``),
up to the store's busy timeout. One statement in autocommit (an insert without
a key, a heartbeat, a completion) goes straight to SQLite that way. A write
transaction (``Immediate``: claims, keyed and bulk inserts) also takes the
writer lock first (a thread lock, then ``flock`` on a side file), because it
holds SQLite's lock across Python code; the threads and processes waiting for
it sleep on that lock instead of polling. Every class here is a class-based
context manager: on the hot paths a generator context manager cost ~2 us per
use.
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
# database file and syncs it, inline (a PASSIVE checkpoint: it holds no lock
# that writers wait for, ours included). SQLite's default is 1,000 (4 MB): with
# five B-trees written per enqueue, one enqueue in ~200 paid for a checkpoint,
# and each checkpoint rewrote the same hot right-edge pages again. At 4,000
# (16 MB of WAL at most, then reused) a checkpoint copies one version of
# pages written many times: add_job 249 -> 220 us mean, 250 -> 172 us median
# (100-call batches, default and 4,000 interleaved in one process). The WAL
# file keeps its largest size until the last connection closes.
WAL_AUTOCHECKPOINT_PAGES = 4000
# A PASSIVE checkpoint that races new commits never lets the WAL start over
# (under a saturating load from two processes it grew to 145 MB in 12 s), so a
# commit that leaves the file longer than WAL_BACKSTOP_BYTES runs a FULL one:
# it waits for the write lock, holds it while it copies the frames left, and
# the next write starts the WAL over. After that restart SQLite truncates the
# file to WAL_LIMIT_BYTES (journal_size_limit), so the file's size is the
# frames written since the last restart: a stat tells, made after every
# WAL_CHECK_COMMITS-th commit of a process (a stat is ~1.6 us, ~1% of a job's
# store calls; the file may pass the backstop by that many commits' frames).
# (In pages of 4,096 bytes, SQLite's default; another page size only scales them.)
WAL_LIMIT_BYTES = WAL_AUTOCHECKPOINT_PAGES * 4096
WAL_BACKSTOP_BYTES = 2 * WAL_LIMIT_BYTES
WAL_CHECK_COMMITS = 8
# How often a refused statement is tried again: at first quickly (a commit
# takes tens of microseconds), then every millisecond.
POLL_SECONDS = (0.0001, 0.0002, 0.0005, 0.001)


def execute_polled(conn: sqlite3.Connection, sql: str, params: dict[str, Any] | tuple,
                   wait_seconds: float) -> sqlite3.Cursor:
    """``conn.execute(sql, params)``, tried again while SQLite answers
    SQLITE_BUSY ("database is locked"), for at most ``wait_seconds``. Only for
    a statement that changes nothing when refused that way: ``BEGIN
    IMMEDIATE``, a read, or one statement in autocommit (SQLite refuses it
    before it writes, and rolls it back as a whole)."""
    deadline, attempt = None, 0
    while True:
        try:
            return conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait_seconds
            if now >= deadline:
                raise
        time.sleep(POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)])
        attempt += 1


class WriterLock:
    """Serialises this store's write transactions across the threads and the
    processes of one host, ahead of SQLite's own lock.

    A transaction holds SQLite's write lock across Python code (a claim reads,
    then writes), so the others wait here rather than polling SQLite: a thread
    on a thread lock (woken at release), then on ``flock`` of a side file
    ``<db>-writer.lock``, tried at least every millisecond. Both waits are
    bounded by ``wait_seconds``. SQLite's lock still arbitrates: single
    statements, and processes that do not take this lock, only make ours wait
    in ``execute_polled``.
    """

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
            time.sleep(POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)])


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
    """``BEGIN IMMEDIATE`` on ``conn`` (of ``pool``) under the writer lock;
    COMMIT on success, ROLLBACK on any exception."""

    __slots__ = ("conn", "pool")

    def __init__(self, conn: sqlite3.Connection, pool: "Connections"):
        self.conn, self.pool = conn, pool

    def __enter__(self) -> sqlite3.Connection:
        lock = self.pool.writer
        lock.acquire()
        try:
            execute_polled(self.conn, "BEGIN IMMEDIATE", (), self.pool.busy_timeout_seconds)
        except BaseException:
            lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.pool.writer.release()
        if exc_type is None:
            self.pool.committed(self.conn)


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
        on_disk = path != ":memory:" and not path.startswith("file:")
        side_file = f"{path}-writer.lock" if on_disk and fcntl is not None else None
        self.writer = WriterLock(side_file, writer_wait_seconds)
        self._wal_path = f"{path}-wal" if on_disk else None
        self._commits = 0  # since this pool was made: every WAL_CHECK_COMMITS-th looks at the WAL

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
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            conn.execute("PRAGMA busy_timeout=0")  # execute_polled waits instead
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
        with Pooled(self) as conn:
            rowcount = execute_polled(conn, sql, params, self.busy_timeout_seconds).rowcount
            self.committed(conn)
            return rowcount

    def read(self, sql: str, params: dict[str, Any] | tuple = ()) -> list[tuple]:
        with Pooled(self) as conn:
            return execute_polled(conn, sql, params, self.busy_timeout_seconds).fetchall()

    def probe_write(self, probe: str) -> None:
        """A write that changes nothing, in a transaction: raises what a real
        write would (BEGIN IMMEDIATE succeeds on a read-only file; a write does not)."""
        with Pooled(self) as conn, Immediate(conn, self):
            conn.execute(probe)

    def script(self, sql: str) -> None:
        """Statements that may all run again (CREATE ... IF NOT EXISTS): the
        whole script is tried again while SQLite refuses one of them."""
        with Pooled(self) as conn, self.writer:
            deadline = time.monotonic() + self.busy_timeout_seconds
            while True:
                try:
                    conn.executescript(sql)
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(POLL_SECONDS[-1])

    def committed(self, conn: sqlite3.Connection) -> None:
        """After a commit on ``conn``: every WAL_CHECK_COMMITS-th time, a FULL
        checkpoint if the WAL is past WAL_BACKSTOP_BYTES (see there), waiting
        for the write lock in SQLite's busy handler (rare; a later check tries
        again if it times out). The count is not locked: a lost increment
        only moves the next check by one commit."""
        if self._wal_path is None:
            return
        self._commits += 1
        if self._commits % WAL_CHECK_COMMITS:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size <= WAL_BACKSTOP_BYTES:
            return
        # The caller's write is committed: a checkpoint that fails is not its
        # error (the next commit past the backstop tries again).
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_seconds * 1000)}")
            try:
                conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            finally:
                conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error:
            pass

    def close(self) -> None:
        """Close the idle connections (those in use close when returned)."""
        with self._lock:
            conns, self._idle = self._idle, []
        for conn in conns:
            conn.close()
        if self._pid == os.getpid():
            self.writer.close()
