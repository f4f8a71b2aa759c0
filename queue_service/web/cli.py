"""``flask queue ...``: run a standalone worker and operate the queue.

Output is for people by default and JSON with ``--json`` (for scripts). Any
error ends the command with one line on stderr, ``Error: ...``, and a
non-zero exit: 1 for a refused operation (unknown id, wrong state, invalid
job, store down), 2 for a malformed command line.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import signal
import sys
import threading
from typing import Any, Callable

import click
from flask.cli import AppGroup

from ..core.errors import (ConfigurationError, InvalidTransition, JobNotFound, QueueError, StoreError, UnknownJobType,
                           ValidationError)
from ..core.jobs import Job, JobStatus, iso
from ..core.settings import as_queues
from .state import queue_state

ERROR_COLUMN_CHARS = 60
# Job values come from payloads and handler errors: strip terminal control
# sequences so a hostile value cannot rewrite the operator's screen.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class _UsageError(click.ClickException):
    exit_code = 2


class QueueCommand(click.Command):
    """A command whose usage errors are one line (click prints three)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _UsageError(exc.format_message()) from None


class QueueGroup(AppGroup):
    command_class = QueueCommand

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _UsageError(exc.format_message()) from None


queue_cli = QueueGroup("queue", help="Operate the job queue.")


MAX_ERROR_LINE_CHARS = 300


def _fail(message: str) -> None:
    line = " ".join(_clean(message).split())  # one line, whatever a driver put in its message
    if len(line) > MAX_ERROR_LINE_CHARS:
        line = line[: MAX_ERROR_LINE_CHARS - 1] + "…"
    click.echo(f"Error: {line}", err=True)
    sys.exit(1)


def _clean(value: Any) -> str:
    return _CONTROL.sub("?", str(value))


