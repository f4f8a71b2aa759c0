"""Run every measurement in one go, print one table, write bench/RESULTS.md.

    scripts/bench                      # everything, 3 runs each, medians
    scripts/bench --repeat 1 --quick   # a fast look (fewer jobs, shorter loads)
    scripts/bench --only enqueue,drain

Each system is measured in its own fresh process, systems interleaved
within each round so a burst of load from elsewhere hits all of them alike.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

from bench import drain, enqueue, image, latency, report, route
from bench.common import ROOT, log as _log, median, run_child

SECTIONS = ("enqueue", "drain", "route", "http", "latency", "image", "memory", "storage", "mongo_ops")


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the runs; the last run's other
    fields; the runs themselves under "samples" (for per-round ratios)."""
    out: dict[str, Any] = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, dict):
            out[key] = _median_of([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = median([r[key] for r in runs])
    out["runs"] = len(runs)
    out["samples"] = runs
    return out


def _rounds(targets: dict[str, str], repeat: int, log_name: str, **kwargs: Any) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for round_no in range(1, repeat + 1):
        for name, target in targets.items():
            result = run_child(target, **kwargs)
            samples[name].append(result)
            _log(f"{log_name} round {round_no}/{repeat}: {name} {_brief(result)}")
    return {name: _median_of(runs) for name, runs in samples.items()}


def _brief(result: dict[str, Any], prefix: str = "") -> str:
    keys = ("p50_us", "jobs_per_s", "req_per_s", "ms_per_image", "rss_delta_mib")
    parts = [f"{prefix}{k}={result[k]:.1f}" for k in keys if k in result]
    parts += [_brief(v, f"{k}.") for k, v in result.items() if isinstance(v, dict) and not prefix]
    return ", ".join(p for p in parts if p)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in ("flask", "marshmallow", "gunicorn", "pillow", "huey", "rq", "redis", "pymongo"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    server = shutil.which("redis-server")
    if server:
        text = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        out["redis-server"] = next((w.split("=")[1] for w in text.split() if w.startswith("v=")), "?")
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    only = set(args.only)
    if "enqueue" in only:
        results["enqueue"] = _rounds({n: f"bench.enqueue:{n}" for n in enqueue.SYSTEMS},
                                     args.repeat, "enqueue", count=args.jobs)
    if "drain" in only:
        results["drain"] = _rounds({n: f"bench.drain:{n}" for n in drain.SYSTEMS},
                                   args.repeat, "drain", count=args.jobs)
    if "route" in only:
        results["route"] = _rounds({n: f"bench.route:{n}" for n in route.SYSTEMS}, args.repeat, "route",
                                   count=min(args.jobs, 3000))["queue_service"]
    if "http" in only:
        results["http"] = _rounds({"http": "bench.http:measure"}, args.repeat, "http",
                                  seconds=args.http_seconds)["http"]
    if "latency" in only:
        results["latency"] = _rounds({n: f"bench.latency:{n}" for n in latency.SYSTEMS}, args.repeat, "latency",
                                     rate=args.latency_rate, seconds=args.http_seconds)
        results["latency"]["rate"] = args.latency_rate
    if "image" in only:
        image.make_source()
        targets = {"pillow": "bench.image:pillow"}
        if image.transcode_available():
            targets["transcode"] = "bench.image:transcode_only"
        if image.job_type_available():
            targets["queue"] = "bench.image:queue_job"
        results["image"] = _rounds(targets, args.repeat, "image", runs=args.image_runs)
        if "queue" not in targets:
            results["image"]["missing"] = "IMAGE_PROCESS is not registered yet (handlers.register_builtins)"
    if "memory" in only:
        results["memory"] = _rounds({"memory": "bench.memory:measure"}, args.repeat, "memory",
                                    idle_seconds=args.idle_seconds)["memory"]
    if "storage" in only:
        results["storage"] = run_child("bench.storage:measure", count=1000)
    if "mongo_ops" in only:
        results["mongo_ops"] = run_child("bench.mongo_ops:measure", count=200)
    return results


def render(results: dict[str, Any], args: argparse.Namespace, command: str, started: float,
           load: tuple[float, float]) -> str:
    table = report.build(results, vars(args))
    met = [name for name, ok in table.verdicts if ok]
    missed = [name for name, ok in table.verdicts if ok is False]
    pending = [name for name, ok in table.verdicts if ok is None]
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    lines = [
        "# Benchmark results",
        "",
        f"Printed by `{command}` on {datetime.date.today().isoformat()} at commit {_git_commit()}, "
        f"in {time.monotonic() - started:.0f} s.",
        f"Machine: {os.cpu_count()} cores ({_cpu_model()}), **shared with other engineers running "
        f"tests during the run** (load average {load[0]:.1f} at the start, {load[1]:.1f} at the end): "
        f"every figure is the median of {args.repeat} run(s), each system in a fresh process, "
        "systems interleaved per round; each ratio is the median of the ratios within a round "
        "(steadier than absolute numbers when the load from elsewhere comes and goes).",
        f"Versions: {versions}.",
        "",
        table.markdown(),
        "",
        f"Targets met: {len(met)} of {len(table.verdicts)}"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + (f"; not measured yet: {', '.join(pending)}" if pending else "") + ".",
        "",
        "What each row does, and what bounds the missed targets (with the profiles): "
        "[docs/benchmarks.md](../docs/benchmarks.md).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per enqueue/drain run")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="load duration per endpoint")
    parser.add_argument("--latency-rate", type=float, default=300.0,
                        help="offered load of the latency section, requests/s (for --http-seconds)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window")
    parser.add_argument("--image-runs", type=int, default=5, help="images per image run")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 3 s loads, 2 images")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    if args.quick:
        args.jobs, args.http_seconds, args.idle_seconds, args.image_runs = 1000, 3.0, 3.0, 2
    for name in ("repeat", "jobs", "image_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 10 <= args.latency_rate <= 2000:
        parser.error("--latency-rate must be between 10 and 2000 requests/s")
    if not 1 <= args.http_seconds <= 120 or not 1 <= args.idle_seconds <= 120:
        parser.error("--http-seconds and --idle-seconds must be between 1 and 120")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if {"enqueue", "drain"} & set(args.only) and shutil.which("redis-server") is None:
        print("scripts/bench: redis-server is missing (RQ runs against it). Install it with "
              "`apt-get install redis-server` or run scripts/install-system-packages bench as root, "
              "or leave out RQ's sections: --only http,image,memory,storage", file=sys.stderr)
        return 2
    command = "scripts/bench" + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    results = measure(args)
    text = render(results, args, command, started, (load_start, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        (ROOT / "bench" / "RESULTS.md").write_text(text)
        _log("wrote bench/RESULTS.md")
    return 0
