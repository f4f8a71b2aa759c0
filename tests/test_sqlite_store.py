"""SQLite-only mechanisms behind the contract: the idle claim's read-only
check, waiting for the write lock (polled; the writer lock for transactions),
the WAL's backstop, the attempts' stored form and the listing
index. (The contract itself is tests/test_store_contract.py; its make_job and
conftest's clock serve here too.)"""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from test_store_contract import make_job

from queue_service.core.errors import StoreError, StoreUnavailable
from queue_service.core.jobs import new_lock_token
from queue_service.stores.sqlite import SQLiteStore, connections


def open_store(tmp_path, **kwargs) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "queue.db"), **kwargs)
    store.setup()
    return store


@pytest.fixture
def writer(tmp_path):
    """A second connection, as another process would have, that can hold the write lock."""
    conn = sqlite3.connect(str(tmp_path / "queue.db"), isolation_level=None)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


# -- idle claims take no write lock ----------------------------------------------
def test_idle_claim_returns_none_while_another_connection_writes(tmp_path, clock, writer):
    # busy_timeout 0: any attempt to take the write lock would fail at once.
    store = open_store(tmp_path, busy_timeout_seconds=0)
    store.insert(make_job(clock, delay=60))  # pending but not runnable yet
    writer.execute("BEGIN IMMEDIATE")
    assert store.claim("w", new_lock_token(), clock.now()) is None
    assert store.claim("w", new_lock_token(), clock.now()) is None
    writer.execute("ROLLBACK")
    clock.advance(60)
    assert store.claim("w", new_lock_token(), clock.now()) is not None


def test_claim_of_a_runnable_job_still_takes_the_write_lock(tmp_path, clock, writer):
    store = open_store(tmp_path, busy_timeout_seconds=0)
    job = make_job(clock)
    store.insert(job)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable):
        store.claim("w", new_lock_token(), clock.now())
    writer.execute("ROLLBACK")
    assert store.claim("w", new_lock_token(), clock.now()).id == job.id


def test_idle_check_returns_after_a_burst_ends(tmp_path, clock, writer):
    store = open_store(tmp_path, busy_timeout_seconds=0)
    store.insert(make_job(clock))
    assert store.claim("w", new_lock_token(), clock.now()) is not None
    assert store.claim("w", new_lock_token(), clock.now()) is None  # the burst's last claim
    writer.execute("BEGIN IMMEDIATE")
    assert store.claim("w", new_lock_token(), clock.now()) is None  # idle: no write lock
    writer.execute("ROLLBACK")


# -- waiting for the write lock: polled, and the writer lock for transactions -------
def test_sqlites_busy_handler_is_off_and_concurrent_writers_all_succeed(tmp_path, clock):
    """Inserts (single statements) and claims (transactions) from four threads
    at once: every refused statement is tried again by the store, none fails."""
    store = open_store(tmp_path, busy_timeout_seconds=30)
    assert store._db.read("PRAGMA busy_timeout") == [(0,)]  # the waiting is ours, not SQLite's sleeps
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def enqueue():
        start.wait()
        try:
            for _ in range(150):
                store.insert(make_job(clock))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def drain():
        start.wait()
        try:
            for _ in range(300):
                job = store.claim("w", new_lock_token(), clock.now())
                if job is not None:
                    assert store.complete(job, clock.now(), None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (enqueue, enqueue, drain, drain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    counts = store.counts(clock.now())
    assert counts["total"] == 300 and counts["processing"] == 0


class _Clockwork:
    """Stands in for the ``time`` module of ``connections``: each sleep of the
    poll is recorded, and the n-th one runs ``then`` (another connection
    ending its transaction)."""

    def __init__(self, n: int, then):
        self.sleeps: list[float] = []
        self.n, self.then = n, then
        self.monotonic = time.monotonic

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) == self.n:
            self.then()


@pytest.mark.parametrize("operation", ["insert", "claim"])
def test_a_refused_write_is_tried_again_until_the_other_writer_is_done(tmp_path, clock, writer, monkeypatch,
                                                                       operation):
    store = open_store(tmp_path, busy_timeout_seconds=30)
    job = make_job(clock)
    store.insert(job)
    writer.execute("BEGIN IMMEDIATE")  # another process writing
    clockwork = _Clockwork(5, lambda: writer.execute("ROLLBACK"))
    monkeypatch.setattr(connections, "time", clockwork)
    if operation == "insert":
        store.insert(make_job(clock))
        assert store.counts(clock.now())["pending"] == 2
    else:
        assert store.claim("w", new_lock_token(), clock.now()).id == job.id
    assert clockwork.sleeps == [0.0001, 0.0002, 0.0005, 0.001, 0.001]  # quick, then every millisecond


def test_a_refused_write_gives_up_after_the_busy_timeout(tmp_path, clock, writer):
    store = open_store(tmp_path, busy_timeout_seconds=0.05)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="locked"):
        store.insert(make_job(clock))
    writer.execute("ROLLBACK")
    assert store.counts(clock.now())["total"] == 0


