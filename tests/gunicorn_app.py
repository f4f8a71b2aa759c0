"""The host app the real-process tests run (tests/test_gunicorn.py):

    gunicorn -c gunicorn.conf.py -w 2 tests.gunicorn_app:app
    flask --app tests.gunicorn_app queue worker

Configured from the environment (every QUEUE_* variable, e.g. a temp
QUEUE_DATABASE_URL and sub-second QUEUE_STUCK_AFTER / QUEUE_HEARTBEAT_INTERVAL),
so the test that starts the process controls it. Job types:

- ``SLEEP {seconds}``: sleeps, reporting progress (a heartbeat) every 0.1 s;
  stops early when its claim was taken over. Returns the pid that ran it.
- ``NOOP {n?}``: returns at once, with the pid that ran it.

``GET /census`` answers this process's pid and its live threads (name, native
id), so a test can count queue threads per gunicorn worker; ``?hold=S``
keeps the request S seconds (at most 2), so concurrent requests spread over
the workers. With TEST_APP_LOG_FILE set, the app configures logging itself
(``logging.basicConfig`` to that file), as many host apps do. With
TEST_APP_ENQUEUE_AT_IMPORT set, it adds a NOOP job while it is created (so
under --preload the gunicorn master opens the store before forking). With
TEST_APP_PERIODIC_EVERY=S, a schedule "every-S" enqueues NOOP {n: 0} every S
seconds (tests/test_periodic_gunicorn.py).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from flask import Flask, jsonify, request
from marshmallow import Schema, fields, validate

from queue_service import JobQueue

PROGRESS_EVERY_SECONDS = 0.1
MAX_HOLD_SECONDS = 2.0


class SleepSchema(Schema):
    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=600))


class NoopSchema(Schema):
    n = fields.Integer(load_default=None, strict=True)


def register_job_types(queue: JobQueue) -> None:
    """The test job types; the test process registers them too, to enqueue."""

    @queue.job_type("SLEEP", schema=SleepSchema)
    def sleep(payload: dict[str, Any], job: Any) -> dict[str, Any]:
        deadline = time.monotonic() + payload["seconds"]
        while (left := deadline - time.monotonic()) > 0:
            if not job.progress(pid=os.getpid(), left=round(left, 2)):
                return {"pid": os.getpid(), "claimLost": True}  # fenced anyway: stop working
            time.sleep(min(PROGRESS_EVERY_SECONDS, left))
        return {"pid": os.getpid(), "slept": payload["seconds"]}

    @queue.job_type("NOOP", schema=NoopSchema)
    def noop(payload: dict[str, Any], job: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "n": payload["n"]}


def thread_census() -> dict[str, Any]:
    threads = [{"name": t.name, "nativeId": t.native_id, "daemon": t.daemon}
               for t in threading.enumerate() if t.is_alive()]
    return {"pid": os.getpid(), "ppid": os.getppid(), "threads": threads}


def create_app() -> Flask:
    if os.environ.get("TEST_APP_LOG_FILE"):  # a host app that configures logging itself
        logging.basicConfig(filename=os.environ["TEST_APP_LOG_FILE"], level=logging.INFO,
                            format="%(process)d %(name)s %(message)s")
    app = Flask(__name__)
    app.config.update({key: value for key, value in os.environ.items() if key.startswith("QUEUE_")})
    queue = JobQueue(builtins=False)
    register_job_types(queue)
    if os.environ.get("TEST_APP_PERIODIC_EVERY"):
        every = float(os.environ["TEST_APP_PERIODIC_EVERY"])
        queue.periodic("NOOP", {"n": 0}, every=every, name=f"every-{every:g}")
    queue.init_app(app)
    if os.environ.get("TEST_APP_ENQUEUE_AT_IMPORT"):  # the store is used in the master under --preload
        with app.app_context():
            queue.add_job("NOOP", {"n": -1})

    @app.get("/census")
    def census():
        hold = min(MAX_HOLD_SECONDS, max(0.0, request.args.get("hold", 0.0, type=float)))
        if hold:
            time.sleep(hold)
        return jsonify(thread_census())

    return app


app = create_app()
