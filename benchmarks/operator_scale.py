"""Operator scale benchmark: N GaussianSplatTrainings against the emulator (not run in CI).

The emulator and the simulated kubelet run in this process; the real operator runs as a
subprocess (so its resident memory is its own). Measured:
  * create -> Job created, create -> first status write: p50 / p99 (target p99 <= 1 s);
  * while every training runs and prints progress: API requests per resource per minute and
    status writes per resource per 10 s (target <= 1);
  * the operator's resident memory, current and peak (target <= 200 MB).

    .venv/bin/python benchmarks/operator_scale.py --count 500 --run-seconds 60 [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

from splatops import contract, names
from splatops.local import cluster as c
from splatops.local.kubelet import SimCluster

NS = "default"
OPERATOR = "from splatops.controller.main import run; run()"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def training(name: str) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"scene": {"claimName": "scenes", "path": f"scenes/{name}"}, "maxSteps": 30000}}


class Recorder:
    """First Job creation and first status write per training, from the emulator's event stream."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.job_at: dict[str, float] = {}
        self.status_at: dict[str, float] = {}

    def __call__(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        now = time.perf_counter()
        name = obj["metadata"]["name"]
        if resource == c.JOB_RESOURCE and kind == "ADDED":
            owner = (obj["metadata"].get("labels") or {}).get(names.LABEL_TRAINING)
            if owner:
                self.job_at.setdefault(owner, now)
        elif resource == c.TRAINING_RESOURCE and kind == "MODIFIED" and obj.get("status"):
            self.status_at.setdefault(name, now)


async def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def bench(count: int, run_seconds: float, env: dict[str, str], rate: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with c.running_cluster(pathlib.Path(tmp) / "kubeconfig", namespace=NS) as cluster:
            emulator, sim = cluster.emulator, SimCluster(cluster.emulator, NS)
            rec = Recorder()
            emulator.listeners.append(rec)
            proc_env = {**os.environ, **env, "KUBECONFIG": str(cluster.kubeconfig)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", OPERATOR, env=proc_env,
                stdout=asyncio.subprocess.DEVNULL, stderr=open(pathlib.Path(tmp) / "operator.log", "w"))
            try:
                # Warm-up: the operator is up once it handles one resource.
                await emulator.create(c.TRAINING_RESOURCE, training("warmup"))
                await wait_for(lambda: "warmup" in rec.job_at, 60, "the operator to start")
                rss_idle = rss_mb(proc.pid)[0]

                t0 = time.perf_counter()
                for i in range(count):
                    if rate > 0:  # a steady stream instead of one burst
                        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                    name = f"bench-{i:04d}"
                    rec.created[name] = time.perf_counter()
                    await emulator.create(c.TRAINING_RESOURCE, training(name))
                create_s = time.perf_counter() - t0
                await wait_for(lambda: all(n in rec.job_at and n in rec.status_at for n in rec.created),
                               300, "every Job and first status")
                job_lat = [rec.job_at[n] - rec.created[n] for n in rec.created]
                status_lat = [rec.status_at[n] - rec.created[n] for n in rec.created]

                # Run every training: pods Running, progress printed every 2 s.
                pods = []
                for name in rec.created:
                    job = sim.jobs(name)[0]
                    pod = await sim.start(job["metadata"]["name"])
                    await sim.run(pod, contract.Progress(step=1, max_steps=30000, loss=0.5).to_json())
                    pods.append(pod)
                await asyncio.sleep(15)  # let the Running phase changes settle: count the steady state
                before = collections.Counter(emulator.request_counts)
                started = time.perf_counter()
                step = 1
                while time.perf_counter() - started < run_seconds:
                    step += 100
                    line = contract.Progress(step=step, max_steps=30000, loss=0.1, steps_per_sec=50.0).to_json()
                    for pod in pods:
                        await emulator.append_log(NS, pod, line)
                    await asyncio.sleep(2)
                elapsed = time.perf_counter() - started
                delta = collections.Counter(emulator.request_counts)
                delta.subtract(before)
                rss_now, rss_peak = rss_mb(proc.pid)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 15)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    n = count + 1  # the warm-up resource runs too (without a pod)
    total = sum(v for v in delta.values() if v > 0)
    status_writes = sum(v for (m, plural, sub), v in delta.items()
                        if plural == names.PLURAL and sub == "status" and m in ("PATCH", "PUT"))
    by_kind = {f"{m} {plural}{'/' + sub if sub else ''}": v for (m, plural, sub), v in delta.items() if v > 0}
    return {
        "count": count,
        "create_rate_per_s": rate or "burst",
        "create_all_s": round(create_s, 2),
        "job_created_p50_s": round(percentile(job_lat, 50), 3),
        "job_created_p99_s": round(percentile(job_lat, 99), 3),
        "first_status_p50_s": round(percentile(status_lat, 50), 3),
        "first_status_p99_s": round(percentile(status_lat, 99), 3),
        "job_created_mean_s": round(statistics.fmean(job_lat), 3),
        "running_window_s": round(elapsed, 1),
        "requests_per_resource_per_min": round(total / n / (elapsed / 60), 2),
        "status_writes_per_resource_per_10s": round(status_writes / n / (elapsed / 10), 3),
        "requests_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "operator_rss_idle_mb": round(rss_idle, 1),
        "operator_rss_mb": round(rss_now, 1),
        "operator_rss_peak_mb": round(rss_peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--run-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="create resources at this many per second (default 0: all at once)")
    parser.add_argument("--progress-interval", default="15", help="SPLATOPS_OPERATOR_PROGRESS_INTERVAL")
    parser.add_argument("--status-min-interval", default="10", help="SPLATOPS_OPERATOR_STATUS_MIN_INTERVAL")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args(argv)
    env = {
        "SPLATOPS_OPERATOR_PROGRESS_INTERVAL": args.progress_interval,
        "SPLATOPS_OPERATOR_STATUS_MIN_INTERVAL": args.status_min_interval,
        "SPLATOPS_OPERATOR_METRICS_PORT": "0",
        "SPLATOPS_OPERATOR_LIVENESS_PORT": "0",
        "SPLATOPS_OPERATOR_STANDALONE": "true",
    }
    result = asyncio.run(bench(args.count, args.run_seconds, env, args.rate))
    text = json.dumps(result, indent=2)
    print(text)
    targets = [
        ("job_created_p99_s <= 1", result["job_created_p99_s"] <= 1.0),
        ("first_status_p99_s <= 1", result["first_status_p99_s"] <= 1.0),
        ("status_writes_per_resource_per_10s <= 1", result["status_writes_per_resource_per_10s"] <= 1.0),
        ("operator_rss_peak_mb <= 200", result["operator_rss_peak_mb"] <= 200.0),
    ]
    for label, ok in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
