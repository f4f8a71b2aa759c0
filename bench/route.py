"""(3b) The request path in-process: what ``POST {prefix}/jobs`` costs above
the work it does (an echo route's request handling + ``add_job``).

Flask's test client drives the app in this process, so the figures hold no
network, no gunicorn and no worker thread: the route's own overhead (reading
and guarding the body, the envelope, the answer) is what is left after
subtracting its bound, measured in the same rounds two ways: the echo route
and ``add_job`` timed apart, and one route doing the echo's work and
``add_job`` in one request. The second is the bound the target reads:
``add_job`` inside a request costs more than in a loop of its own (timed
inside that route too, and printed), so the sum of the two measured apart
understates what any route calling it pays.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from bench import subjects
from bench.common import fresh_dir, median

TOKEN = "bench-token"


WARMUP = 200  # untimed calls of each measure first
ROUNDS = 15  # batches of each measure, interleaved: a slow moment of the shared machine hits all three


def _interleaved_us(calls: dict[str, Callable[[int], Any]], count: int) -> dict[str, float]:
    """Per-call µs of each call, measured in ROUNDS rounds of one batch each
    (in turn, so the database grows and the machine's load varies for all of
    them alike); the median over rounds of each, and of the overhead."""
    for call in calls.values():
        for i in range(WARMUP):
            call(-1 - i)
    batch = max(count // ROUNDS, 1)
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(ROUNDS):
        for name, call in calls.items():
            started = time.perf_counter()
            for i in range(r * batch, (r + 1) * batch):
                call(i)
            rounds[name].append((time.perf_counter() - started) / batch * 1e6)
    out = {name: median(values) for name, values in rounds.items()}
    out["overhead_us"] = median([rounds["route"][k] - rounds["echo"][k] - rounds["add_job"][k]
                                 for k in range(ROUNDS)])
    out["one_route_overhead_us"] = median([rounds["route"][k] - rounds["echo_add_job"][k] for k in range(ROUNDS)])
    return out


def queue_service(count: int) -> dict[str, Any]:
    from flask import jsonify, request

    work = fresh_dir("route")
    app, queue = subjects.queue_app(work / "queue.db", QUEUE_ADMIN_TOKEN=TOKEN)

    @app.post("/bench/echo")
    def echo():
        body = request.get_json(silent=True)
        return jsonify(ok=True, type=body.get("type")), 201

    in_request: list[float] = []  # add_job's own time inside the one-route bound

    @app.post("/bench/echo-add-job")
    def echo_add_job():
        """The bound in one request: the echo route's work plus add_job."""
        body = request.get_json(silent=True)
        started = time.perf_counter()
        job_id = queue.add_job(body["type"], body["payload"])
        in_request.append(time.perf_counter() - started)
        return jsonify(id=job_id, status="pending"), 201

    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = [json.dumps({"type": subjects.NOOP_TYPE, "payload": subjects.payload(i)}).encode()
              for i in range(256)]

    def post(path: str) -> Callable[[int], Any]:
        def call(i: int) -> None:
            response = client.post(path, data=bodies[i % 256], headers=headers)
            assert response.status_code == 201, response.get_data(as_text=True)
        return call

    def add_job(i: int) -> None:
        queue.add_job(subjects.NOOP_TYPE, subjects.payload(i))

    # add_job runs inside one app context kept for the whole run: the echo route's
    # figure already holds the context a request pushes, so it is not counted twice.
    with app.app_context():
        queue.state().runtime.store  # the file and its schema, before timing
        got = _interleaved_us({"echo": post("/bench/echo"), "add_job": add_job, "route": post("/api/queue/jobs"),
                               "echo_add_job": post("/bench/echo-add-job")}, count)
    # The median add_job timed inside those requests: what add_job costs between
    # request handling (caches the loop measured apart keeps warm are cold here).
    add_job_in_request = median(in_request[WARMUP:]) * 1e6
    return {"echo_us": got["echo"], "add_job_us": got["add_job"], "route_us": got["route"],
            "add_job_in_request_us": add_job_in_request,
            "echo_add_job_us": got["echo_add_job"], "overhead_us": got["overhead_us"],
            "one_route_overhead_us": got["one_route_overhead_us"], "count": count}


SYSTEMS = {"queue_service": queue_service}
