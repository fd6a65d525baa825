"""GPU benchmark: the full `splatops-train` CLI on the fox scene, 7000 steps, data_factor 1.

    python benchmarks/train_fox.py --warm            # compile gsplat's CUDA extension (excluded)
    python benchmarks/train_fox.py [SCENE] [--out DIR] [--steps 7000] [--strategy default]

Runs the CLI in this process (so peak GPU memory is readable) and prints one JSON line
`{"bench": ...}` plus a table: seconds from process start to results.ply, training steps/s over
the whole run, held-out PSNR/SSIM, Gaussians, peak GPU memory. The scene is not in the repo:
the default is ../shared/scenes/fox relative to the repository root.
"""

from __future__ import annotations

import time

T0_WALL = time.time()  # first thing: "process start" for the results.ply timing

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def process_start_wall() -> float:
    """Wall-clock time the process started (from /proc), falling back to our first line."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return T0_WALL


def warm() -> None:
    """Trigger gsplat's JIT build and one tiny render, so the timed run measures training only."""
    import torch
    from gsplat import rasterization

    dev = torch.device("cuda")
    n = 1000
    out, _, _ = rasterization(
        means=torch.randn(n, 3, device=dev) + torch.tensor([0.0, 0.0, 5.0], device=dev),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, device=dev), dim=-1),
        scales=torch.full((n, 3), 0.05, device=dev),
        opacities=torch.full((n,), 0.5, device=dev),
        colors=torch.rand(n, 3, device=dev),
        viewmats=torch.eye(4, device=dev)[None],
        Ks=torch.tensor([[[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]]], device=dev),
        width=128,
        height=128,
    )
    torch.cuda.synchronize()
    print(f"warm: rendered {tuple(out.shape)}; gsplat CUDA extension ready", flush=True)


