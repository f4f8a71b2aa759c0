"""Named queues above the store: routing a job to its queue, workers that
consume some queues, the API, the stats and the CLI. (What the stores do
with queues is in the contract suite.)"""
from __future__ import annotations

import pytest

from queue_service import JobQueue, ValidationError
from queue_service.core.errors import ConfigurationError
from queue_service.core.registry import JobType, Registry
from queue_service.core.settings import Settings

TOKEN = "t0ken"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def make_queue(clock, ran: list | None = None) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)
    ran = ran if ran is not None else []

    @queue.job_type("RESIZE", queue="images")
    def resize(payload, job):
        ran.append(("RESIZE", job.id))

    @queue.job_type("EMAIL")
    def email(payload, job):
        ran.append(("EMAIL", job.id))

    return queue


def test_a_job_goes_to_its_types_queue_unless_add_job_says_otherwise(make_app, clock):
    app, queue = make_app(make_queue(clock))
    with app.app_context():
        assert queue.get_job(queue.add_job("RESIZE", {})).queue == "images"
        assert queue.get_job(queue.add_job("EMAIL", {})).queue == "default"
        assert queue.get_job(queue.add_job("EMAIL", {}, queue="bulk-mail")).queue == "bulk-mail"
        assert queue.get_job_status(queue.add_job("RESIZE", {}))["queue"] == "images"


@pytest.mark.parametrize("name", ["", "Images", "a" * 41, "a b", "ü", 7])
def test_a_bad_queue_name_is_refused_and_nothing_is_written(make_app, clock, name):
    app, queue = make_app(make_queue(clock))
    with app.app_context():
        with pytest.raises(ValidationError) as caught:
            queue.add_job("EMAIL", {}, queue=name)
        assert set(caught.value.messages) == {"queue"}
        assert queue.get_queue_stats()["total"] == 0


def test_a_type_with_a_bad_queue_name_is_refused_at_registration(clock):
    queue = JobQueue(clock=clock, builtins=False)
    with pytest.raises(ValueError, match="queue names"):
        queue.job_type("X", queue="No Spaces")(lambda data, job: None)
    assert "X" not in queue.registry
    # The check is the registry's (core): add_job then takes a type's queue as valid.
    with pytest.raises(ValueError, match="queue names"):
        Registry().add(JobType("X", lambda data, job: None, queue="No Spaces"))


def test_a_worker_on_default_leaves_images_jobs_to_a_worker_on_images(make_app, clock):
    ran: list = []
    app, queue = make_app(make_queue(clock, ran), QUEUE_WORKER_QUEUES="default")
    with app.app_context():
        image_job = queue.add_job("RESIZE", {})
        email_job = queue.add_job("EMAIL", {})
        web = queue.state().runtime.make_worker()
        assert web.run_once().id == email_job
        assert web.run_once() is None  # the images job is not its to take
        assert queue.get_job_status(image_job)["status"] == "pending"
        standalone = queue.state().runtime.make_worker()
        standalone.queues = ("images",)
        assert standalone.run_once().id == image_job
    assert [name for name, _ in ran] == ["EMAIL", "RESIZE"]


def test_worker_queues_setting():
    assert Settings.from_config({}).worker_queues is None
    assert Settings.from_config({"QUEUE_WORKER_QUEUES": "*"}).worker_queues is None
    assert Settings.from_config({"QUEUE_WORKER_QUEUES": "images, default,images"}).worker_queues == ("images",
                                                                                                     "default")
    assert Settings.from_config({"QUEUE_WORKER_QUEUES": ["a"]}).worker_queues == ("a",)
    with pytest.raises(ConfigurationError, match="QUEUE_WORKER_QUEUES"):
        Settings.from_config({"QUEUE_WORKER_QUEUES": "Bad Name"})


def test_rest_takes_a_queue_lists_by_queue_and_shows_the_backlog_per_queue(make_app, clock):
    app, queue = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False,
                          QUEUE_WORKER_QUEUES="default")
    client = app.test_client()
    created = client.post("/api/queue/jobs", json={"type": "EMAIL", "payload": {}, "queue": "bulk"}, headers=ADMIN)
    assert created.status_code == 201, created.get_json()
    job_id = created.get_json()["id"]
    assert client.get(f"/api/queue/job/{job_id}", headers=ADMIN).get_json()["queue"] == "bulk"
    bad = client.post("/api/queue/jobs", json={"type": "EMAIL", "payload": {}, "queue": "NO"}, headers=ADMIN)
    assert bad.status_code == 400 and set(bad.get_json()["details"]) == {"queue"}
    client.post("/api/queue/jobs", json={"type": "RESIZE", "payload": {}}, headers=ADMIN)
    clock.advance(30)
    listed = client.get("/api/queue/jobs?queue=bulk", headers=ADMIN).get_json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    assert client.get("/api/queue/jobs?queue=NOPE", headers=ADMIN).status_code == 400
    stats = client.get("/api/queue/stats", headers=ADMIN).get_json()["stats"]
    assert stats["pending"] == 2  # the seed's totals stay
    assert stats["queues"]["images"]["pending"] == 1 and stats["queues"]["images"]["oldestPendingAge"] == 30
    assert stats["queues"]["bulk"]["pending"] == 1
    health = client.get("/api/queue/health").get_json()
    assert health["worker"]["queues"] == ["default"]


