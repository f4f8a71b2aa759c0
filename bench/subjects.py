"""The systems under test, built the same way for every measurement.

- queue_service: a JobQueue on a Flask app (autostart off) on an SQLite file,
  with a trivial job type and a small marshmallow schema.
- Huey: SqliteHuey, WAL, with synchronous=NORMAL like ours (Huey's own
  switch only offers OFF or the library default, FULL on Debian), and as
  shipped (its defaults) for reference.
- RQ: a Queue on the redis-server the bench started.
- The floor: plain sqlite3 on a minimal jobs table (unique id, partial index
  on pending jobs), WAL, synchronous NORMAL, one statement per transaction.
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from marshmallow import Schema, fields, validate

NOOP_TYPE = "BENCH_NOOP"
SYNCHRONOUS = "NORMAL"


def payload(i: int) -> dict[str, Any]:
    return {"n": i, "note": "hello"}


def noop(n: int = 0, note: str = "") -> None:
    """The no-op job body for RQ (imported by path) and Huey."""
    return None


def stamp(n: int = 0, note: str = "") -> float:
    """The latency measurement's job body (RQ, Huey): when it ran, as the
    result (time.time(), the clock the load generator stamps sends with)."""
    import time

    return time.time()


class NoopSchema(Schema):
    n = fields.Integer(required=True, strict=True)
    note = fields.String(load_default="", validate=validate.Length(max=200))


# -- queue_service ---------------------------------------------------------------
def queue_app(db_path: Path, **config: Any):
    """(app, queue) with the bench job type registered; the threads are off.
    Without the built-in job types: the queue's machinery alone is measured."""
    from flask import Flask

    from queue_service import JobQueue

    app = Flask("bench_queue")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_DATABASE_URL=f"sqlite:///{db_path}",
                      QUEUE_SQLITE_SYNCHRONOUS=SYNCHRONOUS, **config)
    queue = JobQueue(builtins=False)

    @queue.job_type(NOOP_TYPE, schema=NoopSchema)
    def bench_noop(data, job):
        return None

    queue.init_app(app)
    return app, queue


# -- Huey --------------------------------------------------------------------------
def huey_instance(db_path: Path, same_sync: bool = True):
    """SqliteHuey at our synchronous setting, or (``same_sync=False``) with
    Huey's defaults as shipped."""
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class NormalSyncStorage(SqliteStorage):
        def _create_connection(self):
            conn = super()._create_connection()
            conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            return conn

    storage = NormalSyncStorage if same_sync else SqliteStorage
    huey = SqliteHuey("bench", filename=str(db_path), storage_class=storage)
    task = huey.task(name="noop")(noop)
    huey.bench_stamp = huey.task(name="stamp")(stamp)
    return huey, task


def huey_stamp_task(huey):
    """The ``stamp`` task huey_instance registered (the latency route and the
    consumer find it by that name)."""
    return huey.bench_stamp


# -- RQ ------------------------------------------------------------------------------
def rq_queue(port: int):
    from redis import Redis
    from rq import Queue

    conn = Redis(host="127.0.0.1", port=port)
    conn.flushall()
    return conn, Queue("bench", connection=conn)


# -- the floor -------------------------------------------------------------------------
FLOOR_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at REAL NOT NULL
);
CREATE INDEX jobs_pending ON jobs (priority DESC, run_at, seq) WHERE status = 'pending';
"""
FLOOR_INSERT = "INSERT INTO jobs (id, payload, status, priority, run_at) VALUES (?, ?, 'pending', 0, ?)"


def floor_connection(db_path: Path, schema: str = FLOOR_SCHEMA, autocheckpoint_pages: int | None = None,
                     timeout: float = 5.0) -> sqlite3.Connection:
    """Plain sqlite3 in WAL at our synchronous setting, on ``schema`` (the
    floor's by default); ``autocheckpoint_pages``: SQLite's default if None;
    ``timeout``: its busy timeout (sqlite3's default 5 s)."""
    conn = sqlite3.connect(str(db_path), isolation_level=None, timeout=timeout)  # autocommit: one txn per statement
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    if autocheckpoint_pages is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
    conn.executescript(schema)
    return conn


def new_id() -> str:
    return str(uuid.uuid4())


def validated_json(schema: Any, i: int) -> str:
    """Bench payload ``i`` through ``schema`` (load, then dump) as JSON text:
    what a validating queue does before its INSERT."""
    return json.dumps(schema.dump(schema.load(payload(i))))


def floor_insert(conn: sqlite3.Connection, i: int, now: float, data: dict[str, Any] | None = None) -> None:
    conn.execute(FLOOR_INSERT, (new_id(), json.dumps(payload(i) if data is None else data), now))