def test_processes_take_turns_at_the_side_file_lock_for_transactions(tmp_path, clock):
    """Another process's store holding the writer lock (a second open file
    description of the side file stands in for it) makes our transactions
    wait, boundedly, before SQLite is even asked."""
    import fcntl
    import os

    store = open_store(tmp_path, writer_wait_seconds=0.05)
    store.insert(make_job(clock))
    other = os.open(str(tmp_path / "queue.db") + "-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailable, match="another process"):
            store.claim("w", new_lock_token(), clock.now())
        assert not store._db.writer.thread_lock.locked()
        fcntl.flock(other, fcntl.LOCK_UN)
        assert store.claim("w", new_lock_token(), clock.now()) is not None
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the transaction: free at once
    finally:
        os.close(other)


def test_writer_lock_wait_is_bounded_and_single_statements_do_not_wait_for_it(tmp_path, clock):
    store = open_store(tmp_path, writer_wait_seconds=0.05)
    store.insert(make_job(clock))
    store._db.writer.thread_lock.acquire()  # another thread of this process in a long transaction
    try:
        with pytest.raises(StoreUnavailable, match="other threads"):
            store.insert(make_job(clock, key="k"))  # a keyed insert is a transaction
        with pytest.raises(StoreUnavailable, match="other threads"):
            store.claim("w", new_lock_token(), clock.now())
        store.insert(make_job(clock))  # one statement: SQLite's lock alone decides
    finally:
        store._db.writer.thread_lock.release()
    assert store.claim("w", new_lock_token(), clock.now()) is not None
    assert store.counts(clock.now())["total"] == 2


def test_a_forked_child_does_not_inherit_a_held_writer_lock(tmp_path, clock):
    store = open_store(tmp_path, writer_wait_seconds=0.05)
    store.insert(make_job(clock))
    store._db.writer.acquire()  # held by a parent thread at fork time
    store._db._pid = -1  # as seen from the child: another process made this pool
    assert store.claim("w", new_lock_token(), clock.now()) is not None


# -- the WAL's backstop ----------------------------------------------------------------
def _wal_sizes(tmp_path, clock, name: str, writes: int) -> list[int]:
    store = SQLiteStore(str(tmp_path / name))
    store.setup()
    sizes = []
    for i in range(writes):
        store.insert(make_job(clock, payload={"blob": "x" * 3000, "i": i}))
        sizes.append((tmp_path / f"{name}-wal").stat().st_size)
    assert store.counts(clock.now())["pending"] == writes
    store.close()
    return sizes


def test_a_wal_past_the_backstop_is_checkpointed_and_starts_over(tmp_path, clock, monkeypatch):
    """SQLite's own (PASSIVE) checkpoint never fires here: 4,000 pages is far
    off. The store's backstop, made small, keeps the file near its limit; the
    same writes without it leave a WAL many times longer."""
    monkeypatch.setattr(connections, "WAL_LIMIT_BYTES", 16 * 4096)
    monkeypatch.setattr(connections, "WAL_BACKSTOP_BYTES", 32 * 4096)
    sizes = _wal_sizes(tmp_path, clock, "backstop.db", 400)
    one_write = max(later - earlier for earlier, later in zip(sizes, sizes[1:]))  # its frames, page splits too
    assert one_write < connections.WAL_LIMIT_BYTES
    # Looked at every WAL_CHECK_COMMITS-th commit: past it by that many writes at most.
    assert max(sizes) <= connections.WAL_BACKSTOP_BYTES + connections.WAL_CHECK_COMMITS * one_write
    assert sizes.count(connections.WAL_LIMIT_BYTES) >= 20  # truncated to the limit after each restart

    monkeypatch.setattr(connections, "WAL_BACKSTOP_BYTES", 1 << 40)  # no backstop
    assert _wal_sizes(tmp_path, clock, "none.db", 400)[-1] > 10 * 32 * 4096


# -- stored forms ------------------------------------------------------------------
def stored_attempts(store: SQLiteStore, job_id: str) -> list[dict]:
    (text,), = store._db.read("SELECT attempts FROM queue_jobs WHERE id = ?", (job_id,))
    return json.loads(text)


def test_attempts_are_stored_without_null_keys(tmp_path, clock):
    store = open_store(tmp_path)
    store.insert(make_job(clock))
    job = store.claim("w", new_lock_token(), clock.now())
    assert store.retry_later(job, clock.now(), "boom", clock.now())
    job = store.claim("w", new_lock_token(), clock.now())
    assert store.complete(job, clock.now(), {"ok": 1})
    retried, completed = stored_attempts(store, job.id)
    assert set(retried) == {"startedAt", "worker", "endedAt", "outcome", "error", "nextDelaySeconds", "waitSeconds"}
    assert set(completed) == {"startedAt", "worker", "endedAt", "outcome", "waitSeconds"}


# -- listing -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"before": True}])
def test_newest_first_listing_reads_the_index_instead_of_sorting(tmp_path, clock, monkeypatch, kwargs):
    store = open_store(tmp_path)
    jobs = []
    for _ in range(3):
        jobs.append(make_job(clock))
        store.insert(jobs[-1])
        clock.advance(1)
    seen: list[tuple] = []
    read = store._db.read
    monkeypatch.setattr(store._db, "read", lambda sql, params=(): seen.append((sql, params)) or read(sql, params))
    before = (jobs[-1].created_at, jobs[-1].id) if kwargs else None
    listed = store.list_jobs(limit=2, before=before)
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)][1 if before else 0:][:2]
    (sql, params), = seen
    plan = " | ".join(row[3] for row in read("EXPLAIN QUERY PLAN " + sql, params))
    assert "queue_jobs_newest" in plan and "TEMP B-TREE" not in plan, plan


