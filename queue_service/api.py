"""The REST blueprint. (Routes are built out in the REST API issue.)"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

blueprint = Blueprint("queue_service", __name__)


def _queue_state():
    return current_app.extensions["queue_service"]


@blueprint.get("/job/<job_id>")
def get_job(job_id: str):
    state = _queue_state()
    job = state.store.get(job_id)
    if job is None:
        return jsonify(error="job not found", details={"id": job_id}), 404
    return jsonify(job.to_dict())
