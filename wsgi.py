"""A small demo host app with the queue mounted.

    python wsgi.py                           # development server on SQLite
    gunicorn -c gunicorn.conf.py wsgi:app    # what the Procfile runs
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from flask import Flask, jsonify, request
from marshmallow import Schema, fields, validate

import config
from queue_service import JobQueue, ValidationError
from queue_service.handlers.image import items_hook

queue = JobQueue()

if os.environ.get("MONGO_URI"):
    # On MongoDB the demo keeps an ``items`` collection pointed at each item's
    # processed images (the hook runs in the worker, inside the app context).
    queue.on_complete("IMAGE_PROCESS")(items_hook(lambda: queue.state().runtime.store.db))


class ReportSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    rows = fields.Integer(load_default=10, strict=True, validate=validate.Range(min=1, max=10_000))


@queue.job_type("DEMO_REPORT", schema=ReportSchema, max_retries=2)
def build_report(payload, job):
    """An app's own job type: it shows the registration API in five lines."""
    total = sum(range(payload["rows"]))
    return {"name": payload["name"], "rows": payload["rows"], "sum": total}


def create_app(config_name: str | None = None, **overrides) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    name = config_name or os.environ.get("APP_ENV", "production")
    app.config.from_object(config.CONFIGS[name])
    app.config.update(config.from_environment())
    app.config.update(overrides)
    queue.init_app(app)

    @app.get("/")
    def index():
        prefix = app.config.get("QUEUE_URL_PREFIX", "/api/queue")
        return jsonify(app="queue_service demo", queue=prefix, health=f"{prefix}/health",
                       dashboard=f"{prefix}/dashboard", enqueue="POST /reports {name, rows}")

    @app.post("/reports")
    def enqueue_report():
        body = request.get_json(silent=True)
        try:
            job_id = queue.add_job("DEMO_REPORT", body if isinstance(body, dict) else {})
        except ValidationError as exc:
            return jsonify(error="invalid report request", details=exc.messages), 400
        return jsonify(id=job_id, status=queue.get_job_status(job_id)["status"]), 202

    return app


app = create_app()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # SIGTERM ends the server like Ctrl-C does, so the queue's atexit shutdown
    # hands an unfinished job back to pending.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dev = create_app("development")
    queue.start(app=dev)
    dev.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), use_reloader=False)
