"""The operator's routes (issue 17): tracebacks in the admin view, bulk retry
and cancel, run now, scheduled counts, the workers list and the history.

Through Flask's test client on both stores; the races are made real by
changing a job between the route's match and its change (the store's own
list/get is wrapped to do it at that moment).
"""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from queue_service import JobQueue, PermanentJobError
from test_api import ADMIN, PREFIX, TOKEN, Api, assert_error

NEW_ROUTES = [("post", "/jobs/retry"), ("post", "/jobs/cancel"), ("post", "/job/{id}/run-now"),
              ("get", "/workers"), ("get", "/stats/history"), ("get", "/jobs/search?idPrefix=abcd")]


def make_queue(clock) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)
    calls: dict[str, int] = {}

    @queue.job_type("NOOP")
    def noop(payload, job):
        return None

    @queue.job_type("BOOM", max_retries=0)
    def boom(payload, job):
        raise PermanentJobError("boom")

    @queue.job_type("FLAKY", max_retries=0)
    def flaky(payload, job):  # fails the first time each key is seen, then succeeds
        calls[payload["key"]] = calls.get(payload["key"], 0) + 1
        if calls[payload["key"]] == 1:
            raise RuntimeError(f"first run of {payload['key']}")
        return {"ok": True}

    return queue


