"""Checkpoints under <out>/results/checkpoints/: atomic writes, rotation, newest-compatible resume.

A checkpoint holds everything needed to continue bit-for-bit on the same device: splats, every
optimizer's state, the strategy's running state, the step, and all RNG states. It also records
the resume key (`cfg.resume_key(scene fingerprint)`); a checkpoint written for another scene
content or under options that change training is never resumed: training starts fresh, and the
unusable checkpoints are removed only once the new run has written its first own checkpoint.

Checkpoints hold only tensors and plain containers (dict, list, tuple, str, int, float, bool,
None), and are loaded with `torch.load(weights_only=True)`: a file on the shared volume can never
make the trainer unpickle (run) arbitrary objects. A file that cannot be loaded that way (an older
format, a foreign or corrupt file) is skipped with a warning, never a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from splatops.contract import CHECKPOINTS_DIR

from .atomic import atomic_open
from .config import TrainerConfig, key_differences

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: weights_only-loadable (plain RNG states), scene fingerprint in the key
_NAME = re.compile(r"^ckpt_(\d{6,})\.pt$")


@dataclasses.dataclass
class Checkpoint:
    step: int  # number of completed steps
    splats: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    strategy_state: dict[str, Any]
    rng: dict[str, Any]
    resume_key: dict[str, object]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **dataclasses.asdict(self)}


def checkpoint_dir(cfg: TrainerConfig) -> Path:
    return cfg.out / CHECKPOINTS_DIR


def checkpoint_path(cfg: TrainerConfig, step: int) -> Path:
    return checkpoint_dir(cfg) / f"ckpt_{step:06d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(cfg: TrainerConfig, ckpt: Checkpoint, retire: list[Path] | tuple[Path, ...] = ()) -> Path:
    """Write atomically (temp file in the same dir, fsync, os.replace), then rotate.

    `retire`: checkpoints that cannot be resumed under this run's key (find_resumable's `stale`);
    deleted only after this one is safely written, so a run never has fewer usable checkpoints.
    """
    directory = checkpoint_dir(cfg)
    final = checkpoint_path(cfg, ckpt.step)
    with atomic_open(final, "wb") as f:
        torch.save(ckpt.to_payload(), f)
    for p in retire:
        if p != final:  # the same step's file was just replaced by ours
            p.unlink(missing_ok=True)
    rotate(directory, cfg.keep_checkpoints)
    return final


def rotate(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    removed: list[Path] = []
    if keep <= 0:
        return removed
    for _, p in list_checkpoints(directory)[keep:]:
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _load(path: Path) -> Checkpoint:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"not a splatops checkpoint of format version {FORMAT_VERSION}")
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in payload.items() if k in fields})


def _why_unreadable(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
        # torch's text goes on to suggest weights_only=False: exactly what must not be done here.
        return "it holds objects a safe (weights_only) load refuses: an older checkpoint format or a foreign file"
    return text.splitlines()[0] if text else type(exc).__name__


@dataclasses.dataclass
class Found:
    checkpoint: Checkpoint | None  # the newest resumable one
    stale: list[Path]  # newer files that cannot be resumed under this key (retire them later)


def find_resumable(cfg: TrainerConfig, want: dict[str, object] | None = None) -> Found:
    """The newest safely readable checkpoint whose resume key is `want`, and the newer unusable ones.

    Every skipped file is logged (why); when none can be resumed the log says training starts fresh.
    """
    want = cfg.resume_key() if want is None else want
    stale: list[Path] = []
    for step, path in list_checkpoints(checkpoint_dir(cfg)):
        try:
            ckpt = _load(path)
        except Exception as exc:  # corrupt/truncated/foreign/old-format file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s: %s", path, _why_unreadable(exc))
            stale.append(path)
            continue
        if ckpt.resume_key != want:
            log.warning(
                "skipping checkpoint %s: written for another scene or options (%s)",
                path,
                "; ".join(key_differences(ckpt.resume_key, want)),
            )
            stale.append(path)
            continue
        if ckpt.step != step:
            log.warning("skipping checkpoint %s: its content says step %d", path, ckpt.step)
            stale.append(path)
            continue
        return Found(ckpt, stale)
    if stale:
        log.warning(
            "no checkpoint in %s can be resumed: training starts fresh from step 0 (the %d unusable "
            "checkpoint(s) are removed once this run writes its first checkpoint; an existing "
            "results.ply stays until this run replaces it)",
            checkpoint_dir(cfg),
            len(stale),
        )
    return Found(None, stale)
