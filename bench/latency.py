"""(3c) End-to-end latency at a fixed offered load: the time from sending
``POST`` to the job's completion, p50 and p99, with the consumers running.

- queue_service: gunicorn -w 2 (the project's gunicorn.conf.py), the queue's
  threads running in each worker (the in-process worker drains what its own
  process enqueued). Completion: the job's ``completed_at`` in the SQLite
  file, which the queue stores truncated to the millisecond; one full
  millisecond is added to each of our figures so ours is never flattered.
- Huey: the same app's ``/bench/huey-stamp`` route (SqliteHuey, NORMAL as
  ours) with ``huey_consumer`` in its own process, as shipped (1 worker
  thread, its default polling). Completion: the task's result, time.time()
  when it ran.
- RQ: the same app's ``/bench/rq-stamp`` route with ``rq worker`` in its own
  process, SimpleWorker (jobs in the worker process): its default Worker
  forks a work horse per job and did not keep up with 300 req/s here (175
  of 900 jobs done 30 s after a 3 s load), so its latency grew without bound.
  Completion: the job's return value, time.time() when it ran.

For the peers the queue's threads are off (QUEUE_AUTOSTART=false), so the
two cores hold the web workers and that peer's consumer only. Every server
and consumer is started here and stopped by PID; all on 127.0.0.1.

The load generator is open loop: job k is due at t0 + k / rate, sent by one
of THREADS threads (a new connection per request, as gunicorn's sync
workers close them); a send that falls behind its slot goes at once, and
how far behind the schedule the sends fell is reported (``lag_ms_p99``).
"""
from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench import subjects
from bench.common import fresh_dir, percentile, redis_server, stop_process
from bench.server import ADMIN_TOKEN, Server, gunicorn

THREADS = 8
DRAIN_WAIT_SECONDS = 30.0
BODY = json.dumps({"type": subjects.NOOP_TYPE, "payload": subjects.payload(1)}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"}
BIN = Path(sys.executable).parent


def paced_load(server: Server, path: str, rate: float, seconds: float) -> dict[str, Any]:
    """Send ``rate * seconds`` POSTs at fixed intervals; {job id: send time}."""
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    lags: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    t0 = time.monotonic() + 0.2

    def run(slot: int) -> None:
        for k in range(slot, total, THREADS):
            due = t0 + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lag = max(0.0, time.monotonic() - due)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                sent_at = time.time()
                conn.request("POST", path, body=BODY, headers=HEADERS)
                response = conn.getresponse()
                raw = response.read()
                if response.status != 201:
                    with lock:
                        failures.append(f"{response.status} {raw[:200]!r}")
                    continue
                job_id = json.loads(raw)["id"]
                with lock:
                    sent[job_id] = sent_at
                    lags.append(lag * 1000)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
            finally:
                conn.close()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.monotonic() - t0
    return {"sent": sent, "offered": total, "send_seconds": elapsed, "failures": failures,
            "lag_ms_p99": percentile(lags, 99) if lags else 0.0}


def _summary(load: dict[str, Any], done: dict[str, float], offset_s: float = 0.0) -> dict[str, Any]:
    sent = load["sent"]
    lat = [(done[j] + offset_s - sent[j]) * 1000 for j in sent if j in done]
    if not lat:
        raise RuntimeError(f"no job completed; failures: {load['failures'][:3]}")
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat),
            "completed": len(lat), "accepted": len(sent), "offered": load["offered"],
            "failed_requests": len(load["failures"]), "first_failure": (load["failures"] or [""])[0],
            "sent_per_s": len(sent) / load["send_seconds"], "lag_ms_p99": load["lag_ms_p99"]}


def _wait_for(collect: Callable[[], dict[str, float]], ids: set[str]) -> dict[str, float]:
    """Poll ``collect`` until every id has a completion time (bounded)."""
    deadline = time.monotonic() + DRAIN_WAIT_SECONDS
    done = collect()
    while not ids <= done.keys() and time.monotonic() < deadline:
        time.sleep(0.25)
        done = collect()
    return done


