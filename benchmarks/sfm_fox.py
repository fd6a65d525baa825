"""Structure-from-motion on the fox photos alone (their COLMAP model left behind), as the trainer
does it when a scene has only images: `splatops-train --reconstruct-only` in a fresh process.

Copies SCENE/images into a scratch scene OUTSIDE the repository (the scene is licensed for testing
only), runs the reconstruction there, and prints its numbers (images registered, points, mean
reprojection error, seconds per step) and the wall time of the process. The scratch scene is kept
(`--out`), so the held-out PSNR of a training on our reconstruction can then be compared with one on
the provided model (GPU):

    python benchmarks/sfm_fox.py ../shared/scenes/fox --out /tmp/fox-photos
    python benchmarks/train_fox.py /tmp/fox-photos          # 7000 steps on our reconstruction
    python benchmarks/train_fox.py ../shared/scenes/fox     # the same on the provided model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", nargs="?", default=str(REPO.parent / "shared" / "scenes" / "fox"))
    ap.add_argument("--out", default=None, help="scratch scene directory (default: a fresh temp dir); replaced")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sfm-fox-"))
    if out.resolve().is_relative_to(REPO):
        ap.error(f"--out {out} is inside the repository; the scene must stay outside it")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(Path(args.scene) / "images", out / "images")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image"),
                                                        os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "splatops_trainer", "--scene-dir", str(out), "--reconstruct-only", "--metrics-port", "0",
         "--termination-log", str(out / "termination.json"), "--device", "cpu"],
        env=env, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - t0
    result = json.loads((out / "termination.json").read_text()) if (out / "termination.json").is_file() else {}
    print(json.dumps({"exit": proc.returncode, "wall_s": round(wall, 1), "cpus": os.cpu_count(), "scene": str(out),
                      "reconstruction": result.get("reconstruction"), "error": result.get("error")}, indent=2))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