def _flatten(messages: Any, path: str = "") -> list[str]:
    """{"payload": {"to": ["Not a valid email address."]}} -> ["payload.to: Not a valid email address."]"""
    if isinstance(messages, dict):
        out: list[str] = []
        for key, value in messages.items():
            out += _flatten(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(messages, (list, tuple)):
        if all(isinstance(m, str) for m in messages):
            return [f"{path}: {' '.join(messages)}" if path else " ".join(messages)]
        return [line for m in messages for line in _flatten(m, path)]
    return [f"{path}: {messages}" if path else str(messages)]


def operation(func: Callable) -> Callable:
    """Turn the queue's errors into one line and exit status 1."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UnknownJobType as exc:
            _fail(f"unknown job type {exc.job_type!r} (registered: {', '.join(exc.registered) or 'none'})")
        except ValidationError as exc:
            _fail("invalid input: " + "; ".join(_flatten(exc.messages)))
        except JobNotFound as exc:
            _fail(f"no job with id {exc.args[0] if exc.args else '?'}")
        except InvalidTransition as exc:
            _fail(str(exc))
        except StoreError as exc:
            _fail(f"the job store did not answer: {exc}")
        except QueueError as exc:
            _fail(str(exc))
    return wrapper


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            rest = seconds % size
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            tail = f" {rest // smaller[1]}{smaller[0]}" if rest // smaller[1] else ""
            return f"{seconds // size}{unit}{tail}"
    return f"{seconds}s"


def _short(value: Any, width: int) -> str:
    text = _clean(" ".join(str(value).split())) if value is not None else ""
    return text if len(text) <= width else text[: width - 1] + "…"


# -- commands ------------------------------------------------------------------
@queue_cli.command("worker")
@click.option("--queues", default=None, metavar="A,B",
              help="The named queues to consume (default QUEUE_WORKER_QUEUES, else every queue: *).")
def worker_command(queues: str | None) -> None:
    """Run the worker and scheduler in this process until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runtime = queue_state().runtime
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        chosen = None if queues is None else as_queues(queues, "--queues")
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    if queues is not None:  # --queues beats QUEUE_WORKER_QUEUES ("*": every queue)
        runtime.worker_queues = chosen
    runtime.worker_kind = "standalone"
    runtime.start(daemon=True)
    consumed = ",".join(runtime.worker_queues) if runtime.worker_queues else "*"
    click.echo(f"queue worker {runtime.worker.worker_id} running (store: {runtime.store.kind}, queues: {consumed});"
               " Ctrl-C stops it")
    while not stop.wait(1.0):
        if not runtime.running:
            runtime.shutdown(0)
            _fail("a queue thread died")
    clean = runtime.shutdown()
    click.echo("stopped" if clean else "stopped; the in-flight job went back to pending")


@queue_cli.command("stats")
@json_option
@operation
def stats_command(as_json: bool) -> None:
    """Job counts by status, the oldest ages and the stuck jobs."""
    state = queue_state()
    stats = dict(state.service.stats())
    stats["stuck"] = len(state.service.stuck_jobs())
    if as_json:
        _echo_json(stats)
        return
    for status in JobStatus:
        click.echo(f"{status.value:<11} {stats[status.value]:>8}")
    click.echo(f"{'total':<11} {stats['total']:>8}")
    click.echo(f"oldest pending job waited    {_ago(stats['oldestPendingAge'])}")
    click.echo(f"oldest processing job runs   {_ago(stats['oldestProcessingAge'])}")
    note = f" (no heartbeat for {state.settings.stuck_after:g}s; `flask queue cleanup` requeues them)"
    click.echo(f"stuck jobs                   {stats['stuck']}{note if stats['stuck'] else ''}")


@queue_cli.command("list")
@click.option("--status", help="pending, processing, completed, failed or cancelled.")
@click.option("--type", "job_type", help="A registered job type, e.g. EMAIL_SEND.")
@click.option("--queue", "queue_name", help="A named queue, e.g. images.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--before", metavar="ID", help="Continue after this job (the next page).")
@json_option
@operation
def list_command(status: str | None, job_type: str | None, queue_name: str | None, limit: int,
                 before: str | None, as_json: bool) -> None:
    """Jobs, newest first."""
    state = queue_state()
    if job_type is not None and job_type not in state.service.registry:
        raise UnknownJobType(job_type, state.service.registry.names())
    jobs = state.service.list(status=status, job_type=job_type, limit=limit, before=before, queue=queue_name,
                              summary=not as_json)
    if as_json:
        _echo_json({"jobs": [job.to_dict() for job in jobs],
                    "next": jobs[-1].id if len(jobs) == limit else None})
        return
    if not jobs:
        click.echo("no jobs" + (" matching the filters" if status or job_type or queue_name or before else ""))
        return
    width = max(len(job.type) for job in jobs)
    click.echo(f"{'ID':<36}  {'TYPE':<{width}}  {'STATUS':<10}  {'PRI':>4}  {'ATTEMPT':<8}  {'CREATED':<24}  ERROR")
    for job in jobs:
        tries = f"{job.budget_attempt} of {job.max_retries + 1}"  # "attempt 3 of 4", as everywhere
        click.echo(f"{job.id:<36}  {_clean(job.type):<{width}}  {job.status.value:<10}  {job.priority:>4}  "
                   f"{tries:<8}  {iso(job.created_at) or '-':<24}  {_short(job.error, ERROR_COLUMN_CHARS)}")
    if len(jobs) == limit:
        click.echo(f"more: flask queue list --before {jobs[-1].id}"
                   + (f" --status {status}" if status else "") + (f" --type {job_type}" if job_type else ""))


def _show_text(job: Job, stuck: bool) -> None:
    def line(label: str, value: Any) -> None:
        click.echo(f"{label:<12} {_clean(value) if value is not None else '-'}")

    line("id", job.id)
    line("type", job.type)
    line("status", job.status.value + ("  (STUCK: no heartbeat; `flask queue cleanup` requeues it)"
                                       if stuck else ""))
    line("priority", job.priority)
    line("tries", f"{job.attempt_text} ({job.retry_count} of {job.max_retries} retries used)")
    for label, value in (("created", job.created_at), ("run at", job.run_at), ("processed", job.processed_at),
                         ("heartbeat", job.heartbeat_at), ("completed", job.completed_at)):
        line(label, iso(value))
    line("worker", job.worker_id)
    line("error", job.error)
    for label, value in (("payload", job.payload), ("progress", job.progress), ("result", job.result)):
        line(label, None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True))
    click.echo(f"attempts     {len(job.attempts)}")
    for number, attempt in enumerate(job.attempts, 1):
        started, ended = attempt.get("startedAt"), attempt.get("endedAt")
        outcome = attempt.get("outcome") or "running"
        text = (f"  {number}. {iso(started) or '-'} -> {iso(ended) or '…'}  {outcome}"
                f"  on {attempt.get('worker') or '-'}")
        if attempt.get("nextDelaySeconds") is not None:
            text += f"  (next try after {attempt['nextDelaySeconds']:g}s)"
        click.echo(_clean(text))
        if attempt.get("error"):
            click.echo(f"     error: {_clean(attempt['error'])}")