def queue_service(rate: float, seconds: float) -> dict[str, Any]:
    work = fresh_dir("latency-qs")
    with gunicorn(work, queue_on=True) as server:
        path = server.get_json("/bench/info")["enqueue_path"]
        load = paced_load(server, path, rate, seconds)

        def collect() -> dict[str, float]:
            conn = sqlite3.connect(str(work / "http.db"), timeout=10)
            try:
                return dict(conn.execute("SELECT id, completed_at FROM queue_jobs"
                                         " WHERE status = 'completed'").fetchall())
            finally:
                conn.close()
        done = _wait_for(collect, set(load["sent"]))
    # completed_at is truncated to the millisecond: count the whole of it.
    return {**_summary(load, done, offset_s=0.001), "consumer": "in-process worker thread per gunicorn worker"}


def _peer_server(work: Path, redis_port: int | None = None):
    env = {"QUEUE_AUTOSTART": "false", "BENCH_PEERS": "1", "BENCH_PEER_DIR": str(work)}
    if redis_port is not None:
        env["BENCH_REDIS_PORT"] = str(redis_port)
    return gunicorn(work, queue_on=True, extra_env=env)


def huey(rate: float, seconds: float) -> dict[str, Any]:
    work = fresh_dir("latency-huey")
    db = work / "huey.db"
    instance, _ = subjects.huey_instance(db, True)  # creates the file before the consumer opens it
    log = open(work / "huey_consumer.log", "w")
    consumer = subprocess.Popen(
        [str(BIN / "huey_consumer"), "bench.latency.HUEY"], cwd=Path(__file__).resolve().parent.parent,
        env={"BENCH_HUEY_DB": str(db), "PATH": f"{BIN}:/usr/bin:/bin",
             "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        with _peer_server(work) as server:
            load = paced_load(server, "/bench/huey-stamp", rate, seconds)

            def collect() -> dict[str, float]:
                out = {}
                for job_id in load["sent"]:
                    value = instance.result(job_id, preserve=True)
                    if value is not None:
                        out[job_id] = value
                return out
            done = _wait_for(collect, set(load["sent"]))
    finally:
        stop_process(consumer)
        log.close()
    return {**_summary(load, done), "consumer": "huey_consumer, defaults (1 thread, poll 0.1 s backing off)"}


def rq(rate: float, seconds: float) -> dict[str, Any]:
    from redis import Redis
    from rq.job import Job

    work = fresh_dir("latency-rq")
    with redis_server(work) as port:
        log = open(work / "rq_worker.log", "w")
        worker = subprocess.Popen(
            [str(BIN / "rq"), "worker", "--url", f"redis://127.0.0.1:{port}",
             "--worker-class", "rq.worker.SimpleWorker", "bench"],
            cwd=Path(__file__).resolve().parent.parent,
            env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stdout=log, stderr=subprocess.STDOUT)
        try:
            with _peer_server(work, port) as server:
                load = paced_load(server, "/bench/rq-stamp", rate, seconds)
                conn = Redis(host="127.0.0.1", port=port)

                def collect() -> dict[str, float]:
                    out = {}
                    for job_id in load["sent"]:
                        value = Job.fetch(job_id, connection=conn).return_value()
                        if value is not None:
                            out[job_id] = value
                    return out
                done = _wait_for(collect, set(load["sent"]))
        finally:
            stop_process(worker)
            log.close()
    return {**_summary(load, done), "consumer": "rq worker --worker-class SimpleWorker (no fork per job)"}


SYSTEMS = ("queue_service", "huey", "rq")

# ``huey_consumer bench.latency.HUEY``: the consumer's instance, on the file
# the parent named (the app's route enqueues into the same file).
if "BENCH_HUEY_DB" in os.environ:
    HUEY, _ = subjects.huey_instance(Path(os.environ["BENCH_HUEY_DB"]), True)