def test_cli_lists_by_queue_and_refuses_a_bad_queue_list(make_app, clock):
    app, queue = make_app(make_queue(clock))
    runner = app.test_cli_runner()
    with app.app_context():
        image_job = queue.add_job("RESIZE", {})
        queue.add_job("EMAIL", {})
    listed = runner.invoke(args=["queue", "list", "--queue", "images", "--json"])
    assert listed.exit_code == 0, listed.output
    assert image_job in listed.output and listed.output.count('"id"') == 1
    refused = runner.invoke(args=["queue", "worker", "--queues", "Bad Name"])
    assert refused.exit_code == 2 and "--queues" in refused.output


# -- bulk enqueue (issue 18) ---------------------------------------------------------------
def test_add_jobs_validates_everything_before_writing_anything(make_app, clock):
    app, queue = make_app(make_queue(clock))
    with app.app_context():
        with pytest.raises(ValidationError) as caught:
            queue.add_jobs([{"type": "EMAIL", "payload": {}}, {"type": "NOPE", "payload": {}},
                            {"type": "EMAIL", "payload": {}, "priority": "high"}, "not a dict",
                            {"type": "EMAIL", "payload": {}, "colour": "red"}])
        assert set(caught.value.messages["jobs"]) == {1, 2, 3, 4}
        assert "type" in caught.value.messages["jobs"][1] and "priority" in caught.value.messages["jobs"][2]
        assert queue.get_queue_stats()["total"] == 0
        with pytest.raises(ValidationError):
            queue.add_jobs([])
        ids = queue.add_jobs([{"type": "EMAIL", "payload": {}, "idempotency_key": "k"},
                              {"type": "RESIZE", "payload": {}, "priority": 5},
                              {"type": "EMAIL", "payload": {}, "idempotency_key": "k"}])
        assert ids[0] == ids[2] and len(set(ids)) == 2
        assert queue.get_job(ids[1]).queue == "images" and queue.get_job(ids[1]).priority == 5


def test_rest_bulk_enqueue(make_app, clock):
    app, queue = make_app(make_queue(clock), QUEUE_ADMIN_TOKEN=TOKEN, QUEUE_DEVELOPMENT=False)
    client = app.test_client()
    body = {"jobs": [{"type": "EMAIL", "payload": {}, "idempotencyKey": "a"},
                     {"type": "RESIZE", "payload": {}, "delay": 60}]}
    created = client.post("/api/queue/jobs", json=body, headers=ADMIN)
    assert created.status_code == 201, created.get_json()
    answers = created.get_json()["jobs"]
    assert [a["status"] for a in answers] == ["pending", "pending"]
    with app.app_context():
        assert queue.get_job(answers[1]["id"]).run_at > queue.get_job(answers[0]["id"]).run_at
    bad = client.post("/api/queue/jobs", json={"jobs": [{"type": "EMAIL", "payload": {}},
                                                        {"type": "EMAIL", "payload": {}, "runAt": "soon"},
                                                        {"type": "EMAIL", "payload": {}, "maxRetries": -1}]},
                      headers=ADMIN)
    assert bad.status_code == 400
    details = bad.get_json()["details"]["jobs"]
    assert set(details) == {"1", "2"} and "runAt" in details["1"] and "maxRetries" in details["2"]
    for wrong in ({"jobs": []}, {"jobs": {"a": 1}}, {"jobs": [{}] * 1001}, {"jobs": [1], "type": "EMAIL"}):
        answer = client.post("/api/queue/jobs", json=wrong, headers=ADMIN)
        assert answer.status_code == 400, wrong
    with app.app_context():
        assert queue.get_queue_stats()["total"] == 2


def test_a_schedule_enqueues_on_its_queue(make_app, clock):
    queue = make_queue(clock)
    queue.periodic("EMAIL", {}, every=60, name="digest", queue="bulk")
    queue.periodic("RESIZE", {}, every=60, name="thumbs")  # the type's queue
    with pytest.raises(ValueError, match="queue names"):
        queue.periodic("EMAIL", {}, every=60, name="bad", queue="Not Valid")
    app, queue = make_app(queue)
    with app.app_context():
        state = queue.state()
        digest, thumbs = queue.schedules.get("digest"), queue.schedules.get("thumbs")
        now = clock.now()
        assert digest.make_job(now, now, 3, [1.0]).queue == "bulk"
        assert thumbs.make_job(now, now, 3, [1.0]).queue == "images"
        rows = {row["name"]: row for row in state.service.schedules()}
        assert rows["digest"]["queue"] == "bulk" and rows["thumbs"]["queue"] == "images"
