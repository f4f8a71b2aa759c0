"""The worker's second load of a payload: skipped only when the type's schema
is unchanged since enqueue (its fingerprint) and loading is the identity."""
from __future__ import annotations

import pytest
from flask import Flask
from marshmallow import Schema, fields, validate

from queue_service import JobQueue, JobStatus
from queue_service.core.fingerprint import dump_is_identity, load_is_identity, schema_fingerprint
from queue_service.core.registry import JobType


class CountingValidator:
    """A validator that counts its calls: each call is one load of the field.
    Its repr is fixed, so the fingerprint is the same in every process."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value):
        self.calls += 1
        return True

    def __repr__(self) -> str:
        return "<CountingValidator>"


@pytest.fixture
def run_one(make_app, clock):
    """(queue, app, worker) for a queue whose job types the test registers."""
    def build(register):
        queue = JobQueue(clock=clock, builtins=False)
        seen: list = []
        register(queue, seen)
        app, _ = make_app(queue)
        state = app.extensions["queue_service"]
        return queue, app, state, state.runtime.make_worker(), seen
    return build


def test_identity_schema_skips_the_second_load(run_one):
    counter = CountingValidator()

    class Plain(Schema):
        n = fields.Integer(required=True, strict=True, validate=counter)
        note = fields.String(load_default="", validate=validate.Length(max=20))
        tags = fields.List(fields.String())

    def register(queue, seen):
        @queue.job_type("PLAIN", schema=Plain)
        def plain(payload, job):
            seen.append(payload)
    queue, app, state, worker, seen = run_one(register)
    assert queue.registry.get("PLAIN").load_is_identity
    job_id = queue.add_job("PLAIN", {"n": 3, "tags": ["a"]}, app=app)
    assert counter.calls == 1  # the load at enqueue
    worker.run_once()
    assert counter.calls == 1, "the worker loaded a payload stored under the same identity schema"
    assert seen == [{"n": 3, "note": "", "tags": ["a"]}]
    assert state.runtime.store.get(job_id).status is JobStatus.COMPLETED


def test_a_schema_changed_since_enqueue_still_refuses_the_payload(run_one):
    class Before(Schema):
        n = fields.Integer(required=True, strict=True)

    class After(Schema):  # the next deploy: n is now at most 10
        n = fields.Integer(required=True, strict=True, validate=validate.Range(max=10))

    def register(queue, seen):
        @queue.job_type("CHANGES", schema=Before)
        def changes(payload, job):
            seen.append(payload)
    queue, app, state, worker, seen = run_one(register)
    job_id = queue.add_job("CHANGES", {"n": 21}, app=app)
    before = queue.registry.get("CHANGES")
    after = JobType("CHANGES", before.handler, After())
    assert after.load_is_identity and after.fingerprint != before.fingerprint
    queue.registry._types["CHANGES"] = after  # what a restart with the new code registers
    worker.run_once()
    got = state.runtime.store.get(job_id)
    assert got.status is JobStatus.FAILED and "payload no longer validates" in got.error and seen == []


def test_a_non_identity_schema_is_loaded_again(run_one):
    counter = CountingValidator()

    class Dated(Schema):
        at = fields.DateTime(required=True, validate=counter)

    def register(queue, seen):
        @queue.job_type("DATED", schema=Dated)
        def dated(payload, job):
            seen.append(payload)
    queue, app, state, worker, seen = run_one(register)
    assert not queue.registry.get("DATED").load_is_identity
    queue.add_job("DATED", {"at": "2026-01-02T03:04:05+00:00"}, app=app)
    assert counter.calls == 1
    worker.run_once()
    assert counter.calls == 2
    assert seen[0]["at"].year == 2026  # the handler gets the loaded datetime, not the stored text


def test_what_makes_a_schema_non_identity():
    class Renamed(Schema):
        n = fields.Integer(data_key="number")

    class Hooked(Schema):
        n = fields.Integer()

        from marshmallow import post_load

        @post_load
        def wrap(self, data, **kwargs):
            return data

    class Nested(Schema):
        inner = fields.Nested(Renamed)

    class Custom(fields.String):
        pass

    class Subclassed(Schema):
        s = Custom()

    class ListOfDates(Schema):
        at = fields.List(fields.DateTime())

    for schema in (Renamed, Hooked, Nested, Subclassed, ListOfDates):
        assert not load_is_identity(schema()), schema.__name__

    class Fine(Schema):
        a = fields.Raw()
        b = fields.Dict(keys=fields.String(), values=fields.Float())
        c = fields.Boolean(allow_none=True)

    assert load_is_identity(Fine())
    assert not load_is_identity(None) and schema_fingerprint(None) is None


def test_fingerprint_follows_the_fields_and_validators():
    def make(max_len, required=False):
        class S(Schema):
            s = fields.String(required=required, validate=validate.Length(max=max_len))
        return S()

    assert schema_fingerprint(make(5)) == schema_fingerprint(make(5))
    assert schema_fingerprint(make(5)) != schema_fingerprint(make(6))
    assert schema_fingerprint(make(5)) != schema_fingerprint(make(5, required=True))

    def with_lambda():
        class S(Schema):
            s = fields.String(validate=lambda v: True)
        return S()
    # a lambda's repr holds its address: two definitions differ, which only means "load again"
    assert schema_fingerprint(with_lambda()) != schema_fingerprint(with_lambda())


def test_fingerprint_is_the_same_in_another_process():
    """A web process enqueues, another gunicorn worker runs the job: with
    validators whose repr is stable the two agree, so the skip applies there."""
    import subprocess
    import sys
    from pathlib import Path

    from bench.subjects import NoopSchema

    code = ("from bench.subjects import NoopSchema; from queue_service.core.fingerprint import schema_fingerprint;"
            " print(schema_fingerprint(NoopSchema()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60).stdout.strip()
    assert out == schema_fingerprint(NoopSchema())
    assert load_is_identity(NoopSchema())


def test_dump_is_skipped_only_where_it_would_return_the_loaded_payload():
    """Enqueue stores ``load(x)`` without the dump when ``dump_is_identity``:
    for such schemas the dump must equal the load, for the others it may differ."""
    from marshmallow import INCLUDE

    class Plain(Schema):
        s = fields.String(required=True)
        i = fields.Integer()
        f = fields.Float()
        b = fields.Boolean(allow_none=True)
        tags = fields.List(fields.String())
        meta = fields.Dict(keys=fields.String(), values=fields.Raw())
        note = fields.String(load_default="")

    class DumpDefault(Schema):
        s = fields.String()
        extra = fields.String(dump_default="added by dump")

    class Included(Schema):
        class Meta:
            unknown = INCLUDE
        s = fields.String()

    class Dated(Schema):
        at = fields.DateTime()

    given = [{"s": "a"}, {"s": "a", "i": "7", "f": 2, "b": "true", "tags": ["x"], "meta": {"k": [1, {"z": None}]}},
             {"s": "", "b": None, "f": 1.5}]
    schema = Plain()
    assert dump_is_identity(schema)
    for payload in given:
        assert schema.dump(schema.load(payload)) == schema.load(payload)

    assert not dump_is_identity(DumpDefault())
    assert DumpDefault().dump(DumpDefault().load({"s": "a"})) != DumpDefault().load({"s": "a"})
    assert not dump_is_identity(Included())
    assert Included().dump(Included().load({"s": "a", "x": 1})) != Included().load({"s": "a", "x": 1})
    assert not dump_is_identity(Dated()) and not dump_is_identity(None)


def test_a_payload_stored_without_the_dump_reads_back_as_given(tmp_path):
    queue = JobQueue(builtins=False)

    class Plain(Schema):
        n = fields.Integer(required=True)
        f = fields.Float()
        tags = fields.List(fields.String())

    queue.job_type("PLAIN_STORE", schema=Plain)(lambda payload, job: None)
    assert queue.registry.get("PLAIN_STORE").dump_is_identity
    app = Flask(__name__)
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_DATABASE_URL=f"sqlite:///{tmp_path / 'q.db'}")
    queue.init_app(app)
    given = {"n": "3", "f": 2, "tags": ["a", "b"]}
    with app.app_context():
        job = queue.get_job(queue.add_job("PLAIN_STORE", given))
    assert job.payload == {"n": 3, "f": 2.0, "tags": ["a", "b"]} == Plain().dump(Plain().load(given))
    assert given == {"n": "3", "f": 2, "tags": ["a", "b"]}  # the caller's dict is not changed
