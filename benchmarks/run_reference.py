"""Run gsplat's own examples/simple_trainer.py (the reference) unmodified, for side-by-side numbers.

    python benchmarks/run_reference.py HARNESS [--profile-steps A:B --profile-out F] -- ARGS...

HARNESS is a git-ignored folder (never committed: other projects' code) holding `examples/`
(gsplat v1.5.3's examples), `pycolmap/` (the pure-Python SceneManager the examples import as
`pycolmap`) and `stubs/` (placeholder `viser` and `nerfview` modules: the viewer is off).
/work/shared/REFERENCE.md says how to assemble it. ARGS go to simple_trainer.py.

What this wrapper changes, in the process only: the import path (the harness first), LPIPS
(torchmetrics downloads its backbone at construction: replaced by a metric that returns 0, so the
reference's LPIPS is never reported), and, with --profile-steps, a torch.profiler window over
training steps A..B (counted by calls of `fused_ssim`, once per step) whose kernel times are
written to --profile-out as JSON, for the kernel-family breakdown in gpu_compare.py.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any


class _ZeroLPIPS:
    """Stands in for torchmetrics' LPIPS: returns 0 (the reference's LPIPS is never reported)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def to(self, *a: Any, **k: Any) -> _ZeroLPIPS:
        return self

    def __call__(self, x: Any, *a: Any, **k: Any) -> Any:
        return x.new_zeros(())


def kernel_times(prof: Any) -> list[dict[str, Any]]:
    """Per kernel name: total device microseconds and calls (the profiler's key averages)."""
    rows = []
    for e in prof.key_averages():
        us = float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)
        if us > 0:
            rows.append({"name": e.key, "us": us, "calls": int(e.count)})
    return sorted(rows, key=lambda r: -r["us"])


def install_profiler(start: int, stop: int, out: Path) -> None:
    """Profile training steps start..stop, counted by calls of fused_ssim (one per step)."""
    import fused_ssim as fs
    import torch
    from torch.profiler import ProfilerActivity, profile

    real = fs.fused_ssim
    state: dict[str, Any] = {"step": 0, "prof": None}

    def counted(*a: Any, **k: Any) -> Any:
        step = state["step"]
        if step == start:
            torch.cuda.synchronize()
            state["prof"] = profile(activities=[ProfilerActivity.CUDA])
            state["prof"].__enter__()
        elif step == stop and state["prof"] is not None:
            torch.cuda.synchronize()
            state["prof"].__exit__(None, None, None)
            out.write_text(json.dumps({"steps": stop - start, "kernels": kernel_times(state["prof"])}))
            state["prof"] = None
        state["step"] = step + 1
        return real(*a, **k)

    fs.fused_ssim = counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("harness", type=Path)
    ap.add_argument("--profile-steps", default="", metavar="A:B")
    ap.add_argument("--profile-out", type=Path, default=None)
    argv = sys.argv[1:]
    # Everything after `--` is simple_trainer's (argparse's REMAINDER would also swallow our options).
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ns = ap.parse_args(ours)
    harness = ns.harness.resolve()
    examples = harness / "examples"
    sys.path[:0] = [str(harness), str(examples), str(harness / "stubs")]
    import torchmetrics.image.lpip as lpip

    lpip.LearnedPerceptualImagePatchSimilarity = _ZeroLPIPS  # type: ignore[misc,assignment]
    if ns.profile_steps:
        a, b = (int(x) for x in ns.profile_steps.split(":"))
        install_profiler(a, b, ns.profile_out or Path("ref-profile.json"))
    sys.argv = [str(examples / "simple_trainer.py"), *rest]
    runpy.run_path(str(examples / "simple_trainer.py"), run_name="__main__")


if __name__ == "__main__":
    main()
