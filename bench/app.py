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


@app.get("/bench/info")
def info():
    return jsonify(queue=QUEUE_ON, enqueue_path=enqueue_path, pid=os.getpid())
