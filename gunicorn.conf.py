"""gunicorn settings for queue_service hosts (the Procfile's web process).

post_fork arms each worker process; the queue's worker and scheduler threads
start in the worker (never in the master), once per worker, with or without
--preload: when the app loads, or for a preloaded app in post_worker_init,
after gunicorn has dropped privileges (--user). worker_abort hands the
in-flight job back on SIGABRT. worker_exit stops them gracefully within QUEUE_SHUTDOWN_TIMEOUT,
cut short to end 2 s before graceful_timeout so an unfinished job is handed
back before the master's SIGKILL.

queue_service is imported here, in the master: it starts and connects
nothing on import, and the workers then share its pages (and Flask's)
copy-on-write; importing it in each worker instead measured ~8 MB more in
total with 2 workers.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # found from any working directory (--chdir applies after this file)
    sys.path.append(_here)

from queue_service import hosting  # noqa: E402

_port = os.environ.get("PORT")
bind = f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000"  # Heroku/Render hand out PORT
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, not sync: a sync worker blocks on one client's request, so two
# clients trickling headers for longer than `timeout` got the worker aborted
# (WORKER TIMEOUT) with its job in flight. A gthread worker's main loop keeps
# notifying the master while its threads wait on slow clients. See README.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG")  # off unless asked for
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# gunicorn's largest allowed request line (its default is 4094): a long
# bad id in a URL then reaches the app and gets the API's JSON 404, not
# gunicorn's plain-text 414. Longer lines still get the 414.
limit_request_line = 8190


def post_fork(server, worker):
    # Queue logs go where gunicorn's error log goes, unless the app configures logging.
    hosting.route_logs(server.log.error_log.handlers, server.log.error_log.level)
    # Arm only: gunicorn drops privileges (--user) after this hook, so a
    # preloaded queue starts in post_worker_init, as the worker's own user.
    hosting.on_post_fork(start=False)


def post_worker_init(worker):
    started = hosting.start_preloaded()
    if started:
        worker.log.info("queue_service: started %d preloaded queue(s) in worker %s", started, worker.pid)
    hosting.yield_logs_to_host()  # the app is loaded: if it configured logging, that wins


def worker_abort(worker):
    # SIGABRT (the master's WORKER TIMEOUT): no grace follows, hand the job back now.
    handed_back = hosting.on_worker_abort()
    if handed_back:
        worker.log.warning("queue_service: handed %d in-flight job(s) back before the abort", handed_back)


def worker_exit(server, worker):
    # Also called in the master (for a worker that vanished): nothing runs there to stop.
    hosting.on_worker_exit(graceful_timeout=server.cfg.graceful_timeout)
