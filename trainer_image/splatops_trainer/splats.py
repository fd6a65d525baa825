"""Gaussian parameters and their optimizers (3DGS reference settings).

The splats are a `torch.nn.ParameterDict` with the keys gsplat's strategies expect (means, scales,
quats, opacities, sh0, shN); each parameter has its own Adam with a single param group, which
is what the strategies' densify/prune operations rewrite in place.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .dataset import SceneData

SH_C0 = 0.28209479177387814  # Y_0^0, maps an RGB colour to its DC coefficient

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


@dataclasses.dataclass(frozen=True)
class LearningRates:
    """Per-parameter Adam learning rates of the 3DGS reference (means scaled by scene size)."""

    means: float = 1.6e-4
    means_final_factor: float = 0.01  # means lr decays exponentially to this fraction
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20


def num_sh_bases(sh_degree: int) -> int:
    return (sh_degree + 1) ** 2


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def knn_mean_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance from each point to its k nearest neighbours (excluding itself).

    Pure torch, chunked over query rows so memory stays O(chunk * N) rather than O(N^2).
    """
    n = points.shape[0]
    if n < 2:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    sq = (points * points).sum(-1)
    for start in range(0, n, chunk):
        q = points[start : start + chunk]
        # |q - p|^2 = |q|^2 + |p|^2 - 2 q.p ; clamp tiny negatives from rounding.
        d2 = (sq[start : start + chunk, None] + sq[None, :] - 2.0 * q @ points.T).clamp_min_(0.0)
        nearest = torch.topk(d2, k + 1, dim=1, largest=False).values[:, 1:]  # drop self
        out[start : start + chunk] = nearest.sqrt().mean(dim=1)
    return out


def init_splats(
    scene: SceneData,
    *,
    sh_degree: int,
    init_opacity: float,
    init_scale: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.nn.ParameterDict:
    """Gaussians at the sparse points: isotropic scale from kNN spacing, identity rotation."""
    points = scene.points.to(torch.float32)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f"scene.points must be a non-empty [N, 3] tensor, got {tuple(points.shape)}")
    n = points.shape[0]
    dist = knn_mean_distance(points).clamp_min(1e-7)
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    opacities = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)))  # logit
    colors = scene.colors.to(torch.float32).clamp(0.0, 1.0)
    sh0 = rgb_to_sh(colors)[:, None, :]  # [N, 1, 3]
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    tensors = {
        "means": points,
        "scales": scales,
        "quats": quats,
        "opacities": opacities,
        "sh0": sh0,
        "shN": shN,
    }
    # clone: on the CPU `.to()` would alias scene.points, and Adam would then edit the scene.
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.to(device).clone().contiguous()) for k, v in tensors.items()}
    )


def empty_splats(num: int, sh_degree: int, device: torch.device) -> torch.nn.ParameterDict:
    """Splats of the right shapes to load a checkpoint into."""
    shapes = {
        "means": (num, 3),
        "scales": (num, 3),
        "quats": (num, 4),
        "opacities": (num,),
        "sh0": (num, 1, 3),
        "shN": (num, num_sh_bases(sh_degree) - 1, 3),
    }
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(torch.zeros(s, device=device)) for k, s in shapes.items()}
    )


def make_optimizers(
    splats: torch.nn.ParameterDict,
    scene_scale: float,
    lrs: LearningRates = LearningRates(),
) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (gsplat strategies need exactly one group per optimizer).

    eps=1e-15 as in the 3DGS reference. On CUDA the fused kernel avoids a per-tensor Python loop.
    """
    rates = {
        "means": lrs.means * scene_scale,
        "scales": lrs.scales,
        "quats": lrs.quats,
        "opacities": lrs.opacities,
        "sh0": lrs.sh0,
        "shN": lrs.shN,
    }
    fused = splats["means"].is_cuda
    return {
        name: torch.optim.Adam(
            [{"params": [splats[name]], "lr": rates[name], "name": name}],
            eps=1e-15,
            betas=(0.9, 0.999),
            fused=fused or None,
        )
        for name in PARAM_KEYS
    }


def means_lr(step: int, max_steps: int, scene_scale: float, lrs: LearningRates = LearningRates()) -> float:
    """Exponential decay from lr*scene_scale to lr*scene_scale*final_factor over max_steps."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return lrs.means * scene_scale * (lrs.means_final_factor**t)
