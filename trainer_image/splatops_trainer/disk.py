"""Before training: can the output directory be written, and does the run's output fit on it?

Found only at the first checkpoint (after GPU time is spent) this used to be exit 1 (retried
backoffLimit times) with an OSError or a torch message. Now it is exit 2, OutputNotWritable, with
"the output directory ... is read-only" or "needs about N GB, M GB free".

The estimate (an upper figure, decimal GB) of what this run adds to the volume:
- the image cache (only when images are downscaled or undistorted): 3 bytes per cached pixel
  (PNG at the fastest compression stays close to that on photos), less the cache already there;
- checkpoints: keep_checkpoints + 1 of them exist at once (the new one is written before the
  oldest is rotated out), each the Gaussians' parameters plus Adam's two moments (3 copies of
  CHECKPOINT floats per Gaussian) less the checkpoints already there;
- results.ply: PLY floats per Gaussian, written next to the earlier one before it replaces it.
The Gaussians: cap_max for MCMC; for the default strategy, which grows without a cap,
DEFAULT_GROWTH x the sparse points, at most DEFAULT_CEILING (3DGS on mip-NeRF 360 scenes ends at
roughly 10-30 Gaussians per sparse point, and at most near 6 million).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from splatops import contract

from .config import TrainerConfig
from .errors import TrainerError

log = logging.getLogger(__name__)

GB = 1e9
DEFAULT_GROWTH = 30  # default strategy: expected Gaussians per sparse point (upper figure)
DEFAULT_CEILING = 6_000_000  # default strategy: the most Gaussians expected
FLOAT_BYTES = 4


def floats_per_gaussian(sh_degree: int) -> int:
    """means 3, scales 3, quats 4, opacity 1, sh0 3, shN 3 x ((d+1)^2 - 1)."""
    return 14 + 3 * ((sh_degree + 1) ** 2 - 1)


@dataclasses.dataclass(frozen=True)
class Estimate:
    gaussians: int
    cache_bytes: int
    checkpoint_bytes: int
    ply_bytes: int

    @property
    def total(self) -> int:
        return self.cache_bytes + self.checkpoint_bytes + self.ply_bytes

    def describe(self) -> str:
        return (
            f"image cache {self.cache_bytes / GB:.2f} GB, checkpoints {self.checkpoint_bytes / GB:.2f} GB, "
            f"results.ply {self.ply_bytes / GB:.2f} GB for about {self.gaussians:,} Gaussians"
        )


def _size_of(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def _files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []


def expected_gaussians(cfg: TrainerConfig, num_points: int) -> int:
    if cfg.strategy == "mcmc":
        return cfg.cap_max
    return min(DEFAULT_CEILING, max(1, DEFAULT_GROWTH * num_points))


def estimate(cfg: TrainerConfig, cached_pixels: int, num_points: int, cache_dir: Path) -> Estimate:
    """What this run will add to the output volume (see the module's docstring)."""
    from .checkpoint import checkpoint_dir, list_checkpoints

    gaussians = expected_gaussians(cfg, num_points)
    per_gaussian = floats_per_gaussian(cfg.sh_degree) * FLOAT_BYTES
    cache = max(0, 3 * cached_pixels - _size_of(_files_under(cache_dir)))
    existing = _size_of([p for _, p in list_checkpoints(checkpoint_dir(cfg))])
    one_checkpoint = 3 * per_gaussian * gaussians
    checkpoints = max(one_checkpoint, (cfg.keep_checkpoints + 1) * one_checkpoint - existing)
    ply = (per_gaussian + 3 * FLOAT_BYTES) * gaussians  # + the three zero normals
    return Estimate(gaussians, cache, checkpoints, ply)


def probe_writable(out: Path) -> None:
    """Create the output directory and an anonymous file in it (no name is left behind, even if
    the process is killed here), or fail with OutputNotWritable."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as fh:
            fh.write(b"splatops write probe")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise TrainerError(
            contract.Reason.OUTPUT_NOT_WRITABLE,
            f"the output directory {out} is read-only or not writable by this user ({exc.strerror or exc}). "
            "Mount the volume read-write, or fix its permissions (the trainer runs as a non-root user).",
        ) from exc


def free_bytes(out: Path) -> int:
    st = os.statvfs(out)
    return st.f_bavail * st.f_frsize


def check_output(cfg: TrainerConfig, cached_pixels: int, num_points: int, cache_dir: Path) -> Estimate:
    """Writable, and room for the estimate; raises TrainerError (exit code 2) otherwise."""
    probe_writable(cfg.out)
    need = estimate(cfg, cached_pixels, num_points, cache_dir)
    free = free_bytes(cfg.out)
    log.info("output %s: needs about %.2f GB (%s), %.2f GB free", cfg.out, need.total / GB, need.describe(), free / GB)
    if need.total > free:
        raise TrainerError(
            contract.Reason.OUTPUT_NOT_WRITABLE,
            f"the output directory {cfg.out} needs about {need.total / GB:.1f} GB ({need.describe()}), "
            f"{free / GB:.1f} GB free. Free space on the volume, or lower the need: a higher data_factor, "
            "a lower cap_max (MCMC) or keep_checkpoints.",
        )
    return need
