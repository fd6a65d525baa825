"""GPU benchmark: splatops-train beside gsplat's reference simple_trainer, in one device call.

    python benchmarks/gpu_compare.py SCENE --harness H --out DIR [--deadline S] [--sample-ms 100] \
        'ours30k-1@0:ours:--steps 30000' 'ref30k-1@1:ref:--max-steps 30000 --eval-steps 7000 30000' ...
    python benchmarks/gpu_compare.py --summarize DIR      # the tables again, from DIR/runs.json
    python benchmarks/gpu_compare.py SCENE --dry-run ...  # print the commands, run nothing

Each job is `NAME@GPU:KIND:ARGS`: KIND `ours` runs `train_fox.py SCENE --out ... ARGS`, KIND `ref`
runs gsplat's simple_trainer through `run_reference.py H -- default --data_dir SCENE ...ARGS`
(REFERENCE.md: how to assemble the harness H). Every job starts at once, as its own process on
GPU `GPU` (CUDA_VISIBLE_DEVICES); jobs still running at `--deadline` are killed and reported as
such. Meanwhile `nvidia-smi` samples every GPU's utilisation every `--sample-ms`: a job that ran
alone on its GPU gets its GPU-busy seconds (sum of utilisation x interval over its lifetime).
Runs sharing a GPU report quality (PSNR at every evaluation, SSIM, Gaussians) and peak memory;
their speed is distorted by the sharing. `--profile-steps A:B` in a job's ARGS (both kinds) writes
kernel times of steps A..B, summarised by kernel family.

Names group runs: `shipped-1`, `shipped-2` are two runs of variant `shipped` (the part before the
last `-`). Everything lands in DIR (logs, runs.json, summary.md), for the reply's $OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass
class Job:
    name: str
    gpu: int
    kind: str  # ours | ref
    args: list[str]

    @property
    def group(self) -> str:
        return self.name.rsplit("-", 1)[0] if "-" in self.name else self.name

    @classmethod
    def parse(cls, text: str) -> Job:
        head, kind, args = text.split(":", 2)
        name, _, gpu = head.partition("@")
        if kind not in ("ours", "ref"):
            raise SystemExit(f"job {text!r}: KIND must be ours or ref")
        return cls(name, int(gpu or 0), kind, shlex.split(args))


def command(job: Job, scene: str, harness: str, work: Path, report: Path) -> list[str]:
    out = work / job.name
    if job.kind == "ours":
        return [sys.executable, str(HERE / "train_fox.py"), scene, "--out", str(out), *job.args]
    prof = []
    if "--profile-steps" in job.args:  # the wrapper's option, not simple_trainer's
        i = job.args.index("--profile-steps")
        prof = ["--profile-steps", job.args[i + 1], "--profile-out", str(report / f"{job.name}.profile.json")]
        job = dataclasses.replace(job, args=job.args[:i] + job.args[i + 2:])
    return [sys.executable, str(HERE / "run_reference.py"), harness, *prof, "--", "default", "--data-dir", scene,
            "--data-factor", "1", "--result-dir", str(out), "--disable-viewer", "--disable-video", *job.args]


def with_profile_out(job: Job, work: Path) -> Job:
    if job.kind == "ours" and "--profile-steps" in job.args and "--profile-out" not in job.args:
        # before --extra, which hands everything after it to splatops-train
        at = job.args.index("--extra") if "--extra" in job.args else len(job.args)
        flag = ["--profile-out", str(work / f"{job.name}.profile.json")]
        return dataclasses.replace(job, args=[*job.args[:at], *flag, *job.args[at:]])
    return job


# --- GPU utilisation sampling ----------------------------------------------------------------------


def start_sampler(path: Path, ms: int) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            ["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={ms}"], stdout=path.open("w"), stderr=subprocess.DEVNULL)
    except OSError:
        return None


def read_samples(path: Path) -> list[tuple[float, int, float, float]]:
    """(unix time, gpu index, utilisation %, memory used MiB) per sample."""
    import datetime

    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = [p.strip() for p in line.split(",")]
        try:
            t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, int(parts[1]), float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue
    return rows


def busy_seconds(samples: list[tuple[float, int, float, float]], gpu: int, t0: float, t1: float, ms: int) -> float:
    return round(sum(u / 100.0 * ms / 1000.0 for t, g, u, _ in samples if g == gpu and t0 <= t <= t1), 2)


# --- Results -----------------------------------------------------------------------------------------


def parse_ours(log: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    line = next((ln for ln in log.splitlines() if ln.startswith("bench: {")), None)
    if line:
        out.update(json.loads(line[len("bench: "):]))
    evals = {}
    for ln in log.splitlines():
        if ln.startswith("{") and '"event": "eval"' in ln:
            try:
                d = json.loads(ln)
                evals[int(d["step"])] = d.get("psnr")
            except (ValueError, KeyError):
                pass
    out["evals"] = evals
    m = re.search(r"estimated peak GPU memory ([0-9.]+) GiB \(([0-9,]+) Gaussians", log)
    if m:
        out["estimate_gib"], out["estimate_gaussians"] = float(m.group(1)), int(m.group(2).replace(",", ""))
    out["will_not_fit_warning"] = "will probably not fit" in log
    return out


def parse_ref(out_dir: Path) -> dict[str, Any]:
    stats = out_dir / "stats"
    evals, res = {}, {}
    vals = sorted(stats.glob("val_step*.json"), key=lambda f: int(re.findall(r"\d+", f.name)[0])) if stats.exists() else []
    for f in vals:
        d = json.loads(f.read_text())
        step = int(re.findall(r"\d+", f.name)[0]) + 1
        evals[step] = d.get("psnr")
        res = {"psnr": d.get("psnr"), "ssim": d.get("ssim"), "num_gaussians": d.get("num_GS"), "steps": step}
    trains = sorted(stats.glob("train_step*_rank0.json"), key=lambda f: int(re.findall(r"\d+", f.name)[0])) if stats.exists() else []
    if trains:
        d = json.loads(trains[-1].read_text())
        res["train_seconds"] = d.get("ellipse_time")
        res["peak_gpu_memory_gib"] = d.get("mem")
        step = int(re.findall(r"\d+", trains[-1].name)[0]) + 1
        if d.get("ellipse_time"):
            res["train_steps_per_sec"] = round(step / d["ellipse_time"], 2)
    res["evals"] = evals
    return res


FAMILIES = [  # (family, regex on the kernel name), first match wins
    ("rasterize backward", r"rasteri[sz]e_to_pixels.*bwd"),
    ("rasterize forward", r"rasteri[sz]e_to_pixels.*fwd"),
    ("projection", r"projection|quat_scale"),
    ("spherical harmonics", r"spherical_harmonics"),
    ("tile intersection + sort", r"intersect_tile|intersect_offset|isect|RadixSort|DeviceScan|radix_sort"),
    ("SSIM (matmul blur / fused)", r"gemm|xmma|cutlass|ssim|unfold_backward|conv"),
    ("optimizer (Adam)", r"[Aa]dam|FusedOptimizer"),
    ("loss, compiled (Inductor's Triton kernels)", r"^triton_"),
    ("copies + cat", r"direct_copy|CatArray|copy_kernel"),
    ("densification (index/scatter/nonzero)", r"index|scatter|gather|nonzero|masked|topk"),
    ("elementwise + reductions", r"elementwise|reduce|Functor|fill"),
]


def families(profile: dict[str, Any]) -> dict[str, float]:
    """Device milliseconds per training step by kernel family."""
    steps = max(int(profile.get("steps") or 1), 1)
    out: dict[str, float] = {}
    for k in profile.get("kernels", []):
        fam = next((f for f, rx in FAMILIES if re.search(rx, k["name"])), "other")
        out[fam] = out.get(fam, 0.0) + k["us"] / 1000.0 / steps
    return {f: round(v, 3) for f, v in sorted(out.items(), key=lambda kv: -kv[1])}


# --- Tables --------------------------------------------------------------------------------------------


def _mean(xs: list[float], fmt: str = "{:.2f}") -> str:
    xs = [x for x in xs if x is not None]
    return fmt.format(statistics.fmean(xs)) if xs else "-"


def summarize(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | kind | gpu | rc | PSNR | PSNR by eval step | SSIM | Gaussians | steps/s | train s | peak GiB | estimate GiB | GPU-busy s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        ev = " ".join(f"{k // 1000}k:{v:.2f}" for k, v in sorted((int(a), b) for a, b in r.get("evals", {}).items()) if v is not None)
        f = lambda key, fmt="{}": fmt.format(r[key]) if r.get(key) is not None else "-"  # noqa: E731
        lines.append(f"| {r['name']} | {r['kind']} | {r['gpu']} | {r['rc']} | {f('psnr', '{:.2f}')} | {ev} | {f('ssim', '{:.3f}')} "
                     f"| {f('num_gaussians', '{:,}')} | {f('train_steps_per_sec')} | {f('train_seconds')} "
                     f"| {f('peak_gpu_memory_gib')} | {f('estimate_gib')} | {f('busy_s')} |")
    lines += ["", "| variant | runs done | PSNR mean | min..max | PSNR at 7k mean | Gaussians mean |", "| --- | --- | --- | --- | --- | --- |"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r)
    for g, rs in groups.items():
        ok = [r for r in rs if r.get("psnr") is not None and r["rc"] == 0]
        ps = [r["psnr"] for r in ok]
        at7 = [r["evals"].get(7000) or r["evals"].get("7000") for r in rs]  # killed runs too: they got there
        lines.append(f"| {g} | {len(ok)}/{len(rs)} | {_mean(ps)} | {f'{min(ps):.2f}..{max(ps):.2f}' if ps else '-'} "
                     f"| {_mean([x for x in at7 if x is not None])} | {_mean([r.get('num_gaussians') for r in ok], '{:,.0f}')} |")
    for r in runs:
        if r.get("families"):
            lines += ["", f"kernel families of {r['name']} (device ms per step): " + json.dumps(r["families"])]
    return "\n".join(lines)


def run_all(args: argparse.Namespace, jobs: list[Job]) -> list[dict[str, Any]]:
    out: Path = args.out
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [with_profile_out(j, out) for j in jobs]
    if args.dry_run:
        for j in jobs:
            print(f"{j.name} (GPU {j.gpu}): " + shlex.join(command(j, args.scene, args.harness, work, out)))
        return []
    sampler = start_sampler(out / "nvidia-smi.csv", args.sample_ms)
    procs = []
    for j in jobs:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(j.gpu), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
               "PYTHONUNBUFFERED": "1"}
        log = (out / f"{j.name}.log").open("w")
        procs.append((j, time.time(), subprocess.Popen(command(j, args.scene, args.harness, work, out), stdout=log,
                                                      stderr=subprocess.STDOUT, env=env)))
    deadline = time.monotonic() + args.deadline if args.deadline else None
    ends: dict[str, tuple[float, int | str]] = {}
    for j, _, p in procs:
        try:
            rc: int | str = p.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "killed"
        ends[j.name] = (time.time(), rc)
    if sampler is not None:
        sampler.terminate()
        sampler.wait()
    samples = read_samples(out / "nvidia-smi.csv")
    runs = []
    for j, t0, _ in procs:
        t1, rc = ends[j.name]
        log = (out / f"{j.name}.log").read_text()
        r = parse_ours(log) if j.kind == "ours" else parse_ref(work / j.name)
        alone = not any(o.gpu == j.gpu and o.name != j.name and ends[o.name][0] > t0 and s0 < t1 for o, s0, _ in procs)
        prof = out / f"{j.name}.profile.json"
        r.update(name=j.name, group=j.group, kind=j.kind, gpu=j.gpu, rc=rc, wall_s=round(t1 - t0, 1),
                 busy_s=busy_seconds(samples, j.gpu, t0, t1, args.sample_ms) if alone and samples else None,
                 families=families(json.loads(prof.read_text())) if prof.exists() else None)
        term = work / j.name / "termination-log.json"
        if term.exists():
            r["termination"] = json.loads(term.read_text())
        runs.append(r)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", nargs="?")
    ap.add_argument("jobs", nargs="*", metavar="NAME@GPU:KIND:ARGS")
    ap.add_argument("--harness", default=".bench/ref")
    ap.add_argument("--out", type=Path, default=Path("gpu-compare"))
    ap.add_argument("--work", default="/tmp/gpu-compare", help="the runs' output directories")
    ap.add_argument("--deadline", type=float, default=0.0)
    ap.add_argument("--sample-ms", type=int, default=100)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--summarize", type=Path, default=None, metavar="DIR")
    args = ap.parse_intermixed_args()
    if args.summarize:
        print(summarize(json.loads((args.summarize / "runs.json").read_text())))
        return 0
    if not args.scene or not args.jobs:
        ap.error("SCENE and at least one job are required")
    runs = run_all(args, [Job.parse(t) for t in args.jobs])
    if args.dry_run:
        return 0
    (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
    text = summarize(runs)
    (args.out / "summary.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
