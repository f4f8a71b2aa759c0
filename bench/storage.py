"""(5b) Bytes stored per typical EMAIL_SEND job, queued and completed.

SQLite: growth of the jobs table and its indexes (dbstat page bytes, and the
bytes of content in those pages) over N jobs, divided by N. MongoDB:
mongomock cannot tell a server's storage size, so this is the BSON size of the
stored document (``len(bson.encode(doc))``); a real server adds index entries
and compresses documents on disk (WiredTiger, snappy).
"""
from __future__ import annotations

import sqlite3
from typing import Any

from marshmallow import Schema, fields, validate

from bench.common import fresh_dir, median

EMAIL_TYPE = "BENCH_EMAIL"
EMAIL = {
    "to": "alice.martin@example.com",
    "subject": "Your order #10423 has shipped",
    "body": ("Hi Alice,\n\nGood news: your order #10423 left our warehouse today and should reach you "
             "within 2-3 working days. You can follow the parcel with tracking number "
             "1Z999AA10123456784 on the carrier's site.\n\nThanks for shopping with us,\nThe Shop team"),
}
RESULT = {"messageId": "<172.10423.8f3a2c@mail.example.com>", "accepted": ["alice.martin@example.com"]}


class EmailShapeSchema(Schema):
    """The EMAIL_SEND payload shape, used while the built-in is not registered."""

    to = fields.Email(required=True)
    subject = fields.String(required=True, validate=validate.Length(min=1, max=998))
    body = fields.String(required=True)
    html = fields.String(load_default=None, allow_none=True)


def _queue(**init_kwargs: Any):
    """(app, queue) with BENCH_EMAIL: the built-in EMAIL_SEND schema when there
    is one (so the stored payload is the real one), a handler that sends nothing."""
    from flask import Flask

    from queue_service import JobQueue

    queue = JobQueue()
    builtin = queue.registry.get("EMAIL_SEND")
    schema = builtin.schema if builtin is not None and builtin.schema is not None else EmailShapeSchema()
    queue.job_type(EMAIL_TYPE, schema=schema)(lambda payload, job: RESULT)
    app = Flask("bench_storage")
    app.config.update(QUEUE_AUTOSTART=False, **init_kwargs.pop("config", {}))
    queue.init_app(app, **init_kwargs)
    return app, queue, "EMAIL_SEND schema" if builtin is not None else "stand-in schema"


def _dbstat(conn: sqlite3.Connection) -> tuple[int, int]:
    """(page bytes, content bytes) of queue_jobs and its indexes."""
    rows = conn.execute(
        "SELECT SUM(pgsize), SUM(payload) FROM dbstat WHERE name = 'queue_jobs' OR name IN"
        " (SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'queue_jobs')").fetchone()
    return rows[0] or 0, rows[1] or 0


def sqlite(count: int) -> dict[str, Any]:
    work = fresh_dir("storage-sqlite")
    db = work / "queue.db"
    app, queue, schema = _queue(config={"QUEUE_DATABASE_URL": f"sqlite:///{db}"})
    state = queue.state()
    state.runtime.store.setup()
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    empty_pages, empty_content = _dbstat(conn)
    empty_file = db.stat().st_size
    for _ in range(count):
        queue.add_job(EMAIL_TYPE, dict(EMAIL))
    queued_pages, queued_content = _dbstat(conn)
    worker = state.runtime.make_worker()
    for _ in range(count + 1):
        if worker.run_once() is None:
            break
    done_pages, done_content = _dbstat(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    file_growth = db.stat().st_size - empty_file
    conn.close()
    return {
        "queued_bytes": (queued_pages - empty_pages) / count,
        "queued_content_bytes": (queued_content - empty_content) / count,
        "completed_bytes": (done_pages - empty_pages) / count,
        "completed_content_bytes": (done_content - empty_content) / count,
        "file_bytes_per_job": file_growth / count,
        "schema": schema, "count": count,
    }


def mongo(count: int) -> dict[str, Any]:
    import bson
    import mongomock

    from queue_service.stores.mongo import MongoStore

    database = mongomock.MongoClient(tz_aware=True)["bench_storage"]
    # The store handed over as such: init_app(mongo=<a Database>) mistakes a
    # Database for a PyMongo (any attribute of a Database is a Collection).
    store = MongoStore(lambda: database, "queue_jobs", completed_ttl_seconds=604800)
    app, queue, schema = _queue(store=store)
    state = queue.state()
    collection = database["queue_jobs"]
    ids = [queue.add_job(EMAIL_TYPE, dict(EMAIL)) for _ in range(count)]
    queued = [len(bson.encode(collection.find_one({"_id": job_id}))) for job_id in ids]
    worker = state.runtime.make_worker()
    for _ in range(count + 1):
        if worker.run_once() is None:
            break
    completed = [len(bson.encode(collection.find_one({"_id": job_id}))) for job_id in ids]
    return {"queued_bytes": median(queued), "completed_bytes": median(completed),
            "schema": schema, "count": count}


def measure(count: int) -> dict[str, Any]:
    import json

    return {"sqlite": sqlite(count), "mongo": mongo(min(count, 200)),
            "payload_json_bytes": len(json.dumps(EMAIL, separators=(",", ":")))}
