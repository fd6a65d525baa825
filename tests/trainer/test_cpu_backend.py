"""A CPU run never loads gsplat's CUDA extension (whose import JIT-compiles with nvcc for minutes).

In a fresh interpreter (so no other test's imports count), a short CLI training run per strategy,
long enough for densification (default: grow, prune, opacity reset; MCMC: relocation, adding,
noise), then: `gsplat.cuda._backend` (gsplat 1.5.3's loader of the compiled/JIT `_C`) was never
imported. An import attempt is also refused on the spot, so a regression fails in seconds instead
of starting a CUDA build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BACKEND = "gsplat.cuda._backend"

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    from pathlib import Path

    BLOCKED = ("gsplat.cuda._backend", "gsplat.csrc")
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} must not be imported on the CPU path")
            return None

    sys.meta_path.insert(0, Block())

    import PIL.Image  # noqa: F401  (before pycolmap)
    from splatops_trainer import cli
    from splatops_trainer.synthetic import make_synthetic_scene

    root = Path(sys.argv[1])
    codes = {}
    for strategy in ("default", "mcmc"):
        scene = make_synthetic_scene(root / strategy, n_views=6, width=32, height=24, n_gaussians=300, seed=2).root
        codes[strategy] = cli.main([
            "--scene-dir", str(scene), "--device", "auto", "--strategy", strategy, "--max-steps", "60",
            "--cap-max", "150", "--progress-every", "20", "--checkpoint-every", "30", "--eval-every", "30",
            "--metrics-port", "0", "--termination-log", str(root / f"term-{strategy}"),
        ])
    loaded = sorted(m for m in sys.modules if m.startswith(BLOCKED))
    print("RESULT " + json.dumps({"codes": codes, "attempts": attempts, "loaded": loaded}))
    """
)


@pytest.mark.slow
def test_cpu_training_never_loads_the_cuda_backend(tmp_path: Path) -> None:
    import gsplat  # in the test, not at collection: only this test needs it loaded here

    assert (Path(gsplat.__file__).parent / "cuda" / "_backend.py").is_file()  # the name checked is real
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # as on a GPU-less CI runner, even on a GPU host
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=900, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["codes"] == {"default": 0, "mcmc": 0}, proc.stderr[-3000:]
    assert result["attempts"] == [] and result["loaded"] == []
    assert BACKEND not in result["loaded"]
