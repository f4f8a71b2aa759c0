"""(3b) The request path in-process: what ``POST {prefix}/jobs`` costs above
the work it does (an echo route's request handling + ``add_job``).

Flask's test client drives the app in this process, so the figures hold no
network, no gunicorn and no worker thread: the route's own overhead (reading
and guarding the body, the envelope, the answer) is what is left after
subtracting the echo route and ``add_job`` measured in the same process.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from bench import subjects
from bench.common import fresh_dir, median

TOKEN = "bench-token"


def _per_call_us(call: Callable[[int], Any], count: int) -> float:
    for i in range(200):
        call(-1 - i)
    rounds = []
    for _ in range(5):  # the median of five batches: steadier than one long run on a shared machine
        started = time.perf_counter()
        for i in range(count // 5):
            call(i)
        rounds.append((time.perf_counter() - started) / (count // 5) * 1e6)
    return median(rounds)


def queue_service(count: int) -> dict[str, Any]:
    from flask import jsonify, request

    work = fresh_dir("route")
    app, queue = subjects.queue_app(work / "queue.db", QUEUE_ADMIN_TOKEN=TOKEN)

    @app.post("/bench/echo")
    def echo():
        body = request.get_json(silent=True)
        return jsonify(ok=True, type=body.get("type")), 201

    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = [json.dumps({"type": subjects.NOOP_TYPE, "payload": subjects.payload(i)}).encode()
              for i in range(256)]

    def post(path: str) -> Callable[[int], Any]:
        def call(i: int) -> None:
            response = client.post(path, data=bodies[i % 256], headers=headers)
            assert response.status_code == 201, response.get_data(as_text=True)
        return call

    with app.app_context():
        queue.state().runtime.store
        add_job = _per_call_us(lambda i: queue.add_job(subjects.NOOP_TYPE, subjects.payload(i)), count)
    echo_us = _per_call_us(post("/bench/echo"), count)
    route_us = _per_call_us(post("/api/queue/jobs"), count)
    return {"echo_us": echo_us, "add_job_us": add_job, "route_us": route_us,
            "overhead_us": route_us - echo_us - add_job, "count": count}


SYSTEMS = {"queue_service": queue_service}
