"""The app gunicorn serves in the HTTP and memory measurements.

    BENCH_QUEUE=1 (default)  the queue mounted (its threads start in post_fork)
    BENCH_QUEUE=0            the same app without queue_service (nor marshmallow)

Routes: ``POST /bench/echo`` parses the JSON body and answers JSON (the
ceiling); ``GET /bench/info`` names the enqueue route. Enqueueing goes through
the REST API's ``POST {prefix}/jobs`` when it exists, else through
``POST /bench/jobs``, a stand-in that checks the bearer token and calls
``queue.add_job`` the way that route does.
"""
from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

from flask import Flask, jsonify, request

import config

app = Flask("bench_app")
app.config.update(config.from_environment())
QUEUE_ON = os.environ.get("BENCH_QUEUE", "1") == "1"
enqueue_path: str | None = None


@app.post("/bench/echo")
def echo():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="expected a JSON object"), 400
    return jsonify(ok=True, type=body.get("type")), 201


if QUEUE_ON:
    from bench import subjects
    from queue_service import JobQueue, StoreError, ValidationError

    queue = JobQueue()

    @queue.job_type(subjects.NOOP_TYPE, schema=subjects.NoopSchema)
    def bench_noop(data, job):
        return None

    state = queue.init_app(app)
    prefix = state.settings.url_prefix
    has_rest_route = any(rule.rule == f"{prefix}/jobs" and "POST" in (rule.methods or ())
                         for rule in app.url_map.iter_rules())
    enqueue_path = f"{prefix}/jobs"
    if not has_rest_route:
        enqueue_path = "/bench/jobs"

        @app.post("/bench/jobs")
        def bench_enqueue():
            token = state.settings.admin_token or ""
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not token or not hmac.compare_digest(given.encode(), token.encode()):
                return jsonify(error="admin token required"), 401
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return jsonify(error="expected a JSON object"), 400
            try:
                job_id = queue.add_job(body.get("type"), body.get("payload"))
            except ValidationError as exc:
                return jsonify(error="invalid job", details=exc.messages), 400
            except StoreError as exc:
                return jsonify(error="store unavailable", details={"store": str(exc)}), 503
            return jsonify(id=job_id, status="pending"), 201


# -- the peers, each behind an equivalent route (BENCH_PEERS=1) -------------------------
# The durable-write ceiling: one plain sqlite3 INSERT per request, in the same
# WAL mode and synchronous setting; Huey's SqliteHuey; RQ on the bench's
# redis-server (BENCH_REDIS_PORT). Each checks the bearer token as ours does.
if os.environ.get("BENCH_PEERS") == "1":
    import json
    import sqlite3
    import threading
    import uuid

    from bench import subjects as peers
    from queue_service.stores.sqlite import queries
    from queue_service.stores.sqlite.connections import WAL_AUTOCHECKPOINT_PAGES

    _local = threading.local()
    _peer_dir = os.environ["BENCH_PEER_DIR"]

    def _authorized() -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = os.environ.get("QUEUE_ADMIN_TOKEN", "")
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def _peer(name: str, make):
        value = getattr(_local, name, None)
        if value is None or getattr(_local, "pid", None) != os.getpid():  # made after fork, per thread
            value = make()
            setattr(_local, name, value)
            _local.pid = os.getpid()
        return value

    def _sqlite_connection() -> sqlite3.Connection:
        return peers.floor_connection(
            Path(_peer_dir) / "ceiling.db", timeout=30,
            schema="CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
                   " payload TEXT NOT NULL, status TEXT NOT NULL, priority INTEGER NOT NULL, run_at REAL NOT NULL)")

    @app.post("/bench/sqlite")
    def sqlite_ceiling():
        if not _authorized():
            return jsonify(error="admin token required"), 401
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object"), 400
        job_id = str(uuid.uuid4())
        _peer("sqlite", _sqlite_connection).execute(peers.FLOOR_INSERT, (job_id, json.dumps(body.get("payload")),
                                                                         time.time()))
        return jsonify(id=job_id, status="pending"), 201

    def _our_schema_connection() -> sqlite3.Connection:
        return peers.floor_connection(Path(_peer_dir) / "ours-bound.db", schema=queries.TABLES + queries.INDEXES,
                                      autocheckpoint_pages=WAL_AUTOCHECKPOINT_PAGES, timeout=30)

    _noop_schema = peers.NoopSchema()

    @app.post("/bench/sqlite-ours")
    def sqlite_our_schema():
        """The durable write on our own table and indexes (five B-trees, our
        pragmas), the payload through the type's schema first, from plain
        sqlite3: the work our route cannot skip, without our code."""
        if not _authorized():
            return jsonify(error="admin token required"), 401
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object"), 400
        job_id = str(uuid.uuid4())
        payload = json.dumps(_noop_schema.dump(_noop_schema.load(body.get("payload"))))
        now = time.time()
        _peer("ours_bound", _our_schema_connection).execute(
            queries.INSERT, (job_id, peers.NOOP_TYPE, payload, "pending", 0, 0, 3, "[10,60]", now, now, None,
                             "default", None, None, "fingerprint"))
        return jsonify(id=job_id, status="pending"), 201

    @app.post("/bench/huey")
    def huey_route():
        if not _authorized():
            return jsonify(error="admin token required"), 401
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object"), 400
        _, task = _peer("huey", lambda: peers.huey_instance(Path(_peer_dir) / "huey.db", True))
        result = task(body.get("payload", {}).get("n", 0), "hello")
        return jsonify(id=result.id, status="pending"), 201

    @app.post("/bench/huey-stamp")
    def huey_stamp_route():  # the latency measurement: the task records when it ran
        if not _authorized():
            return jsonify(error="admin token required"), 401
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object"), 400
        huey, _ = _peer("huey", lambda: peers.huey_instance(Path(_peer_dir) / "huey.db", True))
        result = peers.huey_stamp_task(huey)(body.get("payload", {}).get("n", 0), "hello")
        return jsonify(id=result.id, status="pending"), 201

    if os.environ.get("BENCH_REDIS_PORT"):
        def _rq_queue():
            from redis import Redis
            from rq import Queue
            return Queue("bench", connection=Redis(host="127.0.0.1", port=int(os.environ["BENCH_REDIS_PORT"])))

        def _rq_enqueue(func):
            if not _authorized():
                return jsonify(error="admin token required"), 401
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return jsonify(error="expected a JSON object"), 400
            job = _peer("rq", _rq_queue).enqueue(func, body.get("payload", {}).get("n", 0), "hello")
            return jsonify(id=job.id, status="pending"), 201

        @app.post("/bench/rq")
        def rq_route():
            return _rq_enqueue(peers.noop)

        @app.post("/bench/rq-stamp")
        def rq_stamp_route():  # the latency measurement: the job records when it ran
            return _rq_enqueue(peers.stamp)


@app.get("/bench/info")
def info():
    return jsonify(queue=QUEUE_ON, enqueue_path=enqueue_path, pid=os.getpid())
