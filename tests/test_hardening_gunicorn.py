"""Issue 13 through real gunicorn with the project's gunicorn.conf.py:
slow clients do not get a worker aborted, and an aborted worker hands its
job back (worker_abort) instead of stranding it until QUEUE_STUCK_AFTER."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from processes import Gunicorn, http, wait_for

PREFIX = "/api/queue"


def _slow_client(port: int, stop: threading.Event, started: threading.Event) -> None:
    """Headers that never end: one header line every 0.2 s until ``stop``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /api/queue/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started.set()
        n = 0
        while not stop.wait(0.2):
            n += 1
            try:
                sock.sendall(f"X-Slow-{n}: y\r\n".encode())
            except OSError:
                return


def test_slow_clients_do_not_abort_the_worker(tmp_path):
    server = Gunicorn(tmp_path, workers=1, GUNICORN_TIMEOUT="2")
    try:
        server.wait_ready()
        status, created = http(server.port, "POST", f"{PREFIX}/jobs", {"type": "SLEEP", "payload": {"seconds": 1.5}})
        assert status == 201
        stop = threading.Event()
        clients = []
        for _ in range(2):
            started = threading.Event()
            thread = threading.Thread(target=_slow_client, args=(server.port, stop, started))
            thread.start()
            started.wait(5)
            clients.append(thread)
        # Held for more than twice GUNICORN_TIMEOUT: /health answers throughout.
        held_until = time.monotonic() + 5
        answered = 0
        while time.monotonic() < held_until:
            status, body = http(server.port, "GET", f"{PREFIX}/health", timeout=1)
            assert status == 200 and body["healthy"] is True
            answered += 1
            time.sleep(0.2)
        stop.set()
        for thread in clients:
            thread.join(5)
        assert answered >= 10
        status, job = http(server.port, "GET", f"{PREFIX}/job/{created['id']}")
        assert job["status"] == "completed" and job["retryCount"] == 0 and len(job["attempts"]) == 1
        assert "WORKER TIMEOUT" not in server.log()
    finally:
        server.stop()


def test_aborted_worker_hands_its_job_back(tmp_path):
    # A long lease: only the worker_abort hook can make the job pending within 5 s.
    server = Gunicorn(tmp_path, workers=1, QUEUE_STUCK_AFTER="120", QUEUE_HEARTBEAT_INTERVAL="30")
    try:
        server.wait_ready()
        (pid,) = server.workers()
        status, created = http(server.port, "POST", f"{PREFIX}/jobs", {"type": "SLEEP", "payload": {"seconds": 60}})
        job_url = f"{PREFIX}/job/{created['id']}"
        wait_for("the job to run", lambda: http(server.port, "GET", job_url)[1]["status"] == "processing")
        os.kill(pid, signal.SIGABRT)

        def handed_back():
            try:
                _, job = http(server.port, "GET", job_url, timeout=1)
            except OSError:  # the respawned worker is still booting
                return None
            first = job["attempts"][0]
            return job if first["endedAt"] and "aborted" in (first["error"] or "") else None
        job = wait_for("the job to be handed back", handed_back, seconds=5)
        # Pending again (or already claimed by the respawned worker), never retried as a failure.
        assert job["status"] in ("pending", "processing") and job["retryCount"] == 0
        assert "handed 1 in-flight job(s) back" in server.log()
    finally:
        server.stop()


def test_preloaded_queue_starts_after_gunicorn_drops_privileges(tmp_path):
    """--preload --user nobody: the database is created, and jobs run, as
    nobody, never as the master's root (post_fork runs before the drop)."""
    import pwd
    import shutil
    import tempfile

    import pytest

    from processes import BIN, ROOT, Process, base_env, free_port

    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    nobody = pwd.getpwnam("nobody")
    try:
        probe = subprocess.run([sys.executable, "-c", "import sqlite3, flask"], user=nobody.pw_uid,
                               group=nobody.pw_gid, capture_output=True, cwd="/").returncode
    except OSError:
        probe = -1
    if probe != 0:  # e.g. Python installed under /root (0700)
        pytest.skip("user nobody cannot run this Python's sqlite3/flask here")
    shared = Path(tempfile.mkdtemp(prefix="q13-"))
    try:
        shared.chmod(0o777)
        port = free_port()
        env = base_env(shared, QUEUE_DATABASE_URL=f"sqlite:///{shared / 'queue.db'}")
        server = Process([str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "-w", "1", "--preload",
                          "--user", "nobody", "--group", str(nobody.pw_gid), "-b", f"127.0.0.1:{port}",
                          "--no-control-socket", "tests.gunicorn_app:app"], env, tmp_path / "gunicorn.log")
        try:
            wait_for("gunicorn to answer", lambda: _answers(port), 30)
            status, created = http(port, "POST", f"{PREFIX}/jobs", {"type": "NOOP", "payload": {"n": 1}})
            assert status == 201, created
            wait_for("the job to run",
                     lambda: http(port, "GET", f"{PREFIX}/job/{created['id']}")[1]["status"] == "completed")
            assert (shared / "queue.db").stat().st_uid == nobody.pw_uid
            (worker_pid,) = server.workers()
            assert os.stat(f"/proc/{worker_pid}").st_uid == nobody.pw_uid
        finally:
            server.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        return http(port, "GET", f"{PREFIX}/health", timeout=2)[0] == 200
    except OSError:
        return False
