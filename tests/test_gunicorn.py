"""gunicorn for real: the project's gunicorn.conf.py serving tests/gunicorn_app.py
on 127.0.0.1 with 2 workers and a temporary SQLite file, the standalone
``flask queue worker`` and ``python wsgi.py``. Every job added is completed;
a worker killed with SIGKILL mid-job loses nothing; SIGTERM hands an
unfinished job back; one worker thread and one scheduler thread per worker
process, none in the master. (The process helpers: tests/processes.py.)

``pytest tests/test_gunicorn.py -s`` prints the measured figures.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from flask import Flask

from gunicorn_app import register_job_types
from processes import (BIN, BOOT_SECONDS, GRACEFUL_TIMEOUT, Gunicorn, Process, alive, base_env, free_port,
                       http, os_threads, wait_for)
from queue_service import JobQueue

API = "/api/queue"
QUEUE_THREADS = ("queue-worker", "queue-scheduler")

pytestmark = pytest.mark.slow

@pytest.fixture
def processes():
    """Starts processes for a test and stops every one of them afterwards."""
    started: list[Process] = []

    def start(kind: type[Process], *args: Any, **kwargs: Any) -> Any:
        process = kind(*args, **kwargs)
        started.append(process)
        return process
    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def local(tmp_path):
    """The Python API on the same SQLite file (no threads in the test process)."""
    app = Flask("test_gunicorn_local")
    app.config.update(QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'queue.db'}", QUEUE_AUTOSTART=False)
    queue = JobQueue(builtins=False)
    register_job_types(queue)
    queue.init_app(app)
    yield app, queue
    app.extensions["queue_service"].runtime.store.close()


def job_of(local, job_id: str) -> dict[str, Any]:
    app, queue = local
    return queue.get_job_status(job_id, app=app)


def wait_status(local, job_id: str, *statuses: str) -> dict[str, Any]:
    return wait_for(f"job {job_id} to be {'/'.join(statuses)}",
                    lambda: (job := job_of(local, job_id)) and job["status"] in statuses and job)


def replaced(server: "Gunicorn", victim: int) -> bool:
    """gunicorn has replaced the killed worker (one look at the process table)."""
    workers = server.workers()
    return len(workers) == server.expected_workers and victim not in workers


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[1])  # host:pid:random


# -- every job added is completed ----------------------------------------------
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload-store-used-in-master"])
def test_every_job_added_over_http_or_python_is_completed(tmp_path, processes, local, preload):
    """With --preload the app adds a job while it loads, in the master: the
    workers must not reuse the master's SQLite connections after fork."""
    env = {"TEST_APP_ENQUEUE_AT_IMPORT": "1"} if preload else {}
    server = processes(Gunicorn, tmp_path, preload=preload, **env)
    server.wait_ready()
    app, queue = local
    ids = [job.id for job in queue.list_jobs(app=app)]  # the job the app added while loading
    assert len(ids) == (1 if preload else 0)
    for n in range(100):
        status, body = http(server.port, "POST", f"{API}/jobs", {"type": "NOOP", "payload": {"n": n}})
        assert status == 201, body
        ids.append(body["id"])
        ids.append(queue.add_job("NOOP", {"n": 1000 + n}, app=app))
    for n in range(4):
        ids.append(queue.add_job("SLEEP", {"seconds": 0.2}, priority=1, app=app))

    began = time.monotonic()
    wait_for("every job to complete",
             lambda: queue.get_queue_stats(app=app)["completed"] == len(ids))
    drained = time.monotonic() - began
    workers = server.workers()
    ran_on: Counter[int] = Counter()
    for job_id in ids:
        job = job_of(local, job_id)
        assert job["status"] == "completed" and job["retryCount"] == 0
        assert [a["outcome"] for a in job["attempts"]] == ["completed"]
        assert pid_of(job["worker"]) == job["result"]["pid"] in workers
        ran_on[job["result"]["pid"]] += 1
    stats = queue.get_queue_stats(app=app)
    assert stats["total"] == len(ids) and stats["pending"] == stats["processing"] == 0
    assert "Traceback" not in server.log() and "ERROR" not in server.log()
    print(f"\n{len(ids)} jobs completed by gunicorn -w 2{' --preload' if preload else ''}, the last "
          f"{drained:.2f}s after the last add; per worker: {sorted(ran_on.values())}")


