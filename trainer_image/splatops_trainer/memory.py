"""Peak GPU memory of a training, estimated before it starts (pure arithmetic, no torch).

CUDA out of memory was the original pipeline's most common failure, found only minutes into a
run. The trainer estimates its peak from what it knows before the first step (image size, views,
the Gaussians it expects) and compares it with the GPU's free memory: the log says when it will
not fit and what would, the termination message carries both numbers, and an out-of-memory
failure's message names them, and a `memory` line on stdout (`check`) tells the operator.

The per-Gaussian and per-pixel costs are what a step holds at its peak: the parameters (59 floats
at SH degree 3), their gradients and two Adam moments, the copy densification makes while it
grows the tensors, gsplat's projection and tile-intersection buffers (forward and backward), and
the loss's per-pixel intermediates (render, target, SSIM moments and their gradients). The
constants were fitted to nine measured peaks (`torch.cuda.max_memory_allocated`, H200) on fox at
data factors 1 to 8, 60k to 254k Gaussians (benchmarks/README.md, "GPU memory"): the estimate is
within -9 % .. +18 % of each. Beyond ~250k Gaussians it is an extrapolation.
"""

from __future__ import annotations

import dataclasses
import math

from splatops import contract

GIB = 2**30
BYTES_PER_GAUSSIAN_FLOAT = 4 * 4  # param + grad + 2 Adam moments, fp32
GAUSSIAN_OVERHEAD_BYTES = 448  # projection/rasterisation buffers, tile intersections, strategy state, growth copies
BYTES_PER_PIXEL = 768  # render, target, alpha, SSIM moments and their gradients, rasteriser buffers
FIXED_BYTES = 64 * 2**20  # SSIM band matrices, cuBLAS workspace, the allocator's rounding
# Expected Gaussians of the default strategy without a cap, per training pixel, at 30k steps
# (fox: 43 views x 538x960 -> 252k at 30k, ~167k at 7k). A rough rule from one scene: set
# maxGaussians to bound it.
GAUSSIANS_PER_TRAIN_PIXEL_30K = 0.012
MAX_EXPECTED_GAUSSIANS = 20_000_000


def floats_per_gaussian(sh_degree: int) -> int:
    """means 3, scales 3, quats 4, opacity 1, SH 3 x (degree + 1)^2."""
    return 11 + 3 * (sh_degree + 1) ** 2


def expected_gaussians(*, train_pixels: int, max_steps: int, initial: int, cap: int) -> int:
    """The Gaussians a run should end with: the cap when one is set (MCMC always has one), else
    the per-pixel rule above, growing slowly with the run's length, never below the start."""
    if cap > 0:
        return cap
    length = min(1.0, max_steps / 30_000) ** 0.3
    rule = int(GAUSSIANS_PER_TRAIN_PIXEL_30K * length * train_pixels)
    return max(initial, min(rule, MAX_EXPECTED_GAUSSIANS))


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    gaussians: int  # the expected count the estimate is for
    gaussian_bytes: int
    pixel_bytes: int
    image_bytes: int  # the views' uint8 images when they live on the GPU, else one view's
    fixed_bytes: int = FIXED_BYTES

    @property
    def total_bytes(self) -> int:
        return self.gaussian_bytes + self.pixel_bytes + self.image_bytes + self.fixed_bytes

    def max_gaussians_within(self, budget_bytes: int) -> int:
        """The most Gaussians that fit in `budget_bytes` next to the rest (0 if none do)."""
        per = self.gaussian_bytes / max(self.gaussians, 1)
        rest = self.total_bytes - self.gaussian_bytes
        return max(0, int((budget_bytes - rest) / per)) if per > 0 else 0


def estimate(*, width: int, height: int, image_bytes: int, gaussians: int, sh_degree: int) -> MemoryEstimate:
    """Peak bytes of a training step on the largest view (`width` x `height`)."""
    per_gaussian = BYTES_PER_GAUSSIAN_FLOAT * floats_per_gaussian(sh_degree) + GAUSSIAN_OVERHEAD_BYTES
    return MemoryEstimate(
        gaussians=gaussians,
        gaussian_bytes=per_gaussian * gaussians,
        pixel_bytes=BYTES_PER_PIXEL * width * height,
        image_bytes=image_bytes,
    )


# Without maxGaussians, densification stops where the estimate fills this share of the free memory
# (the estimate was up to 18 % high and 9 % low on fox; the rest is headroom for fragmentation).
AUTO_CAP_SHARE = 0.85


def auto_cap(est: MemoryEstimate, free_bytes: int | None) -> int:
    """The Gaussians densification may grow to on this GPU when no cap was set (0: no cap needed,
    the expected model fits in half the budget, or no GPU; 1 when even the images do not fit:
    no growth, and the run will likely fail with the advice of `advice`)."""
    if free_bytes is None:
        return 0
    budget = int(AUTO_CAP_SHARE * free_bytes)
    if est.total_bytes <= budget // 2:  # far from full: growth beyond twice the expectation is not capped either
        return 0
    return max(est.max_gaussians_within(budget), 1)


def describe(est: MemoryEstimate, free_bytes: int | None) -> str:
    """One line for the log: the estimate, its parts, and the free memory it is compared with."""
    text = (
        f"estimated peak GPU memory {est.total_bytes / GIB:.2f} GiB ({est.gaussians:,} Gaussians "
        f"{est.gaussian_bytes / GIB:.2f} GiB, pixels {est.pixel_bytes / GIB:.2f} GiB, images "
        f"{est.image_bytes / GIB:.2f} GiB)"
    )
    return text + (f" of {free_bytes / GIB:.2f} GiB free" if free_bytes is not None else "")


def advice(est: MemoryEstimate, free_bytes: int, data_factor: int) -> str | None:
    """What to change when the estimate exceeds the free memory (None when it fits)."""
    if est.total_bytes <= free_bytes:
        return None
    tips = []
    fit = est.max_gaussians_within(free_bytes)
    if fit > 0:
        tips.append(f"maxGaussians {_round_down(fit):,}")
    if data_factor < 8:
        tips.append(f"dataFactor {data_factor * 2}")
    return (
        f"It will probably not fit: {describe(est, free_bytes)}. Try "
        + " or ".join(tips or ["a GPU with more memory"])
        + " (or spec.oom.policy Downscale)."
    )


def check(est: MemoryEstimate, free_bytes: int, data_factor: int) -> contract.MemoryCheck:
    """The stdout `memory` event: the estimate against the free memory, with `advice` when it
    will not fit (the operator shows that in status.gpuMemory and a Warning Event)."""
    tip = advice(est, free_bytes, data_factor)
    return contract.MemoryCheck(estimate_bytes=est.total_bytes, free_bytes=free_bytes, fits=tip is None, advice=tip or "")


def _round_down(n: int) -> int:
    """Two significant digits, down: a cap to type, not a false precision."""
    if n < 100:
        return n
    scale = 10 ** (int(math.log10(n)) - 1)
    return n // scale * scale
