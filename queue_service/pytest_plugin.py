"""pytest fixtures for testing your own job types.

Enable them in your ``conftest.py``::

    pytest_plugins = ["queue_service.pytest_plugin"]

then::

    from myapp.jobs import queue

    def test_report(make_queue_app):
        app = make_queue_app(queue)                     # threads off, SQLite in tmp_path
        job_id = queue.add_job("REPORT", {"day": "2024-01-15"})
        assert queue.run_pending() == 1                 # inside the app's context
        assert queue.get_job_status(job_id)["status"] == "completed"

This module imports pytest; ``queue_service.testing`` (what it is built on)
does not.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from flask import Flask

from .testing import make_test_app, test_config
from .web.extension import JobQueue


@pytest.fixture
def queue_config(tmp_path) -> dict[str, Any]:
    """``testing.test_config(tmp_path)``: for your own app factory."""
    return test_config(tmp_path)


@pytest.fixture
def make_queue_app(tmp_path) -> Iterator[Callable[..., Flask]]:
    """``make_queue_app(queue=None, **config)``: ``testing.make_test_app`` in
    ``tmp_path``, with the app's context pushed until the test ends (so
    ``queue.add_job(...)`` needs no ``app=``)."""
    contexts = []

    def make(queue: JobQueue | None = None, **config: Any) -> Flask:
        folder = tmp_path / f"queue-app-{len(contexts)}"  # one SQLite file per app
        folder.mkdir(exist_ok=True)
        app = make_test_app(queue, folder, **config)
        context = app.app_context()
        context.push()
        contexts.append(context)
        return app

    yield make
    for context in reversed(contexts):
        context.pop()
