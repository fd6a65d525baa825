"""A CPU run never loads gsplat's CUDA extension (whose import JIT-compiles with nvcc for minutes).

The session's shared CPU trainings (cpu_trainings.py) run in a fresh interpreter (so no other
test's imports count): a CLI training per strategy, long enough for densification (default: grow,
prune, opacity reset; MCMC: relocation, adding, noise). Then `gsplat.cuda._backend` (gsplat
1.5.3's loader of the compiled/JIT `_C`) was never imported. An import attempt is also refused
on the spot, so a regression fails in seconds instead of starting a CUDA build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from splatops import contract

from cpu_trainings import BLOCKED, CpuTrainings

BACKEND = "gsplat.cuda._backend"


@pytest.mark.slow
def test_cpu_training_never_loads_the_cuda_backend(cpu_trainings: CpuTrainings, synthetic_scene_info) -> None:
    import gsplat  # in the test, not at collection: only this test needs it loaded here

    assert BACKEND in BLOCKED
    assert (Path(gsplat.__file__).parent / "cuda" / "_backend.py").is_file()  # the name checked is real
    assert {name: run.code for name, run in cpu_trainings.runs.items()} == {"default": 0, "mcmc": 0}, \
        cpu_trainings.stderr[-3000:]
    assert cpu_trainings.attempts == [] and cpu_trainings.loaded == []
    default = [p for p in map(contract.parse_progress_line, cpu_trainings.runs["default"].stdout) if p]
    grown = default[-1].num_gaussians
    assert grown is not None and grown > len(synthetic_scene_info.points), grown  # densification ran