# -- SIGKILL of a worker mid-job -----------------------------------------------
def test_worker_killed_mid_job_loses_nothing(tmp_path, processes, local):
    server = processes(Gunicorn, tmp_path)
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("SLEEP", {"seconds": 1.5}, app=app)
    others = [queue.add_job("NOOP", {"n": n}, app=app) for n in range(20)]
    running = wait_status(local, job_id, "processing", "completed")
    assert running["status"] == "processing", "the job finished before the test could kill its worker"
    victim = pid_of(running["worker"])
    workers_before = server.workers()
    assert victim in workers_before

    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    done = wait_status(local, job_id, "completed", "failed")
    recovered = time.monotonic() - killed_at

    assert done["status"] == "completed"
    assert done["retryCount"] == 1  # the lost attempt counts as a retry
    first, second = done["attempts"]
    assert first["outcome"] == "lost" and "worker lost" in first["error"]
    assert pid_of(first["worker"]) == victim
    assert second["outcome"] == "completed" and pid_of(second["worker"]) != victim
    assert done["result"]["pid"] != victim
    for other in others:
        wait_status(local, other, "completed")
    # gunicorn replaced the killed worker, and the replacement runs the queue too.
    wait_for("a replacement worker", lambda: replaced(server, victim))
    for pid, census in server.census().items():
        assert Counter(t["name"] for t in census["threads"] if t["name"] in QUEUE_THREADS) == \
            {"queue-worker": 1, "queue-scheduler": 1}, pid
    assert queue.get_queue_stats(app=app)["completed"] == 21
    print(f"\nSIGKILLed worker {victim} mid-job; its job completed on "
          f"{pid_of(second['worker'])} {recovered:.2f}s later (stuck after 2s, sweep every 0.5s, "
          f"job 1.5s)")


# -- SIGTERM to the master -------------------------------------------------------
def test_sigterm_hands_the_in_flight_job_back_and_a_restart_runs_it(tmp_path, processes, local):
    server = processes(Gunicorn, tmp_path, QUEUE_SHUTDOWN_TIMEOUT="0.5")
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("SLEEP", {"seconds": 4}, app=app)
    running = wait_status(local, job_id, "processing")
    worker = pid_of(running["worker"])

    server.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = server.proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail("gunicorn did not stop within its graceful timeout")
    stopped = time.monotonic() - sent
    assert code == 0, server.log()
    assert not alive(worker)
    log = server.log()
    assert "SIGKILL" not in log  # the master never had to kill a worker
    assert "handed back to pending" in log

    back = job_of(local, job_id)
    assert back["status"] == "pending"
    assert back["retryCount"] == 0  # a shutdown is not a retry
    assert [a["outcome"] for a in back["attempts"]] == ["released"]

    # The next deploy picks it up at once (no 10-minute stuck wait).
    processes(Gunicorn, tmp_path).wait_ready()
    done = wait_status(local, job_id, "completed")
    assert done["retryCount"] == 0
    assert [a["outcome"] for a in done["attempts"]] == ["released", "completed"]
    print(f"\nSIGTERM to the master: gunicorn (2 workers, a 4s job in flight, QUEUE_SHUTDOWN_TIMEOUT"
          f"=0.5) exited in {stopped:.2f}s, graceful timeout {GRACEFUL_TIMEOUT}s")


def test_sigterm_waits_for_a_job_that_finishes_within_the_shutdown_timeout(tmp_path, processes, local):
    server = processes(Gunicorn, tmp_path, workers=1, QUEUE_SHUTDOWN_TIMEOUT="8")
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("SLEEP", {"seconds": 1}, app=app)
    wait_status(local, job_id, "processing")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=GRACEFUL_TIMEOUT + 5) == 0, server.log()
    done = job_of(local, job_id)
    assert done["status"] == "completed" and [a["outcome"] for a in done["attempts"]] == ["completed"]