def profile(args: argparse.Namespace) -> int:
    """Where a step's time goes: CPU (launch/Python) vs GPU kernels, top ops of each."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from splatops_trainer.config import TrainerConfig
    from splatops_trainer.scene import load_scene
    from splatops_trainer.train import train

    class Quiet:
        def on_progress(self, p: object) -> None:
            print(p.to_json(), flush=True)  # type: ignore[attr-defined]

        on_eval = on_progress

    cfg = TrainerConfig(
        scene_dir=Path(args.scene), output_dir=Path(tempfile.mkdtemp(prefix="fox-prof-")),
        data_factor=args.data_factor, max_steps=args.profile, strategy=args.strategy,
        metrics_port=0, checkpoint_every=0, progress_every=max(args.profile // 4, 1), eval_every=0,
    )
    scene = load_scene(cfg)
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        outcome = train(cfg, scene, Quiet(), torch.device("cuda"))
    print(f"profile: {args.profile} steps at {outcome.steps_per_sec:.1f} steps/s, {outcome.num_gaussians} Gaussians")
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    return 0


def profile_window(losses_mod: object, steps: str, out: Path) -> None:
    """Profile training steps A..B (counted by calls of the optimizer step, one per step; not of the
    loss, which may be compiled): kernel times as JSON, for the kernel-family breakdown in
    gpu_compare.py."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    start, stop = (int(x) for x in steps.split(":"))
    real = losses_mod.optimizer_step  # type: ignore[attr-defined]
    state: dict[str, object] = {"step": 0, "prof": None}

    def counted(*a: object, **k: object) -> object:
        step = int(state["step"])  # type: ignore[call-overload]
        if step == start:
            torch.cuda.synchronize()
            state["prof"] = tprofile(activities=[ProfilerActivity.CUDA])
            state["prof"].__enter__()  # type: ignore[attr-defined]
        elif step == stop and state["prof"] is not None:
            torch.cuda.synchronize()
            prof = state["prof"]
            prof.__exit__(None, None, None)  # type: ignore[attr-defined]
            rows = [{"name": e.key, "us": float(getattr(e, "self_device_time_total", 0.0) or 0.0), "calls": int(e.count)}
                    for e in prof.key_averages()]  # type: ignore[attr-defined]
            out.write_text(json.dumps({"steps": stop - start, "kernels": sorted((r for r in rows if r["us"] > 0), key=lambda r: -r["us"])}))
            state["prof"] = None
        state["step"] = step + 1
        return real(*a, **k)

    losses_mod.optimizer_step = counted  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", nargs="?", default=str(REPO.parent / "shared" / "scenes" / "fox"))
    ap.add_argument("--out", default=None, help="scratch output dir (default: a fresh temp dir)")
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--data-factor", type=int, default=1)
    ap.add_argument("--strategy", default="default")
    ap.add_argument("--warm", action="store_true", help="only build/warm gsplat's CUDA extension")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="instead: train N steps directly under torch.profiler and print the top ops")
    ap.add_argument("--schedule", default="", metavar="K=V,...",
                    help="experiment: override default_schedule fields, e.g. reset_every=1000000")
    ap.add_argument("--strategy-opts", default="", metavar="K=V,...",
                    help="experiment: override strategy fields, e.g. absgrad=1,grow_grad2d=0.0008")
    ap.add_argument("--mem-fraction", type=float, default=0.0, metavar="F",
                    help="experiment: torch.cuda.set_per_process_memory_fraction(F), to force CUDA out of memory")
    ap.add_argument("--profile-steps", default="", metavar="A:B",
                    help="profile training steps A..B (kernel times as JSON in --profile-out)")
    ap.add_argument("--profile-out", default="profile.json")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more splatops-train flags")
    args = ap.parse_args()
    if args.warm:
        warm()
        return 0
    if args.profile:
        return profile(args)

    import tempfile

    import torch

    from splatops_trainer import train as train_mod

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fox-bench-"))
    if out.exists():
        shutil.rmtree(out)  # a benchmark must not resume from an earlier run's checkpoints
    captured: dict[str, object] = {}
    real_train = train_mod.train

    def recording_train(*a: object, **kw: object) -> train_mod.TrainOutcome:
        outcome = real_train(*a, **kw)  # type: ignore[arg-type]
        captured["outcome"] = outcome
        return outcome

    train_mod.train = recording_train  # type: ignore[assignment]
    if args.schedule:
        import dataclasses

        from splatops_trainer import strategy as strategy_mod

        overrides = {k: int(v) for k, v in (kv.split("=") for kv in args.schedule.split(","))}
        base_schedule = strategy_mod.default_schedule
        strategy_mod.default_schedule = lambda n: dataclasses.replace(base_schedule(n), **overrides)  # type: ignore[assignment]
    if args.strategy_opts:
        import dataclasses

        from splatops_trainer import strategy as strategy_mod

        opts = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in (kv.split("=") for kv in args.strategy_opts.split(","))}
        base_build = strategy_mod.build_strategy
        train_mod.build_strategy = lambda c: dataclasses.replace(base_build(c), **opts)  # type: ignore[attr-defined]
    if args.mem_fraction:
        torch.cuda.set_per_process_memory_fraction(args.mem_fraction)
    if args.profile_steps:
        from splatops_trainer import losses

        profile_window(losses, args.profile_steps, Path(args.profile_out))
    from splatops_trainer import cli

    cli.train = recording_train  # type: ignore[attr-defined]
    argv = [
        "--scene-dir", args.scene,
        "--output-dir", str(out),
        "--data-factor", str(args.data_factor),
        "--max-steps", str(args.steps),
        "--strategy", args.strategy,
        "--metrics-port", "0",
        "--termination-log", str(out / "termination-log.json"),
        *args.extra,
    ]
    sys.stdout.flush()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # a CLI may exit instead of returning
        rc = exc.code if isinstance(exc.code, int) else 1
    ply = out / "results.ply"
    start = process_start_wall()
    if rc not in (0, None) or not ply.exists():
        print(f"bench: CLI failed (rc={rc}, results.ply exists={ply.exists()})", file=sys.stderr)
        return int(rc or 1)
    outcome = captured.get("outcome")
    to_ply = ply.stat().st_mtime - start
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    result = {
        "scene": args.scene,
        "steps": getattr(outcome, "steps", None),
        "seconds_to_results_ply": round(to_ply, 2),
        "train_steps_per_sec": round(getattr(outcome, "steps_per_sec", 0.0), 2),
        "train_seconds": round(getattr(outcome, "duration_s", 0.0), 2),
        "psnr": getattr(outcome, "psnr", None),
        "ssim": getattr(outcome, "ssim", None),
        "num_gaussians": getattr(outcome, "num_gaussians", None),
        "peak_gpu_memory_gib": round(peak / 2**30, 3),
        "ply_mb": round(ply.stat().st_size / 2**20, 1),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    print("bench: " + json.dumps(result), flush=True)
    for k, v in result.items():
        print(f"  {k:24s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
