"""The output volume is checked before training: read-only, or too small for the run's estimate,
is exit code 2 (OutputNotWritable) before the GPU is touched, never an OSError at step 2000."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from splatops import contract
from splatops_trainer import cli, disk
from splatops_trainer.config import TrainerConfig

EARLIER_PLY = b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nend_header\n-- an earlier result --"


@pytest.fixture
def scene(scene_copy: Path) -> Path:
    out = scene_copy / contract.OUTPUT_DIR
    out.mkdir(exist_ok=True)
    (out / contract.RESULT_PLY).write_bytes(EARLIER_PLY)
    return scene_copy


@pytest.fixture
def never_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training, or any CUDA query, fails the test: the volume must be judged before either."""

    def forbidden(*a: object, **k: object) -> object:
        raise AssertionError("reached training / the GPU with an unusable output volume")

    monkeypatch.setitem(sys.modules, "splatops_trainer.train", types.SimpleNamespace(train=forbidden))
    monkeypatch.setattr(torch.cuda, "is_available", forbidden)


def run_main(scene: Path, *extra: str) -> tuple[int, contract.Result | None]:
    term = scene.parent / "termination-log"
    code = cli.main(["--scene-dir", str(scene), "--termination-log", str(term), "--metrics-port", "0", *extra])
    return code, contract.parse_result(term.read_text()) if term.exists() else None


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: mode 0555 for a normal user; root ignores modes, so
    then a path under /sys (sysfs refuses new entries, EPERM), a filesystem nobody can write."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "out"
    return Path("/sys/splatops-test-output")


def test_read_only_output_exits_2_before_training(scene: Path, tmp_path: Path, never_trains: None, capsys) -> None:
    out = _unwritable_dir(tmp_path)
    code, result = run_main(scene, "--output-dir", str(out))
    assert code == 2
    assert result.reason == contract.Reason.OUTPUT_NOT_WRITABLE.value
    assert f"the output directory {out} is read-only" in result.error
    assert f"the output directory {out} is read-only" in capsys.readouterr().err


def test_full_volume_exits_2_with_the_estimate_and_real_free_space(scene: Path, never_trains: None) -> None:
    """MCMC capped at 2e9 Gaussians needs terabytes: more than the real volume has (os.statvfs)."""
    out = scene / contract.OUTPUT_DIR
    free_gb = disk.free_bytes(out) / disk.GB
    code, result = run_main(scene, "--strategy", "mcmc", "--cap-max", "2000000000", "--sh-degree", "3")
    assert code == 2 and result.reason == contract.Reason.OUTPUT_NOT_WRITABLE.value
    match = re.search(r"the output directory (.+) needs about ([\d.]+) GB \((.+)\), ([\d.]+) GB free", result.error)
    assert match, result.error
    assert match.group(1) == str(out)
    need = (3 * 3 + 1) * 2e9 * 4 * (14 + 45)  # 3 checkpoints x (params + 2 Adam moments) + the PLY's params
    assert float(match.group(2)) == pytest.approx((need + 2e9 * 12) / disk.GB, rel=0.01)
    assert float(match.group(4)) == pytest.approx(free_gb, abs=max(1.0, 0.05 * free_gb))
    assert "checkpoints" in match.group(3) and "2,000,000,000 Gaussians" in match.group(3)
    assert (out / contract.RESULT_PLY).read_bytes() == EARLIER_PLY
    assert not (out / contract.CHECKPOINTS_DIR).exists()


@pytest.mark.parametrize(
    ("options", "points", "pixels", "gaussians", "total"),
    [
        # MCMC, SH 3: 59 floats; checkpoint 3 x 236 B; keep 2 + 1 written; PLY 248 B; cache 3 B/pixel
        ({"strategy": "mcmc", "cap_max": 1_000_000}, 500, 10_000, 1_000_000, 3 * 708e6 + 248e6 + 30_000),
        # default strategy: 30 x the sparse points; SH 0: 14 floats
        ({"sh_degree": 0, "keep_checkpoints": 1}, 1000, 0, 30_000, 2 * 3 * 56 * 30_000 + 68 * 30_000),
        ({}, 10**6, 0, disk.DEFAULT_CEILING, 3 * 708 * 6e6 + 248 * 6e6),  # capped
    ],
)
def test_estimate(tmp_path: Path, options: dict, points: int, pixels: int, gaussians: int, total: float) -> None:
    cfg = TrainerConfig(scene_dir=tmp_path, **options)
    got = disk.estimate(cfg, pixels, points, tmp_path / "no-cache")
    assert got.gaussians == gaussians and got.total == pytest.approx(total)


def test_existing_checkpoints_and_cache_count_as_room(tmp_path: Path) -> None:
    cfg = TrainerConfig(scene_dir=tmp_path, strategy="mcmc", cap_max=1000, sh_degree=0)
    fresh = disk.estimate(cfg, 1000, 10, tmp_path / "cache")
    ckpts = cfg.out / contract.CHECKPOINTS_DIR
    ckpts.mkdir(parents=True)
    (ckpts / "ckpt_000100.pt").write_bytes(b"x" * 100_000)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.png").write_bytes(b"x" * 1000)
    again = disk.estimate(cfg, 1000, 10, tmp_path / "cache")
    assert again.checkpoint_bytes == fresh.checkpoint_bytes - 100_000 and again.cache_bytes == fresh.cache_bytes - 1000
