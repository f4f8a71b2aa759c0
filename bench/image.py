"""(4) A 12 MP JPEG into a 1600 px WebP: time per image and peak memory.

- ``queue_job``: a real IMAGE_PROCESS job through the queue, in a fresh
  process: app + SQLite store idle (VmRSS read: the "idle worker"), then
  ``run_once()`` on jobs whose URL a local ``http.server`` serves (with
  QUEUE_ALLOW_PRIVATE_URLS). Time per job; VmHWM after, minus idle RSS.
  Also ``transcode()`` alone on the same bytes, for the like-for-like time.
- ``pillow``: plain Pillow doing the best it can in a fresh process:
  ``draft()`` at the fitted box, ``thumbnail``, WebP quality 80.
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


def handler_available() -> bool:
    return importlib.util.find_spec("queue_service.handlers.image") is not None


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


def queue_job(runs: int) -> dict[str, Any]:
    from flask import Flask

    from queue_service import JobQueue

    workdir = SOURCE.parent
    db = workdir / "image-queue.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    app = Flask("bench_image")
    app.config.update(QUEUE_AUTOSTART=False, QUEUE_DATABASE_URL=f"sqlite:///{db}",
                      QUEUE_ALLOW_PRIVATE_URLS=True, QUEUE_IMAGE_MAX_SIDE=MAX_SIDE,
                      QUEUE_IMAGE_QUALITY=QUALITY, QUEUE_IMAGE_FORMAT="webp")
    queue = JobQueue(app)
    state = queue.state()
    worker = state.make_worker()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(workdir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        idle = _memory()  # the idle worker: app, store, queue, built-ins registered
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
    from queue_service.handlers.image import transcode  # after the peak was read

    data = SOURCE.read_bytes()
    transcode_times = []
    for _ in range(runs):
        started = time.perf_counter()
        transcode(data, max_side=MAX_SIDE, fmt="webp", quality=QUALITY)
        transcode_times.append((time.perf_counter() - started) * 1000)
    last = jobs[-1]
    output: dict[str, Any] = {"status": last["status"], "error": last["error"]}
    names = _media_names(last["result"])
    if names:
        stored = state.store.get_file(names[0])
        if stored is not None:
            from PIL import Image

            with Image.open(io.BytesIO(stored.data)) as check:
                output.update(bytes=len(stored.data), size=check.size, format=check.format)
    return {"ms_per_image": median(times), "transcode_ms": median(transcode_times),
            "idle_rss_mib": idle["rss_mib"], "hwm_mib": peak["hwm_mib"],
            "above_idle_mib": peak["hwm_mib"] - idle["rss_mib"],
            "completed": sum(1 for j in jobs if j["status"] == "completed"), "runs": runs, "output": output}
