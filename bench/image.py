"""(4) A 12 MP JPEG into a 1600 px WebP: time per image and peak memory.

Each runs in a fresh process that first builds the idle worker's state (a
Flask app with the queue and its built-ins, the SQLite store open) and reads
VmRSS; peak memory is VmHWM after the work, minus that idle RSS.

- ``queue_job``: a real IMAGE_PROCESS job through the queue: ``run_once()``
  on jobs whose URL a local ``http.server`` serves (QUEUE_ALLOW_PRIVATE_URLS
  on): fetch, transcode, store. Time per job.
- ``transcode_only``: ``queue_service.handlers.image.transcode()`` on the
  bytes in memory: the like-for-like comparison with plain Pillow.
- ``pillow``: plain Pillow doing the best it can: ``draft()`` at the fitted
  box, ``thumbnail`` (its default filter), WebP quality 80.
"""
from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import WORK, free_port, median, proc_kib, stop_process, wait_for_port

SIZE = (4000, 3000)
MAX_SIDE = 1600
QUALITY = 80
SOURCE = WORK / "image" / "photo-12mp.jpg"


def transcode_available() -> bool:
    return importlib.util.find_spec("queue_service.handlers.image") is not None


def job_type_available() -> bool:
    from queue_service import JobQueue

    return JobQueue().registry.get("IMAGE_PROCESS") is not None


def make_source() -> Path:
    """A photo-like 12 MP JPEG (gradients, blotches, grain; ~4-5 MB), made once."""
    if SOURCE.exists():
        return SOURCE
    from PIL import Image

    SOURCE.parent.mkdir(parents=True, exist_ok=True)
    red = Image.linear_gradient("L").resize(SIZE)
    green = Image.radial_gradient("L").resize(SIZE)
    blotches = Image.effect_noise((SIZE[0] // 10, SIZE[1] // 10), 90).resize(SIZE, Image.BICUBIC)
    bands = []
    for base in (red, green, blotches.rotate(180)):
        bands.append(Image.blend(Image.blend(base, blotches, 0.5), Image.effect_noise(SIZE, 70), 0.2))
    Image.merge("RGB", bands).save(SOURCE, "JPEG", quality=88)
    return SOURCE


def _memory() -> dict[str, float]:
    fields = proc_kib("self", "status", ("VmRSS", "VmHWM"))
    return {"rss_mib": fields["VmRSS"] / 1024, "hwm_mib": fields["VmHWM"] / 1024}


def pillow(runs: int) -> dict[str, Any]:
    from PIL import Image

    data = SOURCE.read_bytes()
    idle = _memory()
    times, out = [], b""
    for _ in range(runs):
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            scale = min(MAX_SIDE / im.width, MAX_SIDE / im.height, 1.0)
            im.draft("RGB", (round(im.width * scale), round(im.height * scale)))
            im.thumbnail((MAX_SIDE, MAX_SIDE))
            buffer = io.BytesIO()
            im.save(buffer, "WEBP", quality=QUALITY)
            out = buffer.getvalue()
        times.append((time.perf_counter() - started) * 1000)
    peak = _memory()
    with Image.open(io.BytesIO(out)) as check:
        size = check.size
    return {"ms_per_image": median(times), "idle_rss_mib": idle["rss_mib"], "hwm_mib": peak["hwm_mib"],
            "above_idle_mib": peak["hwm_mib"] - idle["rss_mib"], "output": {"bytes": len(out), "size": size}}


def _media_names(value: Any) -> list[str]:
    """Names of stored media found in a job result (URLs ending .../media/<name>)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _media_names(v)]
    if isinstance(value, list):
        return [n for v in value for n in _media_names(v)]
    if isinstance(value, str) and "/media/" in value:
        return [value.rsplit("/media/", 1)[1]]
    return []


def _idle_worker(db_name: str, **config: Any):
    """The idle worker's state in this process: app, queue, built-ins, store."""
    from flask import Flask

    from queue_service import JobQueue

    db = SOURCE.parent / db_name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    app = Flask("bench_image")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_DATABASE_URL=f"sqlite:///{db}", QUEUE_IMAGE_MAX_SIDE=MAX_SIDE,
                      QUEUE_IMAGE_QUALITY=QUALITY, QUEUE_IMAGE_FORMAT="webp", **config)
    queue = JobQueue(app)
    state = queue.state()
    state.runtime.store.setup()
    return queue, state


def transcode_only(runs: int) -> dict[str, Any]:
    _idle_worker("image-transcode.db")
    data = SOURCE.read_bytes()
    idle = _memory()
    from queue_service.handlers.image import transcode

    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = transcode(data, max_side=MAX_SIDE, fmt="webp", quality=QUALITY)
        times.append((time.perf_counter() - started) * 1000)
    peak = _memory()
    return {"ms_per_image": median(times), "idle_rss_mib": idle["rss_mib"], "hwm_mib": peak["hwm_mib"],
            "above_idle_mib": peak["hwm_mib"] - idle["rss_mib"],
            "output": {"bytes": len(out.data), "size": [out.width, out.height], "type": out.content_type}}


def queue_job(runs: int) -> dict[str, Any]:
    queue, state = _idle_worker("image-queue.db", QUEUE_ALLOW_PRIVATE_URLS=True)
    worker = state.runtime.make_worker()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(SOURCE.parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        idle = _memory()
        times, jobs = [], []
        for i in range(runs):
            job_id = queue.add_job("IMAGE_PROCESS", {
                "itemId": f"bench-{i}", "imageUrls": [f"http://127.0.0.1:{port}/{SOURCE.name}"]})
            started = time.perf_counter()
            worker.run_once()
            times.append((time.perf_counter() - started) * 1000)
            jobs.append(queue.get_job_status(job_id))
        peak = _memory()
    finally:
        stop_process(server)
    last = jobs[-1]
    output: dict[str, Any] = {"status": last["status"], "error": last["error"]}
    names = _media_names(last["result"])
    if names:
        stored = state.runtime.store.get_file(names[0])
        if stored is not None:
            from PIL import Image

            with Image.open(io.BytesIO(stored.data)) as check:
                output.update(bytes=len(stored.data), size=list(check.size), format=check.format)
    completed = sum(1 for j in jobs if j["status"] == "completed")
    if completed != runs:
        raise RuntimeError(f"IMAGE_PROCESS: {completed} of {runs} jobs completed; last: {output}")
    return {"ms_per_image": median(times), "idle_rss_mib": idle["rss_mib"], "hwm_mib": peak["hwm_mib"],
            "above_idle_mib": peak["hwm_mib"] - idle["rss_mib"],
            "runs": runs, "output": output}
