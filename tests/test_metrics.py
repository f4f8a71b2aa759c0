"""``GET {prefix}/metrics``: parsed with prometheus-client's own parser, the
numbers checked against the store, on SQLite and MongoDB."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from flask import Flask
from marshmallow import Schema, fields
from prometheus_client.parser import text_string_to_metric_families

from queue_service import JobQueue, PermanentJobError
from queue_service.core.jobs import new_lock_token
from queue_service.stores.sqlite import SQLiteStore

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STUCK_AFTER = 120


class WorkSchema(Schema):
    mode = fields.String(load_default="ok")


def make_queue(clock, gate: threading.Event | None = None) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("EMAIL", schema=WorkSchema, max_retries=2)
    def email(payload, job):
        if payload["mode"] == "flaky":
            raise RuntimeError("temporary")
        if payload["mode"] == "broken":
            raise PermanentJobError("bad address")
        return {"sent": True}

    @queue.job_type("RESIZE", schema=WorkSchema)
    def resize(payload, job):
        if payload["mode"] == "wait" and gate is not None:
            assert gate.wait(10), "the test never opened the gate"
        return {"ok": True}

    return queue


def scrape(client, headers=AUTH, accept=None) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}"""
    response = client.get("/api/queue/metrics", headers={**headers, **({"Accept": accept} if accept else {})})
    assert response.status_code == 200, response.get_data(as_text=True)
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics, name: str, **labels) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


@pytest.fixture
def env(make_app, clock):
    app, queue = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False,
                          QUEUE_STUCK_AFTER=STUCK_AFTER, QUEUE_HEARTBEAT_INTERVAL=10)
    with app.app_context():
        yield app, queue, app.test_client()


def seed(app, queue, clock) -> dict[str, str]:
    state = app.extensions["queue_service"]
    worker = state.runtime.make_worker()
    ids = {}
    ids["ok"] = queue.add_job("EMAIL", {})
    worker.run_once()                                     # completed, 1 attempt
    ids["broken"] = queue.add_job("EMAIL", {"mode": "broken"})
    worker.run_once()                                     # failed at once
    ids["flaky"] = queue.add_job("EMAIL", {"mode": "flaky"})
    worker.run_once()                                     # retry scheduled: 1 attempt, outcome retry
    clock.advance(1)
    worker.run_once()                                     # second attempt, retry again
    ids["cancelled"] = queue.add_job("RESIZE", {})
    queue.cancel(ids["cancelled"])
    ids["stuck"] = queue.add_job("RESIZE", {}, priority=9)
    state.runtime.store.claim("gone:1:abc", new_lock_token(), clock.now())   # its worker vanished
    clock.advance(STUCK_AFTER + 1)
    ids["waiting"] = queue.add_job("RESIZE", {}, delay=3600)
    clock.advance(5)
    ids["due"] = queue.add_job("RESIZE", {})
    clock.advance(7)
    return ids


def store_truth(store) -> tuple[Counter, Counter]:
    jobs, attempts = Counter(), Counter()
    for job in store.list_jobs(limit=1000):
        jobs[(job.type, str(job.status))] += 1
        for attempt in job.attempts:
            attempts[(job.type, attempt.get("outcome") or "running")] += 1
    return jobs, attempts


