"""Checkpoint files: atomic writes, rotation, newest-compatible selection, corrupt-file fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from splatops_trainer import checkpoint as ck
from splatops_trainer.config import TrainerConfig


def _cfg(tmp_path: Path, **kw: object) -> TrainerConfig:
    return TrainerConfig(scene_dir=tmp_path / "scene", output_dir=tmp_path / "out", **kw)  # type: ignore[arg-type]


def _ckpt(cfg: TrainerConfig, step: int) -> ck.Checkpoint:
    return ck.Checkpoint(
        step=step,
        splats={"means": torch.full((4, 3), float(step))},
        optimizers={"means": {"state": {}, "param_groups": []}},
        strategy_state={"grad2d": torch.zeros(4), "scene_scale": 1.0},
        rng={"torch": torch.get_rng_state()},
        resume_key=cfg.resume_key(),
    )


def test_path_layout(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert ck.checkpoint_path(cfg, 42) == tmp_path / "out" / "results" / "checkpoints" / "ckpt_000042.pt"


@pytest.mark.parametrize(
    ("keep", "steps", "left"),
    [(2, [10, 20, 30], [30, 20]), (1, [5, 6], [6]), (2, [4, 1, 3, 2], [4, 3]), (3, [1, 2], [2, 1])],
)
def test_rotation_keeps_newest(tmp_path: Path, keep: int, steps: list[int], left: list[int]) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=keep)
    for s in steps:
        ck.save_checkpoint(cfg, _ckpt(cfg, s))
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg))] == left
    assert not list(ck.checkpoint_dir(cfg).glob("*.tmp"))  # nothing half-written left behind


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=5)
    ck.save_checkpoint(cfg, _ckpt(cfg, 10))

    def exploding_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(cfg, _ckpt(cfg, 20))
    monkeypatch.undo()
    names = sorted(p.name for p in ck.checkpoint_dir(cfg).iterdir())
    assert names == ["ckpt_000010.pt"]
    assert ck.load_latest(cfg).step == 10  # type: ignore[union-attr]


def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=3)
    for s in (10, 20):
        ck.save_checkpoint(cfg, _ckpt(cfg, s))
    newest = ck.checkpoint_path(cfg, 20)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as after a crash outside our writer
    loaded = ck.load_latest(cfg)
    assert loaded is not None and loaded.step == 10
    assert torch.equal(loaded.splats["means"], torch.full((4, 3), 10.0))
    assert "skipping unreadable checkpoint" in caplog.text


@pytest.mark.parametrize(
    "change", [{"max_steps": 999}, {"strategy": "mcmc"}, {"seed": 7}, {"data_factor": 2}]
)
def test_incompatible_checkpoint_is_skipped(tmp_path: Path, change: dict) -> None:
    old = _cfg(tmp_path)
    ck.save_checkpoint(old, _ckpt(old, 10))
    assert ck.load_latest(old) is not None
    assert ck.load_latest(_cfg(tmp_path, **change)) is None


def test_options_outside_resume_key_may_change(tmp_path: Path) -> None:
    old = _cfg(tmp_path)
    ck.save_checkpoint(old, _ckpt(old, 10))
    assert ck.load_latest(_cfg(tmp_path, progress_every=7, eval_every=3)) is not None


def test_no_directory_means_no_checkpoint(tmp_path: Path) -> None:
    assert ck.load_latest(_cfg(tmp_path)) is None


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ck.save_checkpoint(cfg, _ckpt(cfg, 10))
    stale = ck.checkpoint_dir(cfg) / ".ckpt_000020.pt.abc.tmp"
    stale.write_bytes(b"half")
    ck.remove_stale_temps(cfg)
    assert not stale.exists()
    assert ck.checkpoint_path(cfg, 10).exists()
    assert os.listdir(ck.checkpoint_dir(cfg)) == ["ckpt_000010.pt"]
