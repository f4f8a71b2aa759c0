"""(1) Enqueue latency through each system's Python API: p50/p99 of N calls.

Each function runs in its own fresh child process (see bench.child).
"""
from __future__ import annotations

import time
from typing import Any

from bench import subjects
from bench.common import fresh_dir, latencies_us, redis_server


def queue_service(count: int) -> dict[str, Any]:
    work = fresh_dir("enqueue-qs")
    app, queue = subjects.queue_app(work / "queue.db")
    with app.app_context():
        queue.state().runtime.store  # open the file and create the schema before timing
        return latencies_us(lambda i: queue.add_job(subjects.NOOP_TYPE, subjects.payload(i)), count)


def huey(count: int, same_sync: bool = True) -> dict[str, Any]:
    work = fresh_dir("enqueue-huey")
    _, task = subjects.huey_instance(work / "huey.db", same_sync)
    return latencies_us(lambda i: task(i, "hello"), count)


def huey_defaults(count: int) -> dict[str, Any]:
    return huey(count, same_sync=False)


def rq(count: int) -> dict[str, Any]:
    work = fresh_dir("enqueue-rq")
    with redis_server(work) as port:
        _, queue = subjects.rq_queue(port)
        return latencies_us(lambda i: queue.enqueue(subjects.noop, i, "hello"), count)


def floor(count: int) -> dict[str, Any]:
    work = fresh_dir("enqueue-floor")
    conn = subjects.floor_connection(work / "floor.db")
    return latencies_us(lambda i: subjects.floor_insert(conn, i, time.time()), count)


def floor_validated(count: int) -> dict[str, Any]:
    """The floor plus what any validating queue must do first: the payload
    through the same marshmallow schema (load, dump) before the INSERT."""
    work = fresh_dir("enqueue-floor-validated")
    conn = subjects.floor_connection(work / "floor.db")
    schema = subjects.NoopSchema()

    def call(i: int) -> None:
        subjects.floor_insert(conn, i, time.time(), schema.dump(schema.load(subjects.payload(i))))
    return latencies_us(call, count)


def floor_our_schema(count: int) -> dict[str, Any]:
    """floor_validated on our own table and indexes (five B-trees: the table,
    the unique id, the two pending indexes and the listing one) with our
    pragmas, from plain sqlite3: what the schema costs, apart from our Python."""
    from queue_service.stores.sqlite import queries
    from queue_service.stores.sqlite.connections import WAL_AUTOCHECKPOINT_PAGES

    work = fresh_dir("enqueue-floor-ours")
    conn = subjects.floor_connection(work / "floor.db", schema=queries.TABLES + queries.INDEXES,
                                     autocheckpoint_pages=WAL_AUTOCHECKPOINT_PAGES)
    schema = subjects.NoopSchema()

    def call(i: int) -> None:
        now = time.time()
        conn.execute(queries.INSERT, (subjects.new_id(), subjects.NOOP_TYPE, subjects.validated_json(schema, i),
                                      "pending", 0, 0, 3, "[10,60]", now, now, None, "default", None, None,
                                      "fingerprint"))
    return latencies_us(call, count)


BATCH = 100  # jobs per bulk call


def _per_job(batches: dict[str, Any]) -> dict[str, Any]:
    """Latencies of whole batches as per-job figures."""
    return {**batches, "p50_us": batches["p50_us"] / BATCH, "p99_us": batches["p99_us"] / BATCH,
            "mean_us": batches["mean_us"] / BATCH, "batch": BATCH}


def queue_service_bulk(count: int) -> dict[str, Any]:
    """``queue.add_jobs`` of BATCH jobs (one transaction each), per job."""
    work = fresh_dir("enqueue-qs-bulk")
    app, queue = subjects.queue_app(work / "queue.db")
    with app.app_context():
        queue.state().runtime.store

        def call(i: int) -> None:
            queue.add_jobs([{"type": subjects.NOOP_TYPE, "payload": subjects.payload(i * BATCH + n)}
                            for n in range(BATCH)])
        return _per_job(latencies_us(call, max(1, count // BATCH), warmup=3))


def floor_bulk_validated(count: int) -> dict[str, Any]:
    """The bound of a validated bulk enqueue with uuid4 ids: the floor's table
    (a unique index on the random id, one pending index), BATCH rows by one
    executemany in one transaction, each payload through the schema first."""
    work = fresh_dir("enqueue-floor-bulk")
    conn = subjects.floor_connection(work / "floor.db")
    schema = subjects.NoopSchema()

    def call(i: int) -> None:
        now = time.time()
        rows = [(subjects.new_id(), subjects.validated_json(schema, i * BATCH + n), now) for n in range(BATCH)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(subjects.FLOOR_INSERT, rows)
        conn.execute("COMMIT")
    return _per_job(latencies_us(call, max(1, count // BATCH), warmup=3))


def rq_bulk(count: int) -> dict[str, Any]:
    """RQ's ``enqueue_many`` of BATCH jobs (one pipeline), per job."""
    from rq import Queue

    work = fresh_dir("enqueue-rq-bulk")
    with redis_server(work) as port:
        _, queue = subjects.rq_queue(port)

        def call(i: int) -> None:
            queue.enqueue_many([Queue.prepare_data(subjects.noop, (i * BATCH + n, "hello")) for n in range(BATCH)])
        return _per_job(latencies_us(call, max(1, count // BATCH), warmup=3))


SYSTEMS = {"queue_service": queue_service, "huey": huey, "huey_defaults": huey_defaults, "rq": rq,
           "floor": floor, "floor_validated": floor_validated, "floor_our_schema": floor_our_schema,
           "queue_service_bulk": queue_service_bulk, "floor_bulk_validated": floor_bulk_validated, "rq_bulk": rq_bulk}
