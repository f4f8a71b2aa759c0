"""Job ids: canonical random UUIDs, built without a UUID object."""
import uuid

from queue_service.core.jobs import new_job_id
from queue_service.web.schemas import JOB_ID


def test_new_job_ids_are_canonical_version_4_uuids():
    ids = [new_job_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        parsed = uuid.UUID(job_id)
        assert str(parsed) == job_id  # lower-case, hyphenated, 36 characters
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert JOB_ID.match(job_id)
    # Every variant digit occurs: the two random bits under it are kept.
    assert {job_id[19] for job_id in ids} == set("89ab")
