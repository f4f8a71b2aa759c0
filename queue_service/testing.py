"""Helpers for testing your own job types (no pytest needed to import this).

``make_test_app(queue, tmp_path)`` builds a Flask app with ``queue`` mounted
on a temporary SQLite file and the queue's threads off, so the test decides
when jobs run::

    from queue_service.testing import make_test_app
    from myapp.jobs import queue          # your JobQueue, with your job types

    def test_thumbnail(tmp_path):
        app = make_test_app(queue, tmp_path)
        job_id = queue.add_job("THUMBNAIL", {"photoId": 7}, app=app)
        assert queue.run_pending(app) == 1
        assert queue.get_job_status(job_id, app=app)["status"] == "completed"

    def test_thumbnail_eagerly(tmp_path):
        app = make_test_app(queue, tmp_path, QUEUE_EAGER=True)
        job_id = queue.add_job("THUMBNAIL", {"photoId": 7}, app=app)  # ran already
        assert queue.get_job_status(job_id, app=app)["status"] == "completed"

``test_config(tmp_path)`` is the same configuration as a dict, for an app
factory of your own (``create_app(test_config(tmp_path))``). With pytest,
``pytest_plugins = ["queue_service.pytest_plugin"]`` adds fixtures built on
these (see that module).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

from flask import Flask

from .web.extension import JobQueue

#: The admin token of apps made here (admin routes answer it in tests).
TEST_ADMIN_TOKEN = "test-admin-token"


def test_config(tmp_path: Any = None, **config: Any) -> dict[str, Any]:
    """Configuration for a test app: SQLite file ``queue.db`` in ``tmp_path``
    (a new temporary folder when None), threads off, TESTING, an admin
    token; ``config`` adds or overrides keys (``QUEUE_EAGER=True``, ...)."""
    folder = str(tmp_path) if tmp_path is not None else tempfile.mkdtemp(prefix="queue-test-")
    out: dict[str, Any] = {
        "TESTING": True,
        "QUEUE_DATABASE_URL": "sqlite:///" + os.path.join(folder, "queue.db"),
        "QUEUE_AUTOSTART": False,
        "QUEUE_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
    }
    out.update(config)
    if out.get("QUEUE_EAGER") and out.get("QUEUE_AUTOSTART") is False:
        del out["QUEUE_AUTOSTART"]  # eager mode turns the threads off itself
    return out


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest's collector


def make_test_app(queue: JobQueue | None = None, tmp_path: Any = None, *, import_name: str = "queue_test_app",
                  **config: Any) -> Flask:
    """A Flask app with ``queue`` (a new ``JobQueue()`` when None) mounted on
    a temporary SQLite file, its threads off (``test_config``). One JobQueue
    serves several apps, so your module-level queue can be mounted in a new
    app per test; pass ``app=`` to its calls, or work inside
    ``with app.app_context():``."""
    app = Flask(import_name)
    app.config.update(test_config(tmp_path, **config))
    (queue if queue is not None else JobQueue()).init_app(app)
    return app
