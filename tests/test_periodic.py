"""Periodic jobs with the manual clock: slots, DST, catch-up, registration, removal.

The scheduler is ticked by hand (``Scheduler.tick``); the store is the
``make_app`` SQLite file (the contract suite runs ``enqueue_slot`` over both
stores).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import marshmallow
import pytest
from marshmallow import fields

from queue_service import JobQueue, JobStatus, ManualClock, ValidationError
from queue_service.core.errors import InvalidSchedule
from queue_service.core.periodic import FORGET_AFTER, Schedule, make_schedule
from queue_service.core.registry import JobType, Registry
from queue_service.core.settings import Settings
from queue_service.core.submission import build_job
from tests.test_schema_fingerprint import CountingValidator

UTC = timezone.utc


class Report(marshmallow.Schema):
    to = fields.Email(required=True)


def new_queue(clock) -> JobQueue:
    queue = JobQueue(clock=clock, builtins=False)
    queue.job_type("TICK")(lambda payload, job: "ok")
    queue.job_type("REPORT", schema=Report)(lambda payload, job: "sent")
    return queue


def scheduled(queue, app) -> list:
    """The jobs schedules enqueued, oldest slot first."""
    jobs = [j for j in queue.list_jobs(limit=100, app=app) if j.scheduled_by]
    return sorted(jobs, key=lambda j: j.slot)


def slots(queue, app) -> list[datetime]:
    return [j.slot for j in scheduled(queue, app)]


@pytest.fixture
def at(clock):
    """Move the manual clock to an absolute UTC time."""
    def move(when: datetime) -> None:
        clock.advance((when - clock.now()).total_seconds())
    return move


def schedule(cron=None, every=None, tz="UTC") -> Schedule:
    return Schedule("s", JobType("TICK", lambda p, j: None), {}, cron=cron, every=every, tz=tz)


# -- slots ------------------------------------------------------------------------
def test_interval_slots_are_multiples_of_the_period(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60)
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    start = clock.now()
    for _ in range(5):
        scheduler.tick()
        scheduler.tick()  # a second tick in the same slot enqueues nothing
        clock.advance(20)
    # 0, 20, 40 s are slot 0; 60, 80 are slot 1
    assert slots(queue, app) == [start, start + timedelta(seconds=60)]
    job = scheduled(queue, app)[0].to_dict()
    assert job["scheduledBy"] == "TICK@every:60s" and job["slot"] == "2030-01-01T00:00:00Z"


def test_scheduler_wakes_for_the_next_slot(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=0.5)
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    scheduler.tick()
    clock.advance(0.2)
    assert scheduler.seconds_until_next_tick() == pytest.approx(0.3)  # not the 300 s sweep interval


def test_fractional_interval(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=timedelta(milliseconds=250))
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    for _ in range(8):
        scheduler.tick()
        clock.advance(0.125)
    assert len(slots(queue, app)) == 4


def test_cron_slots(make_app, clock, at):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, cron="*/15 * * * *", name="quarter")
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    at(datetime(2030, 1, 1, 0, 7, tzinfo=UTC))
    scheduler.tick()  # 00:00 was before the schedule was first seen: not run
    for minute in (14, 15, 16, 29, 30, 44, 45):
        at(datetime(2030, 1, 1, 0, minute, 0, 500000, tzinfo=UTC))
        scheduler.tick()
    assert [s.minute for s in slots(queue, app)] == [15, 30, 45]


def test_cron_latest_slot_includes_the_exact_instant():
    s = schedule(cron="0 3 * * *")
    three = datetime(2030, 1, 1, 3, tzinfo=UTC)
    assert s.latest_slot(three) == three
    assert s.latest_slot(three - timedelta(microseconds=1)) == three - timedelta(days=1)
    assert s.next_slot(three) == three + timedelta(days=1)


def test_cron_in_a_named_time_zone_across_dst(make_app, clock, at):
    """02:30 Europe/Berlin daily: on 2030-03-31 02:30 does not exist (clocks
    jump 02:00 -> 03:00) and croniter fires at 03:00 local; in October 02:30
    happens twice and croniter fires at both. Otherwise 02:30 local is 01:30
    UTC in winter and 00:30 UTC in summer."""
    berlin = ZoneInfo("Europe/Berlin")
    queue = new_queue(clock)
    queue.periodic("TICK", {}, cron="30 2 * * *", tz="Europe/Berlin", name="nightly")
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    at(datetime(2030, 3, 29, 12, tzinfo=UTC))
    scheduler.tick()
    for _ in range(4 * 24 * 4):  # every 15 minutes through 2030-04-02 12:00
        clock.advance(900)
        scheduler.tick()
    local = [s.astimezone(berlin) for s in slots(queue, app)]
    assert [(d.day, d.hour, d.minute) for d in local] == [(30, 2, 30), (31, 3, 0), (1, 2, 30), (2, 2, 30)]
    assert [s.hour for s in slots(queue, app)] == [1, 1, 0, 0]  # UTC

    s = schedule(cron="30 2 * * *", tz="Europe/Berlin")
    autumn = [s.next_slot(datetime(2030, 10, 26, 12, tzinfo=UTC))]
    for _ in range(2):
        autumn.append(s.next_slot(autumn[-1]))
    assert [(d.day, d.hour, d.minute) for d in autumn] == [(27, 0, 30), (27, 1, 30), (28, 1, 30)]


# -- catch-up -----------------------------------------------------------------------
def test_catchup_once_after_downtime_runs_one_job(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60)
    app, _ = make_app(queue)
    runtime = app.extensions["queue_service"].runtime
    runtime.make_scheduler(None).tick()
    clock.advance(3600 + 30)  # asleep for an hour: 60 slots missed
    woken = runtime.make_scheduler(None)  # a new process after the wake-up
    woken.tick()
    woken.tick()
    assert len(slots(queue, app)) == 2  # the first slot, then one catch-up run
    assert slots(queue, app)[-1] == datetime(2030, 1, 1, 1, 0, tzinfo=UTC)  # the latest missed slot
    clock.advance(30)
    woken.tick()
    assert len(slots(queue, app)) == 3  # and on schedule again


def test_catchup_skip_waits_for_the_next_slot(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60, catchup="skip")
    app, _ = make_app(queue)
    runtime = app.extensions["queue_service"].runtime
    runtime.make_scheduler(None).tick()
    clock.advance(3600 + 40)
    woken = runtime.make_scheduler(None)
    woken.tick()
    assert len(slots(queue, app)) == 1  # 01:00 is 40 s late: skipped
    clock.advance(20)
    woken.tick()
    assert slots(queue, app)[-1] == datetime(2030, 1, 1, 1, 1, tzinfo=UTC)


# -- registration ---------------------------------------------------------------------
def test_invalid_payload_is_refused_at_registration(clock):
    queue = new_queue(clock)
    with pytest.raises(ValidationError) as caught:
        queue.periodic("REPORT", {"to": "not-an-address"}, cron="0 8 * * 1")
    assert "to" in caught.value.messages["payload"]
    assert len(queue.schedules) == 0


@pytest.mark.parametrize("kwargs, word", [
    ({"cron": "0 8 * *"}, "five fields"), ({"cron": "0 8 * * * *"}, "five fields"),
    ({"cron": "61 8 * * *"}, "cron"), ({"every": 0}, "every"), ({"every": "60"}, "every"),
    ({}, "exactly one"), ({"cron": "* * * * *", "every": 5}, "exactly one"),
    ({"every": 5, "tz": "Mars/Olympus"}, "time zone"), ({"every": 5, "catchup": "all"}, "catchup"),
    ({"every": 5, "priority": "high"}, "priority"),
])
def test_bad_schedules_are_refused_at_registration(clock, kwargs, word):
    queue = new_queue(clock)
    with pytest.raises(ValueError, match=word):
        queue.periodic("TICK", {}, **kwargs)


def test_unknown_type_is_refused(clock):
    with pytest.raises(ValidationError):
        new_queue(clock).periodic("NOPE", {}, every=5)


def test_duplicate_name_is_refused(clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60)
    with pytest.raises(ValueError, match="already registered"):
        queue.periodic("TICK", {}, every=60)
    queue.periodic("TICK", {}, every=60, name="another")  # a name of its own is fine
    with pytest.raises(ValueError, match="already registered"):
        queue.periodic("REPORT", {"to": "a@b.example"}, every=5, name="another")


def test_decorator_with_job_type(make_app, clock):
    queue = JobQueue(clock=clock, builtins=False)

    @queue.periodic("NIGHTLY", cron="0 3 * * *", tz="Europe/Berlin")
    @queue.job_type("NIGHTLY")
    def nightly(payload, job):
        return "done"

    assert nightly(None, None) == "done"
    assert queue.schedules.names() == ["NIGHTLY@cron:0 3 * * *"]


def test_nightly_cleanup_in_one_line(make_app, clock, at):
    queue = JobQueue(clock=clock)  # with the built-in types
    queue.periodic("CLEANUP", {"task": "purge_jobs", "olderThan": "30d"}, cron="0 3 * * *")
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    scheduler.tick()
    at(datetime(2030, 1, 1, 3, 0, 0, 200000, tzinfo=UTC))
    scheduler.tick()
    [job] = scheduled(queue, app)
    assert job.type == "CLEANUP" and job.payload == {"task": "purge_jobs", "olderThan": "30d"}


def test_a_schedule_passes_add_jobs_checks_in_the_core():
    """core.periodic.make_schedule (no JobQueue, no Flask) refuses what add_job
    refuses, with add_job's messages, every problem at once; InvalidSchedule is a
    ValidationError and a ValueError (the two contracts periodic() had)."""
    registry = Registry()
    registry.add(JobType("REPORT", lambda payload, job: None, Report()))
    with pytest.raises(InvalidSchedule) as caught:
        make_schedule(registry, "REPORT", {"to": "not-an-address"}, every=60, priority=10**9)
    assert isinstance(caught.value, ValidationError) and isinstance(caught.value, ValueError)
    with pytest.raises(ValidationError) as by_add_job:
        build_job(registry, Settings(), ManualClock().now(), "REPORT", {"to": "not-an-address"},
                  priority=10**9)
    assert caught.value.messages == by_add_job.value.messages
    assert set(caught.value.messages) == {"payload", "priority"}


def test_an_unstorable_payload_is_refused_at_registration(clock):
    """The storable check add_job makes applies to a schedule's payload too:
    refused when periodic() is called, not at the first slot."""
    queue = new_queue(clock)
    for payload in ({"n": 2**70}, {"at": object()}):
        with pytest.raises(ValidationError) as caught:
            queue.periodic("TICK", payload, every=60)
        assert "payload" in caught.value.messages
    assert len(queue.schedules) == 0


def test_a_slot_job_carries_its_type_schema_fingerprint(make_app, clock):
    """A slot's job is made as add_job's is: it stores its type's schema
    fingerprint, so the worker skips loading the payload again when loading is
    the identity (as tests/test_schema_fingerprint.py checks for add_job)."""
    counter = CountingValidator()

    class Plain(marshmallow.Schema):
        n = fields.Integer(required=True, strict=True, validate=counter)

    queue = JobQueue(clock=clock, builtins=False)
    seen: list = []
    queue.job_type("PLAIN", schema=Plain)(lambda payload, job: seen.append(payload))
    queue.periodic("PLAIN", {"n": 3}, every=60)
    app, _ = make_app(queue)
    state = app.extensions["queue_service"]
    spec = queue.registry.get("PLAIN")
    assert spec.load_is_identity and counter.calls == 1  # the load at registration
    state.runtime.make_scheduler(None).tick()
    [job] = scheduled(queue, app)
    assert job.schema_fingerprint == spec.fingerprint is not None
    state.runtime.make_worker().run_once()
    assert counter.calls == 1, "the worker loaded a slot's payload stored under the same identity schema"
    assert seen == [{"n": 3}]
    assert state.runtime.store.get(job.id).status is JobStatus.COMPLETED


# -- removal ---------------------------------------------------------------------------
def test_removed_schedule_stops_and_its_state_is_purged_later(make_app, app_store, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60, name="gone-soon")
    queue.periodic("TICK", {}, every=3600, name="stays")
    app, _ = make_app(queue)
    app.extensions["queue_service"].runtime.make_scheduler(None).tick()
    assert set(app_store.schedule_states()) == {"gone-soon", "stays"}

    # The next deploy no longer has "gone-soon".
    from flask import Flask

    redeployed = new_queue(clock)
    redeployed.periodic("TICK", {}, every=3600, name="stays")
    app2 = Flask("redeployed")
    app2.config.update(QUEUE_AUTOSTART=False, TESTING=True)
    redeployed.init_app(app2, store=app_store)
    scheduler = app2.extensions["queue_service"].runtime.make_scheduler(None)
    for _ in range(10):
        clock.advance(60)
        scheduler.tick()
    assert [j.scheduled_by for j in scheduled(redeployed, app2)].count("gone-soon") == 1  # stopped
    clock.advance(FORGET_AFTER.total_seconds() - 600)
    scheduler.sweep(clock.now())
    assert "gone-soon" in app_store.schedule_states()  # kept for a while
    clock.advance(1200)
    scheduler.sweep(clock.now())
    assert set(app_store.schedule_states()) == {"stays"}  # purged; "stays" is seen at every sweep


# -- visible -----------------------------------------------------------------------------
def test_schedules_route_and_cli(make_app, clock):
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60, name="minutely")
    queue.periodic("REPORT", {"to": "a@b.example"}, cron="0 8 * * 1", tz="Europe/Berlin", name="monday")
    app, _ = make_app(queue)
    app.extensions["queue_service"].runtime.make_scheduler(None).tick()
    answer = app.test_client().get("/api/queue/schedules")
    assert answer.status_code == 200
    rows = {row["name"]: row for row in answer.get_json()["schedules"]}
    assert rows["minutely"]["every"] == 60 and rows["minutely"]["cron"] is None
    assert rows["minutely"]["lastSlot"] == "2030-01-01T00:00:00Z"
    assert rows["minutely"]["lastJobStatus"] == "pending" and rows["minutely"]["lastJobId"]
    assert rows["minutely"]["nextRun"] == "2030-01-01T00:01:00Z"
    assert rows["monday"]["cron"] == "0 8 * * 1" and rows["monday"]["tz"] == "Europe/Berlin"
    assert rows["monday"]["lastSlot"] is None and rows["monday"]["nextRun"] == "2030-01-07T07:00:00Z"

    result = app.test_cli_runner().invoke(args=["queue", "schedules"])
    assert result.exit_code == 0, result.output
    assert "minutely" in result.output and "cron 0 8 * * 1 (Europe/Berlin)" in result.output
    assert "next run 2030-01-01T00:01:00Z" in result.output


def test_schedules_route_needs_admin(make_app, clock):
    app, _ = make_app(new_queue(clock), QUEUE_DEVELOPMENT=False, QUEUE_ADMIN_TOKEN="t")
    assert app.test_client().get("/api/queue/schedules").status_code == 401




def test_schedules_in_json_and_in_prometheus(make_app, clock):
    pytest.importorskip("prometheus_client")
    queue = new_queue(clock)
    queue.periodic("TICK", {}, every=60, name="minutely")
    app, _ = make_app(queue)
    scheduler = app.extensions["queue_service"].runtime.make_scheduler(None)
    scheduler.tick()
    clock.advance(60)
    scheduler.tick()
    result = app.test_cli_runner().invoke(args=["queue", "schedules", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert (row["name"], row["runs"], row["lastSlot"]) == ("minutely", 2, "2030-01-01T00:01:00Z")
    text = app.test_client().get("/api/queue/metrics").get_data(as_text=True)
    assert 'queue_schedule_runs_total{schedule="minutely",type="TICK"} 2.0' in text
    [line] = [x for x in text.splitlines() if x.startswith("queue_schedule_last_run_timestamp_seconds{")]
    assert float(line.split()[-1]) == datetime(2030, 1, 1, 0, 1, tzinfo=UTC).timestamp()