# -- thread census ---------------------------------------------------------------
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_one_worker_and_one_scheduler_thread_per_worker_none_in_master(tmp_path, processes, preload):
    server = processes(Gunicorn, tmp_path, preload=preload)
    server.wait_ready()

    def check_every_worker() -> None:
        censuses = server.census()
        assert len(censuses) == 2, server.log()
        for pid, census in censuses.items():
            assert census["ppid"] == server.pid
            # gthread's request threads (GUNICORN_THREADS, 4) are gunicorn's, not the queue's.
            names = Counter(t["name"] for t in census["threads"] if not t["name"].startswith("ThreadPoolExecutor"))
            assert names == {"MainThread": 1, "queue-worker": 1, "queue-scheduler": 1}, (pid, names)
            assert sum(t["name"].startswith("ThreadPoolExecutor") for t in census["threads"]) <= 4
            # Python's view is the whole story: no OS thread the census missed.
            # (The main thread's OS id is the pid; Python 3.11 keeps the
            # master's native_id for it after fork, so it is not compared.)
            others = {t["nativeId"] for t in census["threads"] if t["name"] != "MainThread"}
            assert others | {pid} == os_threads(pid)
        # The master runs no thread at all (its Python names are not visible
        # from outside, so count the OS threads).
        assert os_threads(server.pid) == {server.pid}

    check_every_worker()
    # A worker gunicorn starts again (post_fork runs again) gets its own pair.
    victim = min(server.workers())
    os.kill(victim, signal.SIGKILL)
    wait_for("a replacement worker", lambda: replaced(server, victim))
    check_every_worker()
    # Queue logs reach gunicorn's error log: one start per worker process, ever.
    starts = Counter(line.split("[Queue] Started worker ")[1].split(":")[1]
                     for line in server.log().splitlines() if "[Queue] Started worker " in line)
    assert starts == {str(pid): 1 for pid in server.seen_children}


# -- the standalone worker ---------------------------------------------------------
def test_flask_queue_worker_runs_jobs_and_hands_back_on_sigterm(tmp_path, processes, local):
    app, queue = local
    first = [queue.add_job("NOOP", {"n": n}, app=app) for n in range(10)]
    worker = processes(Process, [str(BIN / "flask"), "--app", "tests.gunicorn_app", "queue", "worker"],
                       base_env(tmp_path, QUEUE_SHUTDOWN_TIMEOUT="0.5"), tmp_path / "worker.log")
    for job_id in first:
        assert wait_status(local, job_id, "completed")["result"]["pid"] == worker.pid
    long_job = queue.add_job("SLEEP", {"seconds": 30}, app=app)
    wait_status(local, long_job, "processing")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=15) == 0, worker.log()
    assert "went back to pending" in worker.log()
    back = job_of(local, long_job)
    assert back["status"] == "pending" and back["retryCount"] == 0
    assert [a["outcome"] for a in back["attempts"]] == ["released"]


def test_queues_split_between_gunicorn_and_a_standalone_worker(tmp_path, processes, local):
    """gunicorn consumes 'default' only; `flask queue worker --queues images`
    takes the images jobs: every job completes, each in a process that consumes its queue."""
    app, queue = local
    server = processes(Gunicorn, tmp_path, QUEUE_WORKER_QUEUES="default")
    server.wait_ready()
    worker = processes(Process, [str(BIN / "flask"), "--app", "tests.gunicorn_app", "queue", "worker",
                                 "--queues", "images"], base_env(tmp_path), tmp_path / "worker.log")
    images = [queue.add_job("NOOP", {"n": n}, queue="images", app=app) for n in range(5)]
    defaults = [queue.add_job("NOOP", {"n": n}, app=app) for n in range(5)]
    for job_id in images:
        assert wait_status(local, job_id, "completed")["result"]["pid"] == worker.pid
    for job_id in defaults:
        assert wait_status(local, job_id, "completed")["result"]["pid"] != worker.pid
    assert "queues: images" in worker.log()


# -- the demo app's development server -------------------------------------------------
def test_python_wsgi_dev_server_runs_a_job(tmp_path, processes):
    port = free_port()
    env = base_env(tmp_path, PORT=str(port))
    server = processes(Process, [sys.executable, "wsgi.py"], env, tmp_path / "wsgi.log")

    def answered() -> Any:
        assert server.proc.poll() is None, server.log()
        try:
            return http(port, "POST", "/reports", {"name": "dev", "rows": 4}, timeout=2)
        except OSError:
            return None
    status, body = wait_for("the development server", answered, BOOT_SECONDS)
    assert status == 202, body
    done = wait_for("the report job", lambda: (job := http(port, "GET", f"{API}/job/{body['id']}")[1])
                    and job["status"] == "completed" and job)
    assert done["result"] == {"name": "dev", "rows": 4, "sum": 6}
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0, server.log()


