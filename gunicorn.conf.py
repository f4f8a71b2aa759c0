"""gunicorn settings for queue_service hosts (the Procfile's web process).

post_fork arms each worker process; the queue's worker and scheduler threads
start there (never in the master), once per worker, with or without
--preload. worker_exit stops them gracefully within QUEUE_SHUTDOWN_TIMEOUT,
which must stay below graceful_timeout.
"""
import logging
import os

from queue_service import hosting

_port = os.environ.get("PORT")
bind = f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000"  # Heroku/Render hand out PORT
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG")  # off unless asked for
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


def post_fork(server, worker):
    queue_log = logging.getLogger("queue_service")
    if not queue_log.handlers:  # queue logs go where gunicorn's error log goes
        for handler in server.log.error_log.handlers:
            queue_log.addHandler(handler)
        queue_log.setLevel(server.log.error_log.level)
        queue_log.propagate = False
    started = hosting.on_post_fork()
    if started:
        server.log.info("queue_service: started %d preloaded queue(s) in worker %s", started, worker.pid)


def worker_exit(server, worker):
    hosting.on_worker_exit()
