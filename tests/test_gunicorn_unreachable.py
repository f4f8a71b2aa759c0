"""gunicorn with the project's gunicorn.conf.py and a store that is not there
(issue 12, item 1): MONGO_URI at a closed port, at a listener that never
answers, and QUEUE_DATABASE_URL under a regular file. The host app's own
route answers 200, the queue's /health and POST /jobs answer 503 JSON, and
the master and its worker stay up (no "Worker failed to boot", no respawn).

The client keeps its default bounds here (5 s server selection), so each
Mongo case shows that a request is answered well inside 10 s.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from mongo_servers import closed_mongo_uri, real_mongo_uri, silent_mongo_uri, silent_server  # noqa: F401
from processes import TOKEN, Gunicorn, wait_for

STAY_UP_SECONDS = 12.0  # past the 5 s server selection and two setup retries


def request(port: int, method: str, path: str, body=None, timeout: float = 10.0):
    """(status, headers, JSON body); the timeout is the 10 s the queue must answer within."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read() or b"null")


def check_host_up_queue_503(tmp_path, **env) -> None:
    server = Gunicorn(tmp_path, workers=1, **env)
    try:
        server.wait_ready()  # /census, the host app's own route, answered 200
        worker_pids = server.workers()
        status, headers, body = request(server.port, "GET", "/api/queue/health")
        assert status == 503 and body["healthy"] is False and body["problems"] == ["store unreachable"]
        assert headers["Content-Type"].startswith("application/json")
        status, headers, body = request(server.port, "POST", "/api/queue/jobs", {"type": "NOOP", "payload": {}})
        assert status == 503 and headers["Retry-After"] and body["error"]
        assert "127.0.0.1" not in json.dumps(body)

        deadline = time.monotonic() + STAY_UP_SECONDS
        while time.monotonic() < deadline:  # the master and its one worker stay, unrestarted
            assert server.proc.poll() is None, server.log()
            assert server.workers() == worker_pids, server.log()
            time.sleep(0.2)
        status, _, _ = request(server.port, "GET", "/census")
        assert status == 200
        log = server.log()
        assert "Worker failed to boot" not in log
        assert log.count("Store setup failed") == 1, log  # once per state change, not per retry
    finally:
        server.stop()


def test_mongo_at_a_closed_port(tmp_path, closed_mongo_uri):
    check_host_up_queue_503(tmp_path, MONGO_URI=closed_mongo_uri)


def test_mongo_at_a_listener_that_never_answers(tmp_path, silent_mongo_uri):
    check_host_up_queue_503(tmp_path, MONGO_URI=silent_mongo_uri)


def test_sqlite_under_a_regular_file(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    check_host_up_queue_503(tmp_path, QUEUE_DATABASE_URL=f"sqlite:///{blocker}/queue.db")


@pytest.mark.skipif(not real_mongo_uri(), reason="QUEUE_TEST_MONGO_URI is not set")
def test_a_real_server_serves_jobs(tmp_path):
    server = Gunicorn(tmp_path, workers=1, MONGO_URI=real_mongo_uri())
    try:
        server.wait_ready()
        status, _, body = request(server.port, "POST", "/api/queue/jobs", {"type": "NOOP", "payload": {}})
        assert status in (201, 202), body
        job_id = body["id"]
        wait_for("the job to complete", lambda: request(server.port, "GET", f"/api/queue/job/{job_id}")[2]
                 .get("status") == "completed", 30)
    finally:
        server.stop()