@queue_cli.command("show")
@click.argument("job_id")
@json_option
@operation
def show_command(job_id: str, as_json: bool) -> None:
    """One job: payload, attempts with their errors and delays, result."""
    service = queue_state().service
    job = service.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    stuck = service.is_stuck(job)
    if as_json:
        _echo_json({**job.to_dict(), "stuck": stuck})
    else:
        _show_text(job, stuck)


@queue_cli.command("cleanup")
@json_option
@operation
def cleanup_command(as_json: bool) -> None:
    """Requeue jobs whose worker stopped sending heartbeats."""
    count = queue_state().service.recover_stuck()
    if as_json:
        _echo_json({"requeuedCount": count})
    else:
        click.echo(f"recovered {count} stuck job(s)" if count else "no stuck jobs")


@queue_cli.command("schedules")
@json_option
@operation
def schedules_command(as_json: bool) -> None:
    """Periodic schedules: timing, next run, last slot and its job."""
    rows = queue_state().service.schedules()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no schedules registered")
    for row in rows:
        timing = f"cron {row['cron']} ({row['tz']})" if row["cron"] else f"every {row['every']:g}s"
        last = f"{row['lastSlot']} job {row['lastJobId']} {row['lastJobStatus'] or '-'}" if row["lastSlot"] else "never"
        click.echo(f"{_clean(row['name'])}  {row['type']}  {timing}  catchup={row['catchup']}")
        click.echo(f"    next run {row['nextRun']}   last slot {last}")


@queue_cli.command("enqueue")
@click.argument("job_type")
@click.argument("payload")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--delay", type=float, default=None, help="Seconds before the job may run.")
@json_option
@operation
def enqueue_command(job_type: str, payload: str, priority: int, delay: float | None, as_json: bool) -> None:
    """Add a job: TYPE and its payload as a JSON object."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ValidationError({"payload": [f"Not valid JSON: {exc}."]}) from None
    service = queue_state().service
    submitted = service.submit(job_type, data, priority=priority, delay=delay)
    if as_json:
        _echo_json({"id": submitted.id, "status": submitted.status})
    else:
        job = service.get(submitted.id) if delay else None
        click.echo(f"queued {job_type} job {submitted.id}"
                   + (f" (runs at {iso(job.run_at)})" if job is not None else ""))


def _transition(operation_name: str, job_id: str, as_json: bool) -> None:
    service = queue_state().service
    job = service.retry(job_id) if operation_name == "retry" else service.cancel(job_id)
    if as_json:
        _echo_json(job.to_dict())
    else:
        click.echo(f"job {job.id} is {job.status.value}")


@queue_cli.command("retry")
@click.argument("job_id", required=False)
@click.option("--status", type=click.Choice(["failed"]), default=None,
              help="Retry every failed job (with --type/--queue: those of them) instead of one job.")
@click.option("--type", "job_type", default=None, help="With --status: only jobs of this type.")
@click.option("--queue", "queue_name", default=None, help="With --status: only jobs of this queue.")
@json_option
@operation
def retry_command(job_id: str | None, status: str | None, job_type: str | None, queue_name: str | None,
                  as_json: bool) -> None:
    """Send a failed job (or, with --status failed, every matching one) back
    to pending with a fresh retry budget."""
    if (job_id is None) == (status is None):
        raise _UsageError("give a JOB_ID or --status failed, not both")
    if job_id is not None:
        if job_type is not None or queue_name is not None:
            raise _UsageError("--type and --queue go with --status")
        _transition("retry", job_id, as_json)
        return
    selection = {"status": status, **({"type": job_type} if job_type else {}),
                 **({"queue": queue_name} if queue_name else {})}
    result = queue_state().service.bulk_retry(selection)
    if as_json:
        _echo_json({"matched": result.matched, "changed": result.changed})
    else:
        click.echo(f"{result.changed} of {result.matched} matching failed job(s) sent back to pending")


@queue_cli.command("cancel")
@click.argument("job_id")
@json_option
@operation
def cancel_command(job_id: str, as_json: bool) -> None:
    """Cancel a pending job."""
    _transition("cancel", job_id, as_json)
