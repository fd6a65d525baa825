"""Checkpoint files: atomic writes, rotation, newest-compatible selection, corrupt-file fallback."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from splatops_trainer import checkpoint as ck
from splatops_trainer import config as config_mod
from splatops_trainer import train as train_mod
from splatops_trainer.config import TrainerConfig


def _cfg(tmp_path: Path, **kw: object) -> TrainerConfig:
    return TrainerConfig(scene_dir=tmp_path / "scene", output_dir=tmp_path / "out", **kw)  # type: ignore[arg-type]


def _ckpt(cfg: TrainerConfig, step: int, scene: str = "") -> ck.Checkpoint:
    return ck.Checkpoint(
        step=step,
        splats={"means": torch.full((4, 3), float(step))},
        optimizers={"means": {"state": {}, "param_groups": []}},
        strategy_state={"grad2d": torch.zeros(4), "scene_scale": 1.0},
        rng={"torch": torch.get_rng_state()},
        resume_key=cfg.resume_key(scene),
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
    assert ck.find_resumable(cfg).checkpoint.step == 10  # type: ignore[union-attr]


def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=3)
    for s in (10, 20):
        ck.save_checkpoint(cfg, _ckpt(cfg, s))
    newest = ck.checkpoint_path(cfg, 20)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as after a crash outside our writer
    loaded = ck.find_resumable(cfg).checkpoint
    assert loaded is not None and loaded.step == 10
    assert torch.equal(loaded.splats["means"], torch.full((4, 3), 10.0))
    assert "skipping unreadable checkpoint" in caplog.text


TRAINING_CHANGES = [
    {"max_steps": 999}, {"strategy": "mcmc"}, {"seed": 7}, {"data_factor": 2}, {"sh_degree": 1}, {"max_gaussians": 1000},
    {"sh_degree_interval": 500}, {"test_every": 4}, {"ssim_lambda": 0.3}, {"init_opacity": 0.2},
    {"init_scale": 2.0}, {"random_background": True}, {"cap_max": 5000}, {"visible_adam": False},
]


@pytest.mark.parametrize("change", TRAINING_CHANGES, ids=[next(iter(c)) for c in TRAINING_CHANGES])
def test_incompatible_checkpoint_is_skipped(tmp_path: Path, change: dict, caplog: pytest.LogCaptureFixture) -> None:
    old = _cfg(tmp_path)
    ck.save_checkpoint(old, _ckpt(old, 10))
    assert ck.find_resumable(old).checkpoint is not None
    caplog.set_level(logging.WARNING)
    assert ck.find_resumable(_cfg(tmp_path, **change)).checkpoint is None
    (name,) = change
    assert f"{name} {getattr(old, name)} -> {change[name]}" in caplog.text
    assert "training starts fresh" in caplog.text


def test_every_training_option_is_in_the_resume_key(tmp_path: Path) -> None:
    """A new TrainerConfig field is in the key unless listed as harmless: this list is the decision."""
    key = _cfg(tmp_path).resume_key("fp")
    fields = set(config_mod.option_names())
    assert set(key) == fields - config_mod.NOT_IN_RESUME_KEY | {"scene"}
    assert {c for change in TRAINING_CHANGES for c in change} == set(key) - {"scene"}
    assert config_mod.NOT_IN_RESUME_KEY == {
        "scene_dir", "output_dir", "scene_id", "device", "eval_every", "checkpoint_every",
        "keep_checkpoints", "progress_every", "metrics_port", "termination_log", "resume",
        "scene_source", "output_uri",  # where the scene comes from (its content is the fingerprint), where outputs go
        "formats",  # which files are exported at the end, not what is trained
        "reconstruct", "reconstruct_only",  # the model they make is in the key: the scene fingerprint
        "compile_loss",  # the same loss and gradient, compiled or not
    }


def test_other_scene_content_is_not_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path)
    ck.save_checkpoint(cfg, _ckpt(cfg, 10, scene="fingerprint-a"))
    assert ck.find_resumable(cfg, cfg.resume_key("fingerprint-a")).checkpoint is not None
    found = ck.find_resumable(cfg, cfg.resume_key("fingerprint-b"))
    assert found.checkpoint is None and found.stale == [ck.checkpoint_path(cfg, 10)]
    assert "the scene's images or COLMAP model changed" in caplog.text
    assert "training starts fresh" in caplog.text


def test_unusable_checkpoints_are_retired_only_after_a_new_one_is_written(tmp_path: Path) -> None:
    """keep_checkpoints=1 and an old run's final checkpoint (step 30) of another scene: the new run's
    first checkpoint (step 10) must survive rotation, and the old one go only once it exists."""
    cfg = _cfg(tmp_path, keep_checkpoints=1)
    ck.save_checkpoint(cfg, _ckpt(cfg, 30, scene="old"))
    ck.save_checkpoint(cfg, _ckpt(cfg, 20, scene="old"))  # rotated away at once (keep 1)
    found = ck.find_resumable(cfg, cfg.resume_key("new"))
    assert found.checkpoint is None and found.stale == [ck.checkpoint_path(cfg, 30)]
    assert ck.checkpoint_path(cfg, 30).exists()  # nothing is deleted before the new run has its own
    ck.save_checkpoint(cfg, _ckpt(cfg, 10, scene="new"), found.stale)
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg))] == [10]
    assert ck.find_resumable(cfg, cfg.resume_key("new")).checkpoint.step == 10  # type: ignore[union-attr]


def test_retiring_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=3)
    (ck.checkpoint_dir(cfg)).mkdir(parents=True)
    ck.checkpoint_path(cfg, 20).write_bytes(b"\x00corrupt")
    found = ck.find_resumable(cfg)
    assert found.stale == [ck.checkpoint_path(cfg, 20)]
    ck.save_checkpoint(cfg, _ckpt(cfg, 20), found.stale)  # the same step replaces the corrupt file
    assert ck.find_resumable(cfg).checkpoint.step == 20  # type: ignore[union-attr]


# --- safe loading ----------------------------------------------------------------------------------


def test_a_real_training_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    """The RNG states train.py stores (torch, Python, NumPy) are plain data."""
    cfg = _cfg(tmp_path)
    ckpt = dataclasses.replace(_ckpt(cfg, 10), rng=train_mod._rng_state(torch.device("cpu")))
    path = ck.save_checkpoint(cfg, ckpt)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == ck.FORMAT_VERSION
    # ... and restores every generator exactly
    expect = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    train_mod._set_rng_state(ck.find_resumable(cfg).checkpoint.rng, torch.device("cpu"))  # type: ignore[union-attr]
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expect[0]) and got[1:] == expect[1:]


def test_a_checkpoint_from_before_the_epoch_view_order_still_resumes(tmp_path: Path) -> None:
    """Checkpoints written while views were drawn with replacement also hold that sampler's state:
    restoring them ignores it (the epoch order is a function of seed and step)."""
    cfg = _cfg(tmp_path)
    rng = {**train_mod._rng_state(torch.device("cpu")), "view_sampler": torch.Generator().manual_seed(1).get_state()}
    ck.save_checkpoint(cfg, dataclasses.replace(_ckpt(cfg, 10), rng=rng))
    expect = torch.rand(3)
    torch.manual_seed(0)
    train_mod._set_rng_state(ck.find_resumable(cfg).checkpoint.rng, torch.device("cpu"))  # type: ignore[union-attr]
    assert torch.equal(torch.rand(3), expect)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a hostile file on the shared volume would do when unpickled
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_never_executed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path, keep_checkpoints=3)
    ck.save_checkpoint(cfg, _ckpt(cfg, 10))
    marker = tmp_path / "pwned"
    payload = {**_ckpt(cfg, 20).to_payload(), "extra": {"x": _Exploit(marker)}}
    with open(ck.checkpoint_path(cfg, 20), "wb") as fh:
        torch.save(payload, fh)
    loaded = ck.find_resumable(cfg).checkpoint
    assert not marker.exists()
    assert loaded is not None and loaded.step == 10  # skipped with a warning, never a crash
    assert "skipping unreadable checkpoint" in caplog.text and "ckpt_000020.pt" in caplog.text
    assert "safe (weights_only) load refuses" in caplog.text and "weights_only=False" not in caplog.text


def test_an_old_format_checkpoint_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Format 1 stored numpy's RNG state as a pickled ndarray: not loadable safely, so skipped."""
    cfg = _cfg(tmp_path)
    old = {**_ckpt(cfg, 10).to_payload(), "format": 1, "rng": {"numpy": np.random.get_state()}}
    ck.checkpoint_dir(cfg).mkdir(parents=True)
    with open(ck.checkpoint_path(cfg, 10), "wb") as fh:
        torch.save(old, fh)
    assert ck.find_resumable(cfg).checkpoint is None
    assert "skipping unreadable checkpoint" in caplog.text


def test_options_outside_resume_key_may_change(tmp_path: Path) -> None:
    old = _cfg(tmp_path)
    ck.save_checkpoint(old, _ckpt(old, 10))
    assert ck.find_resumable(_cfg(tmp_path, progress_every=7, eval_every=3)).checkpoint is not None


def test_no_directory_means_no_checkpoint(tmp_path: Path) -> None:
    assert ck.find_resumable(_cfg(tmp_path)).checkpoint is None


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    """A checkpoint write cut short leaves atomic_open's temp name, which the start-up cleanup
    (atomic.remove_stale_temps over the output directory, cli.run) removes."""
    from splatops_trainer import atomic

    cfg = _cfg(tmp_path)
    ck.save_checkpoint(cfg, _ckpt(cfg, 10))
    stale = ck.checkpoint_dir(cfg) / ".ckpt_000020.pt.abcd1234.tmp"
    stale.write_bytes(b"half")
    assert atomic.remove_stale_temps(cfg.out) == [stale]
    assert not stale.exists()
    assert ck.checkpoint_path(cfg, 10).exists()
    assert os.listdir(ck.checkpoint_dir(cfg)) == ["ckpt_000010.pt"]
