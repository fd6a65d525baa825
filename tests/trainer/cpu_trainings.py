"""The trainer's CPU trainings that several tests read, run once per session (`cpu_trainings`).

One fresh interpreter (so no other test's imports count) that refuses gsplat's CUDA extension
(`gsplat.cuda._backend`, gsplat 1.5.3's loader of the compiled/JIT `_C`: its import would start
an nvcc build) runs `splatops-train` (cli.main) once per strategy on a copy of the synthetic
scene, long enough for densification (default: grow, prune, opacity reset; MCMC: relocation,
adding, noise) and for the loss to fall and held-out PSNR to rise. The tests then read what the
runs left: exit codes, stdout's JSON lines, the termination message, results/ and checkpoints,
and which blocked modules were asked for. Treat the directories as read-only (copy to change).

Run as a script, this file is that child: argv[1] is a JSON object {name: argv for cli.main}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from splatops import contract  # (no gsplat, no torch: safe before the child's import blocker)

BLOCKED = ("gsplat.cuda._backend", "gsplat.csrc")
RESULT_PREFIX = "RESULT "
RUN_PREFIX = "RUN "
# An earlier run's outputs in the scenes before training: a finished run must replace them.
EARLIER_PLY = b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nend_header\n-- an earlier result --"
EARLIER_ERROR = "an earlier failure"
# Reports every 50 steps: each one rewrites training_log.txt and metrics.jsonl atomically (fsync).
COMMON = ("--device", "auto", "--metrics-port", "0", "--test-every", "4", "--data-factor", "2",
          "--progress-every", "50", "--eval-every", "100", "--checkpoint-every", "100")
# MCMC with a cap keeps the CPU cost fixed (the default strategy's growth is what costs on a CPU).
ARGS = {
    "mcmc": (*COMMON, "--max-steps", "200", "--sh-degree", "1", "--scene-id", "synthetic", "--strategy", "mcmc",
             "--cap-max", "600", "--formats", "ply,spz,splat,ply_compressed"),
    # Capped too: it still grows, prunes and resets opacities, at a bounded cost.
    "default": (*COMMON, "--max-steps", "150", "--sh-degree", "1", "--strategy", "default", "--max-gaussians", "1500"),
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    scene: Path  # the scene directory; outputs under scene/gsplat/
    args: tuple[str, ...]  # cli.main's options beside --scene-dir and --termination-log
    code: int
    stdout: list[str]  # this run's stdout lines (the JSON progress/eval lines among them)
    termination_log: Path

    @property
    def out(self) -> Path:
        return self.scene / contract.OUTPUT_DIR


@dataclasses.dataclass(frozen=True)
class CpuTrainings:
    runs: dict[str, Run]
    attempts: list[str]  # blocked modules an import asked for
    loaded: list[str]  # blocked modules in sys.modules at the end
    stderr: str


def train_all(root: Path, scene: Path, timeout: float = 900) -> CpuTrainings:
    """Copy `scene` once per run under `root`, seed an earlier result there, train them all."""
    argvs, runs = {}, {}
    for name, args in ARGS.items():
        dst = root / name / "scene"
        shutil.copytree(scene, dst, symlinks=True)
        (dst / contract.OUTPUT_DIR).mkdir(exist_ok=True)
        (dst / contract.OUTPUT_DIR / contract.RESULT_PLY).write_bytes(EARLIER_PLY)
        (dst / contract.OUTPUT_DIR / contract.ERROR_LOG).write_text(EARLIER_ERROR)
        argvs[name] = ["--scene-dir", str(dst), "--termination-log", str(root / name / "termination-log"), *args]
    # As on a GPU-less CI runner, even on a GPU host. One torch thread: on shared cores, torch's
    # spinning intra-op threads made these runs 2 to 4 times slower (as the in-process trainings set).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = proc.stdout.splitlines()
    results = [line for line in lines if line.startswith(RESULT_PREFIX)]
    assert proc.returncode == 0 and results, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(results[-1].removeprefix(RESULT_PREFIX))
    starts = [i for i, line in enumerate(lines) if line.startswith(RUN_PREFIX)] + [len(lines)]
    for begin, end in zip(starts, starts[1:]):
        name = lines[begin].removeprefix(RUN_PREFIX)
        runs[name] = Run(name, root / name / "scene", ARGS[name], report["codes"][name], lines[begin + 1:end],
                         root / name / "termination-log")
    return CpuTrainings(runs, report["attempts"], report["loaded"], proc.stderr)


def _child(argvs: dict[str, list[str]]) -> None:
    import importlib.abc

    attempts: list[str] = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN202
            if name in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} must not be imported on the CPU path")
            return None

    sys.meta_path.insert(0, Block())
    import PIL.Image  # noqa: F401  (before pycolmap)

    from splatops_trainer import cli

    codes = {}
    for name, argv in argvs.items():
        print(RUN_PREFIX + name, flush=True)
        codes[name] = cli.main(argv)
        sys.stdout.flush()
    loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED))
    print(RESULT_PREFIX + json.dumps({"codes": codes, "attempts": attempts, "loaded": loaded}), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