def test_payload_is_stored_as_compact_json(tmp_path, clock):
    store = open_store(tmp_path)
    job = make_job(clock)
    store.insert(job)
    (text,), = store._db.read("SELECT payload FROM queue_jobs WHERE id = ?", (job.id,))
    assert text == '{"n":1}'
    assert store.get(job.id).payload == {"n": 1}


# -- the drain path ------------------------------------------------------------------
def test_complete_and_claim_is_one_write_transaction(tmp_path, clock, monkeypatch):
    store = open_store(tmp_path)
    for _ in range(2):
        store.insert(make_job(clock))
    job = store.claim("w", new_lock_token(), clock.now())
    statements: list[str] = []
    conn = store._db.acquire()
    conn.set_trace_callback(statements.append)
    store._db.release(conn)
    completed, following = store.complete_and_claim(job, clock.now(), None, "w", new_lock_token())
    assert completed and following is not None
    assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "UPDATE", "COMMIT"]


def test_purge_scans_up_to_the_cutoff_by_creation_time(tmp_path, clock, monkeypatch):
    store = open_store(tmp_path)
    seen: list[tuple] = []
    write = store._db.write
    monkeypatch.setattr(store._db, "write", lambda sql, params=(): seen.append((sql, params)) or write(sql, params))
    store.purge(clock.now(), clock.now())
    (sql, params), = seen
    plan = " | ".join(row[3] for row in store._db.read("EXPLAIN QUERY PLAN " + sql, params))
    assert "queue_jobs_newest (created_at<?)" in plan, plan


def test_a_driver_error_leaves_as_a_store_error_and_the_pool_stays_usable(tmp_path, clock):
    store = open_store(tmp_path)
    with pytest.raises(StoreError) as caught:
        store._db.read("SELECT no_such_column FROM queue_jobs")
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert not isinstance(caught.value, StoreUnavailable)  # a bad statement, not a busy file
    with pytest.raises(StoreError):
        store._db.write("INSERT INTO queue_jobs (id) VALUES ('x')")  # NOT NULL columns missing
    job = make_job(clock)
    store.insert(job)  # the same pooled connections serve on
    assert store.claim("w", new_lock_token(), clock.now()).id == job.id