@pytest.fixture(params=["sqlite", "mongo"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def api(make_app, clock, store_kind) -> Api:
    app, queue = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    return Api(app, queue)


def run_all(api: Api) -> None:
    while api.run_once() is not None:
        pass


def failed_jobs(api: Api, n: int, job_type: str = "BOOM") -> list[str]:
    ids = [api.add(job_type, {"key": str(uuid.uuid4())} if job_type == "FLAKY" else {}) for _ in range(n)]
    run_all(api)
    assert all(api.get(f"/job/{i}").get_json()["status"] == "failed" for i in ids)
    return ids


# -- tracebacks -------------------------------------------------------------------
def test_a_failed_attempt_shows_its_traceback_to_admins_only(api):
    job_id = failed_jobs(api, 1, "FLAKY")[0]
    attempt = api.get(f"/job/{job_id}").get_json()["attempts"][0]
    assert attempt["traceback"].startswith("Traceback (most recent call last):")
    assert "in flaky" in attempt["traceback"] and attempt["traceback"].rstrip().endswith(
        f"RuntimeError: {attempt['error'].split(': ', 1)[1]}")
    anonymous = api.client.get(f"{PREFIX}/job/{job_id}")
    assert anonymous.status_code == 200 and "attempts" not in anonymous.get_json()
    assert "Traceback" not in anonymous.get_data(as_text=True)


def test_a_traceback_is_bounded_to_its_last_8_kb(api):
    @api.queue.job_type("DEEP", max_retries=0)
    def deep(payload, job):
        raise ValueError("start " + "x" * 20000 + " end")

    job_id = api.add("DEEP")
    run_all(api)
    trace = api.get(f"/job/{job_id}").get_json()["attempts"][0]["traceback"]
    assert len(trace) == 8192 and trace.startswith("…") and trace.rstrip().endswith("x end")


# -- bulk retry / cancel --------------------------------------------------------------
def test_bulk_retry_by_filter_and_by_ids(api):
    boom = failed_jobs(api, 3)
    flaky = failed_jobs(api, 2, "FLAKY")
    done = api.add("NOOP")
    run_all(api)
    response = api.post("/jobs/retry", json={"status": "failed", "type": "FLAKY"})
    assert response.status_code == 200 and response.get_json() == {"matched": 2, "changed": 2}
    run_all(api)
    assert {api.get(f"/job/{i}").get_json()["status"] for i in flaky} == {"completed"}
    response = api.post("/jobs/retry", json={"ids": [boom[0], boom[1], done, str(uuid.uuid4())]})
    assert response.get_json() == {"matched": 2, "changed": 2}  # the completed and the unknown id match nothing
    job = api.get(f"/job/{boom[0]}").get_json()
    assert job["status"] == "pending" and job["retryCount"] == 0
    assert api.post("/jobs/retry", json={"status": "failed"}).get_json() == {"matched": 1, "changed": 1}


def test_bulk_retry_pages_through_more_than_one_page(api, monkeypatch):
    from queue_service.core import bulk

    monkeypatch.setattr(bulk, "PAGE", 2)
    ids = failed_jobs(api, 5)
    assert api.post("/jobs/retry", json={"status": "failed"}).get_json() == {"matched": 5, "changed": 5}
    assert {api.get(f"/job/{i}").get_json()["status"] for i in ids} == {"pending"}


def test_bulk_cancel_by_filter_and_by_ids(api, clock):
    pending = [api.add("NOOP", delay=60) for _ in range(3)]
    other = api.add("BOOM", delay=60)
    response = api.post("/jobs/cancel", json={"type": "NOOP"})
    assert response.get_json() == {"matched": 3, "changed": 3}
    assert {api.get(f"/job/{i}").get_json()["status"] for i in pending} == {"cancelled"}
    assert api.post("/jobs/cancel", json={"ids": [other, pending[0]]}).get_json() == {"matched": 1, "changed": 1}


@pytest.mark.parametrize("path", ["/jobs/retry", "/jobs/cancel"])
@pytest.mark.parametrize("body, field", [
    ({"ids": "not-a-list"}, "ids"),
    ({"ids": [1, 2]}, "ids"),
    ({"ids": []}, "ids"),
    ({"ids": [str(uuid.uuid4()) for _ in range(1001)]}, "ids"),
    ({"status": "exploded"}, "status"),
    ({"status": "completed"}, "status"),
    ({"ids": [str(uuid.uuid4())], "status": "failed"}, "ids"),
    ({"type": 5}, "type"),
    ({"queue": "Not A Queue"}, "queue"),
    ({"colour": "red"}, "colour"),
    ({}, "_schema"),
])
def test_bulk_routes_refuse_bad_input(api, path, body, field):
    job_id = failed_jobs(api, 1)[0]
    assert_error(api.post(path, json=body), 400, field)
    assert api.get(f"/job/{job_id}").get_json()["status"] == "failed"


def test_bulk_routes_refuse_a_body_that_is_not_an_object(api):
    assert_error(api.post("/jobs/retry", data="[1]", content_type="application/json"), 400, "body")
    assert_error(api.post("/jobs/cancel"), 400, "body")


def test_bulk_retry_skips_a_job_that_changed_between_match_and_change(api, monkeypatch):
    """The job is matched as failed; before the requeue, someone else retries it
    and a worker completes it. The bulk retry skips it: not requeued again."""
    job_id = failed_jobs(api, 1, "FLAKY")[0]
    store = api.state.runtime.store
    real_list, real_get = store.list_jobs, store.get

    def meanwhile():
        with api.app.app_context():
            api.state.service.retry(job_id)
        assert api.run_once().id == job_id

    def list_then_race(*args, **kwargs):
        page = real_list(*args, **kwargs)
        if page:
            meanwhile()
        return page

    monkeypatch.setattr(store, "list_jobs", list_then_race)
    assert api.post("/jobs/retry", json={"status": "failed"}).get_json() == {"matched": 1, "changed": 0}
    job = real_get(job_id)
    assert job.status.value == "completed" and len(job.attempts) == 2


def test_bulk_cancel_skips_a_job_claimed_between_match_and_change(api, monkeypatch):
    job_id = api.add("NOOP")
    store = api.state.runtime.store
    real_get = store.get

    def get_then_race(some_id):
        job = real_get(some_id)
        if job is not None and job.status.value == "pending":
            assert api.run_once().id == some_id  # a worker takes it and completes it
        return job

    monkeypatch.setattr(store, "get", get_then_race)
    assert api.post("/jobs/cancel", json={"ids": [job_id]}).get_json() == {"matched": 1, "changed": 0}
    assert real_get(job_id).status.value == "completed"


# -- run now ------------------------------------------------------------------------------
def test_run_now_makes_a_delayed_job_runnable_at_once(api, clock):
    job_id = api.add("NOOP", delay=3600)
    assert api.run_once() is None
    response = api.post(f"/job/{job_id}/run-now")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "pending" and body["retryCount"] == 0
    assert body["runAt"] == clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.run_once().id == job_id


def test_run_now_on_a_retry_scheduled_job_counts_no_retry(api, clock):
    @api.queue.job_type("ONCE", max_retries=2)
    def once(payload, job):
        if job.attempt == 1:
            raise RuntimeError("first")

    job_id = api.add("ONCE")
    api.run_once()
    assert api.get(f"/job/{job_id}").get_json()["retryCount"] == 1
    assert api.post(f"/job/{job_id}/run-now").get_json()["retryCount"] == 1
    assert api.run_once().id == job_id
    assert api.get(f"/job/{job_id}").get_json()["status"] == "completed"


def test_run_now_errors(api):
    due = api.add("NOOP")
    assert_error(api.post(f"/job/{due}/run-now"), 409, "status")  # already due
    assert_error(api.post(f"/job/{uuid.uuid4()}/run-now"), 404)
    assert_error(api.post("/job/not-an-id/run-now"), 404)
    assert_error(api.post(f"/job/{due}/run-now", json={"force": True}), 400, "force")
    done = failed_jobs(api, 1)[0]
    assert_error(api.post(f"/job/{done}/run-now"), 409, "status")


# -- auth -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", NEW_ROUTES)
def test_new_routes_need_the_admin_token(api, method, path):
    job_id = api.add("NOOP", delay=60)
    url = PREFIX + path.format(id=job_id)
    body = {"ids": [job_id]} if path.startswith("/jobs/") else None
    assert_error(getattr(api.client, method)(url, json=body), 401, "authorization")
    wrong = {"Authorization": "Bearer wrong"}
    assert getattr(api.client, method)(url, json=body, headers=wrong).status_code in (401, 403)
    assert api.get(f"/job/{job_id}").get_json()["status"] == "pending"
    assert api.get(f"/job/{job_id}").get_json()["runAt"] != api.get(f"/job/{job_id}").get_json()["createdAt"]


@pytest.mark.parametrize("method, path", NEW_ROUTES)
def test_new_routes_403_without_a_configured_token(make_app, clock, method, path):
    app, _ = make_app(make_queue(clock), QUEUE_DEVELOPMENT=False)
    response = getattr(app.test_client(), method)(PREFIX + path.format(id=uuid.uuid4()), headers=ADMIN)
    assert_error(response, 403)


# -- scheduled apart from pending -------------------------------------------------------------
def test_stats_count_scheduled_jobs_among_pending(api, clock):
    api.add("NOOP")
    api.add("NOOP", delay=60)
    stats = api.get("/stats").get_json()["stats"]
    assert stats["pending"] == 2 and stats["scheduled"] == 1
    clock.advance(60)
    assert api.get("/stats").get_json()["stats"]["scheduled"] == 0


# -- workers --------------------------------------------------------------------------------------
def test_workers_list_two_workers_one_stops_renewing(api, clock):
    runtime = api.state.runtime
    web = runtime.make_worker()
    runtime.worker_kind = "standalone"
    standalone = runtime.make_worker()
    ticks = [runtime.make_scheduler(web), runtime.make_scheduler(standalone)]
    for scheduler in ticks:
        scheduler.tick()
    api.add("NOOP")
    web.run_once()
    workers = {w["id"]: w for w in api.get("/workers").get_json()["workers"]}
    assert set(workers) == {web.worker_id, standalone.worker_id}
    assert workers[web.worker_id]["kind"] == "web" and workers[standalone.worker_id]["kind"] == "standalone"
    assert all(w["alive"] for w in workers.values())
    first = workers[web.worker_id]
    assert first["host"] and first["pid"] > 0 and first["queues"] == ["*"] and first["jobsDone"] == 0
    interval = runtime.settings.heartbeat_interval
    for _ in range(4):  # only the web worker keeps renewing
        clock.advance(interval)
        ticks[0].tick()
    workers = {w["id"]: w for w in api.get("/workers").get_json()["workers"]}
    assert workers[web.worker_id]["alive"] and workers[web.worker_id]["jobsDone"] == 1
    assert not workers[standalone.worker_id]["alive"]
    assert workers[web.worker_id]["lastSeenAt"] > workers[standalone.worker_id]["lastSeenAt"]
    clock.advance(3600)
    ticks[0].tick()  # a sweep: the gone record is purged
    assert [w["id"] for w in api.get("/workers").get_json()["workers"]] == [web.worker_id]


# -- history --------------------------------------------------------------------------------------
def test_history_counts_finished_jobs_per_bucket(api, clock):
    failed_jobs(api, 2)
    clock.advance(600)
    api.add("NOOP")
    run_all(api)
    body = api.get("/stats/history?hours=1").get_json()
    assert body["bucketSeconds"] == 300 and len(body["buckets"]) == 12 and body["hours"] == 1
    assert sum(b["failed"] for b in body["buckets"]) == 2 and sum(b["completed"] for b in body["buckets"]) == 1
    timings = {"waitP50": 0.0, "waitP95": 0.0, "runP50": 0.0, "runP95": 0.0}  # the manual clock stood still
    assert body["buckets"][-1]["completed"] == 1 and body["buckets"][-1]["types"] == {
        "NOOP": {"completed": 1, "failed": 0, **timings}}
    assert {k: body["buckets"][-1][k] for k in timings} == timings
    assert body["buckets"][0]["waitP95"] is None  # no attempt ended in it
    assert body["buckets"][-3]["failed"] == 2
    day = api.get("/stats/history").get_json()
    assert day["hours"] == 24 and day["bucketSeconds"] == 3600 and len(day["buckets"]) == 24
    assert day["buckets"][-1]["failed"] == 2 and day["buckets"][-1]["completed"] == 1


@pytest.mark.parametrize("query", ["hours=0", "hours=169", "hours=abc", "hours=-1", "hours=1&hours=2"])
def test_history_refuses_bad_hours(api, query):
    assert_error(api.get(f"/stats/history?{query}"), 400, "hours")


# -- search and the due filter ----------------------------------------------------------------------
def test_search_by_id_prefix_finds_the_job(api):
    ids = [api.add("NOOP") for _ in range(3)]
    target = ids[1]
    for prefix in (target[:4], target[:8].upper(), target[:13], target):
        found = [j["id"] for j in api.get(f"/jobs/search?idPrefix={prefix}").get_json()["jobs"]]
        assert target in found and all(i.startswith(prefix.lower()) for i in found)
    assert api.get(f"/jobs/search?idPrefix={target}").get_json() == {
        "jobs": [api.get(f"/job/{target}").get_json()], "nextBefore": None}


@pytest.mark.parametrize("query", ["", "idPrefix=abc", "idPrefix=abcg", "idPrefix=ab%20cd", "idPrefix=" + "a" * 37,
                                   "idPrefix=----", "idPrefix=ab-cd", "idPrefix=-abcd", "idPrefix=abcd&idPrefix=abce"])
def test_search_refuses_bad_prefixes(api, query):
    assert_error(api.get(f"/jobs/search?{query}"), 400, "idPrefix")


def test_search_needs_the_admin(api):
    assert api.client.get(PREFIX + "/jobs/search?idPrefix=abcd").status_code in (401, 403)


def test_status_filter_due_now_and_later(api, clock):
    due = api.add("NOOP")
    later = api.add("NOOP", delay=60)
    ids = lambda q: [j["id"] for j in api.get(f"/jobs?{q}").get_json()["jobs"]]  # noqa: E731
    assert ids("due=now") == [due] and ids("status=pending&due=later") == [later]
    clock.advance(60)
    assert set(ids("due=now")) == {due, later} and ids("due=later") == []
    assert ids("due=now&status=failed") == []  # the filters combine: only pending jobs are due


@pytest.mark.parametrize("query", ["due=soon", "due=", "due=now&due=later"])
def test_due_filter_refuses_bad_values(api, query):
    assert_error(api.get(f"/jobs?{query}"), 400, "due")
