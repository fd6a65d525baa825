"""The trainer tests' helpers (trainer_process.py, cpu_trainings.py) importable by name, as in
tests/operator; the session's shared CPU trainings."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from cpu_trainings import CpuTrainings, train_all  # noqa: E402


@pytest.fixture(scope="session")
def cpu_trainings(synthetic_scene: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> CpuTrainings:
    """One CPU training per strategy, in one fresh process, read by the slow tests; read-only."""
    return train_all(tmp_path_factory.mktemp("cpu-trainings"), synthetic_scene)
