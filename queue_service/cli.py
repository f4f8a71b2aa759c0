"""``flask queue ...``: run a standalone worker and operate the queue."""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading

import click
from flask import current_app
from flask.cli import AppGroup

from .errors import InvalidTransition, JobNotFound, ValidationError

queue_cli = AppGroup("queue", help="Operate the job queue.")


def _state():
    return current_app.extensions["queue_service"]


def _print(data, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            click.echo(f"{key:<{width}}  {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    else:
        click.echo(str(data))


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@queue_cli.command("worker")
def worker_command() -> None:
    """Run the worker and scheduler in this process until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state = _state()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    state.start(daemon=True)
    click.echo(f"queue worker {state.worker.worker_id} running (store: {state.store.kind}); Ctrl-C stops it")
    while not stop.wait(1.0):
        if not state.running:
            _fail("a queue thread died")
    clean = state.shutdown()
    click.echo("stopped" if clean else "stopped; the in-flight job went back to pending")


@queue_cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_command(as_json: bool) -> None:
    """Job counts by status and the oldest ages."""
    _print(_state().queue.get_queue_stats(), as_json)


@queue_cli.command("cleanup")
@click.option("--json", "as_json", is_flag=True)
def cleanup_command(as_json: bool) -> None:
    """Requeue jobs whose worker stopped sending heartbeats."""
    _print({"requeuedCount": _state().queue.cleanup_stuck_jobs()}, as_json)


@queue_cli.command("enqueue")
@click.argument("job_type")
@click.argument("payload")
@click.option("--priority", type=int, default=0)
@click.option("--delay", type=float, default=None, help="Seconds before the job may run.")
@click.option("--json", "as_json", is_flag=True)
def enqueue_command(job_type: str, payload: str, priority: int, delay: float | None, as_json: bool) -> None:
    """Add a job: TYPE and its payload as a JSON object."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"payload is not valid JSON: {exc}")
    try:
        job_id = _state().queue.add_job(job_type, data, priority=priority, delay=delay)
    except ValidationError as exc:
        _fail(json.dumps(exc.messages))
    _print({"id": job_id, "status": "pending"}, as_json)


def _transition(operation: str, job_id: str, as_json: bool) -> None:
    queue = _state().queue
    try:
        job = queue.retry(job_id) if operation == "retry" else queue.cancel(job_id)
    except JobNotFound:
        _fail(f"no job with id {job_id}")
    except InvalidTransition as exc:
        _fail(str(exc))
    _print({"id": job.id, "status": str(job.status)}, as_json)


@queue_cli.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def retry_command(job_id: str, as_json: bool) -> None:
    """Send a failed job back to pending."""
    _transition("retry", job_id, as_json)


@queue_cli.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def cancel_command(job_id: str, as_json: bool) -> None:
    """Cancel a pending job."""
    _transition("cancel", job_id, as_json)