# -- named queues -----------------------------------------------------------------------
def test_a_claim_from_some_queues_walks_the_queue_index(tmp_path, clock):
    from queue_service.stores.sqlite import queries

    store = open_store(tmp_path)
    sql = queries.CLAIM_FROM_QUEUES.split("WHERE seq = (", 1)[1].rsplit(")", 1)[0]
    params = {"now": clock.now().timestamp(), "queues": '["images", "default"]'}
    plan = " | ".join(row[3] for row in store._db.read("EXPLAIN QUERY PLAN " + sql, params))
    assert "queue_jobs_pending_by_queue" in plan, plan


def test_a_file_made_before_queues_existed_gets_the_column_and_its_jobs_are_default(tmp_path, clock):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE queue_jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0, max_retries INTEGER NOT NULL, retry_delays TEXT NOT NULL,
        created_at REAL NOT NULL, run_at REAL NOT NULL, processed_at REAL, completed_at REAL,
        heartbeat_at REAL, worker_id TEXT, lock_token TEXT, error TEXT, result TEXT, progress TEXT,
        attempts TEXT NOT NULL DEFAULT '[]', idempotency_key TEXT);
        INSERT INTO queue_jobs (id, type, payload, status, priority, max_retries, retry_delays, created_at,
        run_at) VALUES ('old-1', 'T', '{}', 'pending', 0, 3, '[1]', 1.0, 1.0);""")
    conn.close()
    store = SQLiteStore(str(path))
    store.setup()
    store.setup()  # a second start (another process) finds the column there
    assert store.get("old-1").queue == "default"
    assert store.claim("w", new_lock_token(), clock.now(), ("default",)).id == "old-1"


# -- a file made before periodic jobs -----------------------------------------------
def test_a_file_without_the_schedule_columns_gains_them_at_setup(tmp_path, clock):
    store = open_store(tmp_path)
    old = make_job(clock)
    store.insert(old)
    store.close()
    conn = sqlite3.connect(str(tmp_path / "queue.db"), isolation_level=None)
    conn.execute("ALTER TABLE queue_jobs DROP COLUMN slot")
    conn.execute("ALTER TABLE queue_jobs DROP COLUMN scheduled_by")
    conn.execute("DROP TABLE queue_schedules")
    conn.close()

    reopened = open_store(tmp_path)
    open_store(tmp_path).close()  # a second process's setup finds them there
    got = reopened.get(old.id)
    assert got.id == old.id and (got.scheduled_by, got.slot) == (None, None)
    from test_store_contract import slot_job

    slot = clock.now()
    assert reopened.enqueue_slot("s", slot, slot_job(clock, "s", slot), clock.now())
    assert reopened.schedule_states()["s"].last_slot == slot
    reopened.close()


def test_opening_another_connection_keeps_this_process_locks(tmp_path, clock):
    """Closing any descriptor of the database file drops every POSIX lock the
    process holds on it, SQLite's too. The pool once opened the file itself
    before each new connection: another process's connection then looked like
    the last one, checkpointed and deleted the WAL under ours (two gunicorn
    workers ran the same job). Here: a second connection in this process, then
    another process connects and disconnects; the WAL must still be there and
    a row written after it must be seen from outside."""
    import subprocess
    import sys

    store = open_store(tmp_path)
    path = str(tmp_path / "queue.db")
    store.insert(make_job(clock))
    held = store._db.acquire()  # one connection kept open, as the pool keeps them
    try:
        held.execute("SELECT count(*) FROM queue_jobs").fetchall()
        second = store._db.open()  # the pool growing: a new connection in this process
        second.close()
        outside = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                   " print(c.execute('SELECT count(*) FROM queue_jobs').fetchone()[0]); c.close()")
        subprocess.run([sys.executable, "-c", outside, path], check=True, timeout=60, capture_output=True)
        assert (tmp_path / "queue.db-wal").exists()
        store.insert(make_job(clock))
        seen = subprocess.run([sys.executable, "-c", outside, path], check=True, timeout=60,
                              capture_output=True, text=True).stdout.strip()
        assert seen == "2"
    finally:
        store._db.release(held)
        store.close()
