"""GPU benchmark: compare training variants on quality, several seeds-worth of runs at once.

    python benchmarks/quality_sweep.py SCENE --repeats 3 \
        'shipped:' 'refine5k:--schedule refine_stop=5000,reset_every=3000' \
        'absgrad:--strategy-opts absgrad=1,grow_grad2d=0.0008'

Each variant is `NAME:ARGS` (ARGS go to `train_fox.py`). All runs go at once, as separate
processes on one GPU: gsplat's CUDA backward is not deterministic, so one run of a variant says
little (±0.3 dB PSNR on fox), and the loop is host-bound, so concurrent runs share the GPU well.
Concurrency distorts steps/s, so this script reports quality only (PSNR, SSIM, Gaussians);
time the chosen variant alone with `train_fox.py`.
16 runs at once took 437 s on an H200; `--deadline` bounds a sweep inside a device call's time
limit (unfinished runs are killed and left out, the finished ones still reported).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene")
    ap.add_argument("variants", nargs="+", metavar="NAME:ARGS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logs", type=Path, default=None, help="keep each run's log here")
    ap.add_argument("--deadline", type=float, default=0.0, metavar="S",
                    help="kill runs still going after S seconds and report the finished ones")
    args = ap.parse_args()

    logs = args.logs or Path(tempfile.mkdtemp(prefix="sweep-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, Path, subprocess.Popen[str]]] = []
    for rep in range(args.repeats):
        for spec in args.variants:
            name, _, extra = spec.partition(":")
            cmd = [sys.executable, str(HERE / "train_fox.py"), args.scene, "--out", f"/tmp/sweep-{name}-{rep}",
                   *shlex.split(extra)]
            log = logs / f"{name}-{rep}.log"
            with log.open("w") as f:  # a file, not a pipe: no run blocks on a full pipe while we wait
                procs.append((name, log, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)))

    deadline = time.monotonic() + args.deadline if args.deadline else None
    results: dict[str, list[dict]] = {}
    for i, (name, log, p) in enumerate(procs):
        try:
            p.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            print(f"{name}: run {i} killed at the deadline", file=sys.stderr)
            continue
        out = log.read_text()
        line = next((ln for ln in out.splitlines() if ln.startswith("bench: ")), None)
        if p.returncode != 0 or line is None:
            print(f"{name}: run {i} failed (rc={p.returncode}):\n{out[-2000:]}", file=sys.stderr)
            continue
        results.setdefault(name, []).append(json.loads(line[len("bench: "):]))

    print("| variant | runs | PSNR mean | PSNR min..max | SSIM mean | Gaussians mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        psnr = [r["psnr"] for r in rows]
        print(f"| {name} | {len(rows)} | {statistics.fmean(psnr):.2f} | {min(psnr):.2f}..{max(psnr):.2f} "
              f"| {statistics.fmean(r['ssim'] for r in rows):.3f} "
              f"| {statistics.fmean(r['num_gaussians'] for r in rows):,.0f} |")
    print("sweep: " + json.dumps({n: [r["psnr"] for r in rows] for n, rows in results.items()}), flush=True)
    return 0 if all(len(results.get(s.partition(":")[0], [])) == args.repeats for s in args.variants) else 1


if __name__ == "__main__":
    raise SystemExit(main())
