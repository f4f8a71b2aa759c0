"""hosting's log routing, in-process (the real gunicorn runs are in test_gunicorn.py)."""
from __future__ import annotations

import contextlib
import io
import logging
from unittest import mock

from queue_service import hosting


@contextlib.contextmanager
def bare_logging():
    """Root with no handlers at INFO, as in a gunicorn worker before the app
    configures anything; everything put back afterwards. Entered inside the
    test body: pytest adds its capture handlers to the root as the body starts."""
    root, queue_log = logging.getLogger(), logging.getLogger("queue_service")
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with mock.patch.object(root, "handlers", []):
            yield root
    finally:
        for handler in list(hosting._routed_handlers):
            queue_log.removeHandler(handler)
        hosting._routed_handlers.clear()
        queue_log.setLevel(logging.NOTSET)
        queue_log.propagate = True
        root.setLevel(level)


def handler() -> logging.StreamHandler:
    return logging.StreamHandler(io.StringIO())


def test_queue_logs_go_to_gunicorns_log_until_the_app_configures_logging():
    with bare_logging():
        gunicorn_log = handler()
        assert hosting.route_logs([gunicorn_log], logging.INFO)
        logging.getLogger("queue_service.worker").info("before the app")
        assert "before the app" in gunicorn_log.stream.getvalue()
        assert hosting.yield_logs_to_host() is False  # the app configured nothing: gunicorn's log stays


def test_an_app_that_configured_logging_before_init_app_gets_the_first_job_logs():
    # No preload: post_fork routes to gunicorn's log, then the worker loads an
    # app that calls basicConfig and then init_app, which starts the threads:
    # jobs can run before post_worker_init, and their records belong to the app.
    with bare_logging() as root:
        gunicorn_log, host_log = handler(), handler()
        assert hosting.route_logs([gunicorn_log], logging.INFO)
        root.addHandler(host_log)
        state = mock.Mock()
        state.start.return_value = True
        assert hosting.start_loaded(state) is True
        state.start.assert_called_once_with()
        logging.getLogger("queue_service.worker").info("first job")
        assert "first job" in host_log.stream.getvalue()
        assert gunicorn_log.stream.getvalue() == ""  # never both


def test_post_fork_leaves_an_already_configured_app_alone():
    with bare_logging() as root:
        root.addHandler(handler())
        assert hosting.route_logs([handler()], logging.INFO) is False