def test_sigterm_releases_before_gunicorn_kills_when_shutdown_timeout_exceeds_graceful(
        tmp_path, processes, local):
    """QUEUE_SHUTDOWN_TIMEOUT (25 s by default) longer than gunicorn's graceful
    timeout: the queue waits less, so it hands the job back before the
    master's SIGKILL instead of leaving it stranded until QUEUE_STUCK_AFTER."""
    server = processes(Gunicorn, tmp_path, workers=1, GUNICORN_GRACEFUL_TIMEOUT="3",
                       QUEUE_SHUTDOWN_TIMEOUT="25", QUEUE_STUCK_AFTER="600")
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("SLEEP", {"seconds": 30}, app=app)
    wait_status(local, job_id, "processing")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=3 + 10) == 0, server.log()
    assert "SIGKILL" not in server.log()
    back = job_of(local, job_id)
    assert back["status"] == "pending" and back["retryCount"] == 0
    assert [a["outcome"] for a in back["attempts"]] == ["released"]


# -- logs -------------------------------------------------------------------------------
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_queue_logs_follow_the_host_apps_logging_config(tmp_path, processes, local, preload):
    """A host app that configures logging gets the queue's records through
    its own configuration, not gunicorn's error log (and never both)."""
    host_log = tmp_path / "host.log"
    server = processes(Gunicorn, tmp_path, preload=preload, TEST_APP_LOG_FILE=str(host_log))
    server.wait_ready()
    app, queue = local
    ids = [queue.add_job("NOOP", {"n": n}, app=app) for n in range(10)]
    for job_id in ids:
        wait_status(local, job_id, "completed")
    wait_for("the host's log",
             lambda: all(f"Job {job_id} completed" in host_log.read_text() for job_id in ids))
    assert "[Worker] ✅ Job" not in server.log()


def test_config_loads_from_another_directory(tmp_path, processes, local):
    """``gunicorn -c /path/to/gunicorn.conf.py --chdir /path/to/app`` from
    elsewhere: the config finds queue_service although --chdir applies after
    the config file is read."""
    server = processes(Gunicorn, tmp_path, workers=1, cwd=tmp_path)
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("NOOP", {"n": 7}, app=app)
    assert wait_status(local, job_id, "completed")["result"]["pid"] in server.workers()


def test_sighup_reload_hands_the_job_to_a_new_worker(tmp_path, processes, local):
    """gunicorn's reload (SIGHUP): new workers start, the old ones stop
    gracefully; the in-flight job moves over without counting a retry."""
    server = processes(Gunicorn, tmp_path, QUEUE_SHUTDOWN_TIMEOUT="0.5")
    server.wait_ready()
    app, queue = local
    job_id = queue.add_job("SLEEP", {"seconds": 2}, app=app)
    first = pid_of(wait_status(local, job_id, "processing")["worker"])
    old_workers = server.workers()
    server.proc.send_signal(signal.SIGHUP)
    done = wait_status(local, job_id, "completed")
    assert done["retryCount"] == 0
    assert [a["outcome"] for a in done["attempts"]] == ["released", "completed"]
    assert pid_of(done["worker"]) not in old_workers and pid_of(done["attempts"][0]["worker"]) == first
    wait_for("the old workers to exit", lambda: not (server.workers() & old_workers))
    for census in server.census().values():
        assert Counter(t["name"] for t in census["threads"] if t["name"] in QUEUE_THREADS) == \
            {"queue-worker": 1, "queue-scheduler": 1}


def test_autostart_off_web_process_and_a_separate_worker_process(tmp_path, processes, local):
    """The Procfile's split: QUEUE_AUTOSTART=false web workers run no queue
    thread; ``flask queue worker`` (the worker: line) runs the jobs."""
    server = processes(Gunicorn, tmp_path, workers=1, QUEUE_AUTOSTART="false")
    server.wait_ready()
    for census in server.census().values():
        assert [t["name"] for t in census["threads"] if not t["name"].startswith("ThreadPoolExecutor")] == \
            ["MainThread"]
    status, body = http(server.port, "POST", f"{API}/jobs", {"type": "NOOP", "payload": {"n": 1}})
    assert status == 201 and body["status"] == "pending"
    worker = processes(Process, [str(BIN / "flask"), "--app", "tests.gunicorn_app", "queue", "worker"],
                       base_env(tmp_path), tmp_path / "worker.log")
    assert wait_status(local, body["id"], "completed")["result"]["pid"] == worker.pid
