"""Checkpoints under <out>/results/checkpoints/: atomic writes, rotation, newest-compatible resume.

A checkpoint holds everything needed to continue bit-for-bit on the same device: splats, every
optimizer's state, the strategy's running state, the step, and all RNG states. It also records
`cfg.resume_key()`; a checkpoint written under different options is never resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch

from splatops.contract import CHECKPOINTS_DIR

from .atomic import atomic_open
from .config import TrainerConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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


def save_checkpoint(cfg: TrainerConfig, ckpt: Checkpoint) -> Path:
    """Write atomically (temp file in the same dir, fsync, os.replace), then rotate."""
    directory = checkpoint_dir(cfg)
    final = checkpoint_path(cfg, ckpt.step)
    with atomic_open(final, "wb") as f:
        torch.save(ckpt.to_payload(), f)
    rotate(directory, cfg.keep_checkpoints)
    return final


def remove_stale_temps(cfg: TrainerConfig) -> None:
    """Drop temp files a killed writer left behind (never a finished checkpoint)."""
    directory = checkpoint_dir(cfg)
    if directory.is_dir():
        for p in directory.glob(".ckpt_*.tmp"):
            p.unlink(missing_ok=True)


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
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError("not a splatops checkpoint of this format version")
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in payload.items() if k in fields})


def load_latest(cfg: TrainerConfig) -> Checkpoint | None:
    """The newest readable checkpoint whose resume key matches cfg; warn about skipped ones."""
    want = cfg.resume_key()
    for step, path in list_checkpoints(checkpoint_dir(cfg)):
        try:
            ckpt = _load(path)
        except Exception as exc:  # corrupt/truncated/foreign file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if ckpt.resume_key != want:
            log.warning(
                "skipping checkpoint %s: written with different options %s (now %s)",
                path,
                ckpt.resume_key,
                want,
            )
            continue
        if ckpt.step != step:
            log.warning("skipping checkpoint %s: its content says step %d", path, ckpt.step)
            continue
        return ckpt
    return None
