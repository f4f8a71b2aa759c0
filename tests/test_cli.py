"""``flask queue ...`` against a real temporary store (SQLite file and MongoDB),
through Flask's CLI runner: each command's success and its failures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from marshmallow import Schema, fields, validate

from queue_service import JobQueue, JobStatus
from queue_service.core.jobs import new_lock_token

STUCK_AFTER = 60


class ReportSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    rows = fields.Integer(load_default=3, strict=True)


def make_queue(clock) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)

    @queue.job_type("REPORT", schema=ReportSchema, max_retries=1)
    def report(payload, job):
        if payload["name"].startswith("boom"):
            raise RuntimeError(payload["name"])
        return {"sum": sum(range(payload["rows"]))}

    return queue


@pytest.fixture
def env(make_app, clock):
    app, queue = make_app(make_queue(clock), QUEUE_STUCK_AFTER=STUCK_AFTER, QUEUE_HEARTBEAT_INTERVAL=5)
    runner = app.test_cli_runner()

    def run(*args: str):
        return runner.invoke(args=["queue", *args])

    with app.app_context():
        yield app, queue, run


def state_of(app):
    return app.extensions["queue_service"]


def run_worker_once(app) -> None:
    state_of(app).runtime.make_worker().run_once()


def failed_job(app, queue) -> str:
    job_id = queue.add_job("REPORT", {"name": "boom"}, max_retries=0)
    run_worker_once(app)
    assert queue.get_job_status(job_id)["status"] == "failed"
    return job_id


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


# -- enqueue -------------------------------------------------------------------
def test_enqueue_text_and_json(env):
    app, queue, run = env
    result = run("enqueue", "REPORT", '{"name": "weekly"}', "--priority", "5")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.split()[-1]
    job = queue.get_job(job_id)
    assert (job.type, job.priority, job.payload) == ("REPORT", 5, {"name": "weekly", "rows": 3})

    result = run("enqueue", "REPORT", '{"name": "later"}', "--delay", "30", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["status"] == "pending"
    status = queue.get_job_status(data["id"])
    assert status["runAt"] > status["createdAt"]


@pytest.mark.parametrize("args, code, fragments", [
    (["NOPE", "{}"], 1, ["unknown job type 'NOPE'", "REPORT"]),
    (["REPORT", '{"rows": 1.5}'], 1, ["payload.name", "payload.rows"]),
    (["REPORT", "{not json"], 1, ["payload", "Not valid JSON"]),
    (["REPORT", '["a list"]'], 1, ["payload"]),
    (["REPORT", '{"name": "x"}', "--delay", "-1"], 1, ["delay"]),
    (["REPORT", '{"name": "x"}', "--priority", "high"], 2, ["--priority"]),
    (["REPORT"], 2, ["PAYLOAD"]),
])
def test_enqueue_refuses_bad_input_and_writes_nothing(env, args, code, fragments):
    app, queue, run = env
    assert_one_line_error(run("enqueue", *args), code, *fragments)
    assert queue.get_queue_stats()["total"] == 0


# -- list ----------------------------------------------------------------------
def test_list_newest_first_filters_and_pages(env, clock):
    app, queue, run = env
    ids = []
    for n in range(5):
        ids.append(queue.add_job("REPORT", {"name": f"r{n}"}))
        clock.advance(1)
    queue.cancel(ids[0])

    result = run("list")
    assert result.exit_code == 0
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert rows == ids[::-1]
    assert " ATTEMPT " in result.stdout.splitlines()[0] and " 0 of 2 " in result.stdout  # "attempt 0 of 2"

    page = json.loads(run("list", "--limit", "2", "--json").stdout)
    assert [j["id"] for j in page["jobs"]] == [ids[4], ids[3]] and page["next"] == ids[3]
    text = run("list", "--limit", "2").stdout
    assert f"more: flask queue list --before {ids[3]}" in text
    rest = json.loads(run("list", "--before", ids[3], "--json").stdout)
    assert [j["id"] for j in rest["jobs"]] == [ids[2], ids[1], ids[0]] and rest["next"] is None

    cancelled = json.loads(run("list", "--status", "cancelled", "--type", "REPORT", "--json").stdout)
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]


def test_list_empty_states(env):
    app, queue, run = env
    assert run("list").stdout.strip() == "no jobs"
    assert run("list", "--status", "failed").stdout.strip() == "no jobs matching the filters"
    assert json.loads(run("list", "--json").stdout) == {"jobs": [], "next": None}


def test_list_shows_errors_without_terminal_escapes(env):
    app, queue, run = env
    job_id = queue.add_job("REPORT", {"name": "boom \x1b[2J\x1b[31mred"}, max_retries=0)
    run_worker_once(app)
    line = [row for row in run("list").stdout.splitlines() if row.startswith(job_id)][0]
    assert "failed" in line and "RuntimeError: boom" in line
    assert "\x1b" not in run("list").stdout and "\x1b" not in run("show", job_id).stdout


@pytest.mark.parametrize("args, code, fragment", [
    (["--status", "done"], 1, "status"),
    (["--type", "NOPE"], 1, "unknown job type 'NOPE'"),
    (["--limit", "0"], 2, "--limit"),
    (["--limit", "101"], 2, "--limit"),
    (["--before", "no-such-id"], 1, "before"),
])
def test_list_refuses_bad_filters(env, args, code, fragment):
    app, queue, run = env
    assert_one_line_error(run("list", *args), code, fragment)


# -- show ----------------------------------------------------------------------
def test_show_text_and_json_with_attempts(env):
    app, queue, run = env
    job_id = queue.add_job("REPORT", {"name": "boom"})  # one retry allowed
    run_worker_once(app)
    text = run("show", job_id).stdout
    assert f"id           {job_id}" in text
    assert "status       pending" in text and "tries        next: attempt 2 of 2 (1 of 1 retries used)" in text
    assert "1. 2030-01-01T00:00:00Z -> 2030-01-01T00:00:00Z  retry " in text  # ISO 8601 like the API
    assert "(next try after 1s)" in text
    assert "error: RuntimeError: boom" in text
    assert '"name": "boom"' in text

    data = json.loads(run("show", job_id, "--json").stdout)
    assert data["id"] == job_id and data["stuck"] is False
    assert data["attempts"][0]["outcome"] == "retry" and data["attempts"][0]["nextDelaySeconds"] == 1


def test_show_marks_a_stuck_job(env, clock):
    app, queue, run = env
    job_id = queue.add_job("REPORT", {"name": "slow"})
    state_of(app).runtime.store.claim("gone:1:abc", new_lock_token(), clock.now())
    assert json.loads(run("show", job_id, "--json").stdout)["stuck"] is False
    clock.advance(STUCK_AFTER + 1)
    assert json.loads(run("show", job_id, "--json").stdout)["stuck"] is True
    assert "STUCK" in run("show", job_id).stdout


@pytest.mark.parametrize("job_id", ["0b7c6a5e-0000-4000-8000-000000000000", "not-a-uuid", "x" * 5000])
def test_show_unknown_id(env, job_id):
    app, queue, run = env
    assert_one_line_error(run("show", job_id), 1, "no job with id")


def test_show_needs_an_id(env):
    app, queue, run = env
    assert_one_line_error(run("show"), 2, "Missing argument")


# -- stats and cleanup ---------------------------------------------------------
def test_stats_counts_match_the_store(env, clock):
    app, queue, run = env
    failed_job(app, queue)
    queue.add_job("REPORT", {"name": "a"})
    clock.advance(10)
    queue.cancel(queue.add_job("REPORT", {"name": "b"}))
    data = json.loads(run("stats", "--json").stdout)
    assert data == {**queue.get_queue_stats(), "stuck": 0}
    assert (data["pending"], data["failed"], data["cancelled"], data["total"]) == (1, 1, 1, 3)
    text = run("stats").stdout
    assert "pending            1" in text and "oldest pending job waited    10s" in text
    assert "stuck jobs                   0" in text


def test_cleanup_requeues_a_stuck_job(env, clock):
    app, queue, run = env
    job_id = queue.add_job("REPORT", {"name": "slow"})
    state_of(app).runtime.store.claim("gone:1:abc", new_lock_token(), clock.now())
    assert run("cleanup").stdout.strip() == "no stuck jobs"
    clock.advance(STUCK_AFTER + 1)
    assert json.loads(run("stats", "--json").stdout)["stuck"] == 1
    assert "stuck jobs                   1" in run("stats").stdout
    assert json.loads(run("cleanup", "--json").stdout) == {"requeuedCount": 1}
    assert queue.get_job(job_id).status == JobStatus.PENDING
    assert run("cleanup").stdout.strip() == "no stuck jobs"


# -- retry and cancel ----------------------------------------------------------
def test_retry_a_failed_job(env):
    app, queue, run = env
    job_id = failed_job(app, queue)
    result = run("retry", job_id)
    assert result.exit_code == 0 and result.stdout.strip() == f"job {job_id} is pending"
    assert_one_line_error(run("retry", job_id), 1, f"job {job_id} is pending; cannot retry it")
    assert_one_line_error(run("retry", "missing"), 1, "no job with id missing")


def test_retry_every_failed_job_of_a_type(env):
    app, queue, run = env
    ids = [failed_job(app, queue) for _ in range(3)]
    result = run("retry", "--status", "failed", "--type", "REPORT")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "3 of 3 matching failed job(s) sent back to pending"
    assert {queue.get_job_status(i)["status"] for i in ids} == {"pending"}
    assert json.loads(run("retry", "--status", "failed", "--json").stdout) == {"matched": 0, "changed": 0}
    assert_one_line_error(run("retry"), 2, "give a JOB_ID or --status failed")
    assert_one_line_error(run("retry", ids[0], "--status", "failed"), 2, "not both")
    assert_one_line_error(run("retry", ids[0], "--type", "REPORT"), 2, "--type and --queue go with --status")
    assert run("retry", "--status", "completed").exit_code == 2


def test_cancel_a_pending_job(env):
    app, queue, run = env
    job_id = queue.add_job("REPORT", {"name": "x"})
    data = json.loads(run("cancel", job_id, "--json").stdout)
    assert data["id"] == job_id and data["status"] == "cancelled"
    assert_one_line_error(run("cancel", job_id), 1, "is cancelled; cannot cancel it")
    assert_one_line_error(run("cancel", "missing"), 1, "no job with id missing")


def test_unknown_command_is_one_line(env):
    app, queue, run = env
    assert_one_line_error(run("frobnicate"), 2, "No such command")


# -- a store that does not answer ----------------------------------------------
def test_store_down_is_one_line(clock, tmp_path):
    pymongo = pytest.importorskip("pymongo")
    from flask import Flask

    from queue_service.stores.mongo import MongoStore

    client = pymongo.MongoClient("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=200,
                                 connectTimeoutMS=200, tz_aware=True)
    try:
        app = Flask("down")
        app.config.update(TESTING=True, QUEUE_AUTOSTART=False)
        make_queue(clock).init_app(app, store=MongoStore(lambda: client["queue_down"], "queue_jobs", 0))
        for args in (["stats"], ["list"], ["show", "x"], ["enqueue", "REPORT", '{"name": "x"}']):
            result = app.test_cli_runner().invoke(args=["queue", *args])
            assert_one_line_error(result, 1, "the job store did not answer")
    finally:
        client.close()


# -- the standalone worker, as a real process ----------------------------------
@pytest.mark.slow
def test_worker_process_runs_jobs_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "queue.db"
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(f"""
        from flask import Flask
        from queue_service import JobQueue
        app = Flask("cliapp")
        app.config.update(QUEUE_DATABASE_URL="sqlite:///{db}", QUEUE_AUTOSTART=False,
                          QUEUE_POLL_INTERVAL=0.05)
        queue = JobQueue(app, builtins=False)

        @queue.job_type("ECHO")
        def echo(payload, job):
            return payload
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    flask = [sys.executable, "-m", "flask", "--app", "cliapp", "queue"]
    queued = subprocess.run([*flask, "enqueue", "ECHO", '{"n": 1}', "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]
    worker = subprocess.Popen([*flask, "worker"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            shown = subprocess.run([*flask, "show", job_id, "--json"], env=env, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=60)
            status = json.loads(shown.stdout)["status"]
            if status == "completed":
                break
            time.sleep(0.2)  # polling another process; no clock to advance
        assert status == "completed"
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "running" in out and out.strip().endswith("stopped")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