def test_counts_match_the_store(env, clock, app_store, store_kind):
    app, queue, client = env
    seed(app, queue, clock)
    metrics = scrape(client)
    stats = queue.get_queue_stats()

    assert value(metrics, "queue_store_up") == 1
    for status in ("pending", "processing", "completed", "failed", "cancelled"):
        assert value(metrics, "queue_jobs", status=status) == stats[status]
    assert (stats["pending"], stats["processing"], stats["completed"], stats["failed"]) == (3, 1, 1, 1)

    jobs, attempts = store_truth(app_store)
    for job_type in ("EMAIL", "RESIZE"):
        for status in ("pending", "processing", "completed", "failed", "cancelled"):
            assert value(metrics, "queue_jobs_by_type", type=job_type, status=status) == jobs[(job_type, status)]
        for outcome in ("completed", "retry", "failed", "lost", "released", "running"):
            assert value(metrics, "queue_job_attempts", type=job_type, outcome=outcome) == attempts[(job_type, outcome)]
    assert value(metrics, "queue_job_attempts", type="EMAIL", outcome="retry") == 2
    assert value(metrics, "queue_job_attempt_errors", type="EMAIL") == 3   # two retries and one failure
    assert value(metrics, "queue_job_attempts", type="RESIZE", outcome="running") == 1

    assert int(value(metrics, "queue_oldest_pending_age_seconds")) == stats["oldestPendingAge"] > 0
    assert int(value(metrics, "queue_oldest_processing_age_seconds")) == stats["oldestProcessingAge"] == STUCK_AFTER + 13
    assert value(metrics, "queue_stuck_jobs") == 1
    assert value(metrics, "queue_stuck_after_seconds") == STUCK_AFTER
    for name, row in stats["queues"].items():  # every job here is in "default"
        for status in ("pending", "processing", "completed", "failed", "cancelled"):
            assert value(metrics, "queue_jobs_by_queue", queue=name, status=status) == row[status]
        assert int(value(metrics, "queue_queue_oldest_pending_age_seconds", queue=name)) == row["oldestPendingAge"]
    assert set(stats["queues"]) == {"default"}

    queue.cleanup_stuck_jobs()
    clock.advance(10)  # per-type counts may be up to 10 s old (the MongoDB store caches them)
    after = scrape(client)
    assert value(after, "queue_stuck_jobs") == 0
    assert value(after, "queue_jobs", status="processing") == 0
    assert value(after, "queue_job_attempts", type="RESIZE", outcome="lost") == 1


def test_empty_store_reports_zeros_for_every_registered_type(env):
    app, queue, client = env
    metrics = scrape(client)
    assert all(v == 0 for v in metrics["queue_jobs"].values()) and len(metrics["queue_jobs"]) == 5
    assert len(metrics["queue_jobs_by_type"]) == 2 * 5  # EMAIL and RESIZE, every status, all 0
    assert value(metrics, "queue_oldest_pending_age_seconds") == 0
    assert value(metrics, "queue_oldest_processing_age_seconds") == 0
    assert value(metrics, "queue_stuck_jobs") == 0


def test_admin_check_and_the_public_switch(make_app, clock):
    app, _ = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = client.get("/api/queue/metrics", headers=headers)
        assert response.status_code == 401 and response.is_json and "error" in response.get_json()
    assert client.get("/api/queue/metrics", headers=AUTH).status_code == 200


def test_public_metrics_need_no_token(make_app, clock):
    app, _ = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False,
                      QUEUE_METRICS_PUBLIC="true")
    response = app.test_client().get("/api/queue/metrics")
    assert response.status_code == 200 and "queue_jobs" in response.get_data(as_text=True)


def test_no_token_configured_is_403_outside_development(make_app, clock):
    app, _ = make_app(make_queue(clock), QUEUE_DEVELOPMENT=False)
    response = app.test_client().get("/api/queue/metrics")
    assert response.status_code == 403 and response.is_json


def test_host_admin_hook_applies(make_app, clock):
    queue = make_queue(clock)

    @queue.admin_check
    def is_admin(request) -> bool:
        return request.headers.get("X-Operator") == "yes"

    app, _ = make_app(queue, QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    client = app.test_client()
    assert client.get("/api/queue/metrics", headers={"X-Operator": "yes"}).status_code == 200
    assert client.get("/api/queue/metrics", headers=AUTH).status_code == 401


def test_exposition_formats(env):
    app, queue, client = env
    response = client.get("/api/queue/metrics", headers=AUTH)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    openmetrics = client.get("/api/queue/metrics", headers={**AUTH, "Accept": "application/openmetrics-text"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).rstrip().endswith("# EOF")


def test_every_process_reports_the_same_totals(tmp_path, clock):
    """Two apps on one SQLite file stand for two gunicorn workers: each has its
    own store connection, and both scrape the same numbers."""
    path = str(tmp_path / "shared.db")
    clients = []
    queues = []
    for name in ("worker_a", "worker_b"):
        app = Flask(name)
        app.config.update(TESTING=True, QUEUE_AUTOSTART=False, QUEUE_ADMIN_TOKEN=TOKEN)
        queue = make_queue(clock)
        queue.init_app(app, store=SQLiteStore(path))
        clients.append(app.test_client())
        queues.append((app, queue))
    app_a, queue_a = queues[0]
    with app_a.app_context():
        for _ in range(3):
            queue_a.add_job("EMAIL", {})
        app_a.extensions["queue_service"].runtime.make_worker().run_once()
    first, second = (scrape(client) for client in clients)
    for name in ("queue_jobs", "queue_jobs_by_type", "queue_job_attempts", "queue_stuck_jobs"):
        assert first[name] == second[name]
    assert value(first, "queue_jobs", status="pending") == 2
    for app, _ in queues:
        app.extensions["queue_service"].runtime.store.close()


def test_this_process_worker_state(env):
    app, queue, client = env
    state = app.extensions["queue_service"]
    idle = scrape(client)
    assert value(idle, "queue_worker_running") == 0 and value(idle, "queue_worker_busy") == 0
    assert "queue_scheduler_last_tick_age_seconds" not in idle

    gate = threading.Event()
    # A handler that holds the worker until the test lets go.
    queue.registry.get("RESIZE").handler = lambda payload, job: gate.wait(10) and {"ok": True}
    state.runtime.start()
    try:
        job_id = queue.add_job("RESIZE", {})
        deadline = time.monotonic() + 10
        while state.runtime.worker.current is None and time.monotonic() < deadline:
            gate.wait(0.01)  # bounded: the worker thread claims the job
        busy = scrape(client)
        assert value(busy, "queue_worker_running") == 1 and value(busy, "queue_worker_busy") == 1
        info = [labels for labels in busy["queue_worker_info"]]
        assert dict(info[0])["worker_id"] == state.runtime.worker.worker_id
        gate.set()
        while queue.get_job(job_id).status.value != "completed" and time.monotonic() < deadline:
            time.sleep(0.01)
        done = scrape(client)
        assert value(done, "queue_worker_jobs_processed_total") >= 1
        assert value(done, "queue_worker_busy") == 0
    finally:
        gate.set()
        state.runtime.shutdown(5)


def test_store_down_still_answers(clock):
    pymongo = pytest.importorskip("pymongo")
    from queue_service.stores.mongo import MongoStore

    client = pymongo.MongoClient("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=200,
                                 connectTimeoutMS=200, tz_aware=True)
    try:
        app = Flask("down")
        app.config.update(TESTING=True, QUEUE_AUTOSTART=False, QUEUE_ADMIN_TOKEN=TOKEN)
        make_queue(clock).init_app(app, store=MongoStore(lambda: client["queue_down"], "queue_jobs", 0))
        metrics = scrape(app.test_client())
        assert value(metrics, "queue_store_up") == 0
        assert "queue_jobs" not in metrics and "queue_worker_running" in metrics
    finally:
        client.close()


def test_listing_pages_without_gaps_on_equal_timestamps(store, clock):
    queue = make_queue(clock)
    app = Flask("scan")
    app.config.update(TESTING=True, QUEUE_AUTOSTART=False)
    queue.init_app(app, store=store)
    with app.app_context():
        ids = []
        for _ in range(7):
            ids.append(queue.add_job("EMAIL", {}))
            clock.advance(0)  # equal timestamps: the id breaks the tie
    seen, cursor = [], None
    while True:  # pages of 2 along the listing cursor, as the dashboard pages
        page = store.list_jobs(limit=2, before=cursor)
        seen += [job.id for job in page]
        if len(page) < 2:
            break
        cursor = (page[-1].created_at, page[-1].id)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 7
