"""gsplat 1.5.3's MCMC refinement for CPU tensors (CI's tiny trainings, the CPU backend).

gsplat's MCMC ops call two CUDA-only kernels (the relocation formula and the covariance of the
noise injection); on the CPU they would start a CUDA JIT build and fail. `strategy.MCMCAdapter`
calls `step_post_backward` here for CPU tensors and gsplat's own for CUDA ones: the same
refinement (same schedule, same random draws in the same order, so a fixed seed gives the same
model), with pure-PyTorch maths. Nothing in gsplat is patched.

Uses two private helpers of gsplat.strategy.ops (`_multinomial_sample`, which draws what the
CUDA path draws, and `_update_param_with_optimizer`): gsplat is pinned to 1.5.3 (pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import MCMCStrategy
from gsplat.strategy.ops import _multinomial_sample, _update_param_with_optimizer


def relocation_torch(
    opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor, binoms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MCMC paper eq. 9 (what gsplat's `relocation` kernel computes), vectorised in PyTorch.

    A Gaussian cloned into n copies gets opacity 1-(1-o)^(1/n) and its scale multiplied by
    o / sum_{i=1..n} sum_{k=0..i-1} C(i-1,k) (-1)^k / sqrt(k+1) * new_o^(k+1).
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(min=1, max=n_max).to(opacities.dtype)
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / n)
    k = torch.arange(n_max, device=opacities.device, dtype=opacities.dtype)
    term = ((-1.0) ** k) / torch.sqrt(k + 1.0) * new_o[:, None] ** (k + 1.0)  # [N, K]
    inner = term @ binoms.to(term.dtype).T  # [N, I]: column i-1 sums k = 0..i-1 (binoms is 0 beyond)
    i = torch.arange(1, n_max + 1, device=opacities.device, dtype=opacities.dtype)
    denom = torch.where(i[None, :] <= n[:, None], inner, 0.0).sum(dim=1)
    return new_o, scales * (opacities / denom)[:, None]


@torch.no_grad()
def step_post_backward(strategy: MCMCStrategy, params: Any, optimizers: dict[str, torch.optim.Optimizer],
                       state: dict[str, Any], step: int, *, lr: float) -> None:
    """`MCMCStrategy.step_post_backward`: on refine steps move dead Gaussians onto live ones and
    add 5% more (up to cap_max), sampled by opacity; every step, jitter the means."""
    state["binoms"] = binoms = state["binoms"].to(params["means"].device)
    if strategy.refine_start_iter < step < strategy.refine_stop_iter and step % strategy.refine_every == 0:
        dead = torch.sigmoid(params["opacities"].flatten()) <= strategy.min_opacity
        if dead.sum().item() > 0:
            _relocate(params, optimizers, dead, binoms, strategy.min_opacity)
        n = len(params["means"])
        grow = max(0, min(strategy.cap_max, int(1.05 * n)) - n)
        if grow > 0:
            _add(params, optimizers, grow, binoms, strategy.min_opacity)
    _add_position_noise(params, lr * strategy.noise_lr)


def _split_values(params: Any, sampled: torch.Tensor, binoms: torch.Tensor, min_opacity: float) -> dict[str, torch.Tensor]:
    """The raw opacities and scales of the sampled Gaussians once each shares its mass with its
    new copies (a Gaussian drawn k times ends as k + 1 Gaussians)."""
    opacities = torch.sigmoid(params["opacities"])
    new_o, new_s = relocation_torch(
        opacities[sampled], torch.exp(params["scales"])[sampled], torch.bincount(sampled)[sampled] + 1, binoms
    )
    new_o = torch.clamp(new_o, max=1.0 - torch.finfo(torch.float32).eps, min=min_opacity)
    return {"opacities": torch.logit(new_o), "scales": torch.log(new_s)}


def _relocate(params: Any, optimizers: Any, dead: torch.Tensor, binoms: torch.Tensor, min_opacity: float) -> None:
    """Dead Gaussians become copies of live ones drawn by opacity; the drawn ones' Adam moments reset."""
    dead_ids = dead.nonzero(as_tuple=True)[0]
    alive_ids = (~dead).nonzero(as_tuple=True)[0]
    weights = torch.sigmoid(params["opacities"])[alive_ids].flatten()
    sampled = alive_ids[_multinomial_sample(weights, len(dead_ids), replacement=True)]
    values = _split_values(params, sampled, binoms, min_opacity)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name in values:
            p[sampled] = values[name]
        p[dead_ids] = p[sampled]
        return torch.nn.Parameter(p, requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: torch.Tensor) -> torch.Tensor:
        v[sampled] = 0
        return v

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


def _add(params: Any, optimizers: Any, n: int, binoms: torch.Tensor, min_opacity: float) -> None:
    """`n` new Gaussians, copies of ones drawn by opacity, with zero Adam moments."""
    sampled = _multinomial_sample(torch.sigmoid(params["opacities"]).flatten(), n, replacement=True)
    values = _split_values(params, sampled, binoms, min_opacity)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name in values:
            p[sampled] = values[name]
        return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

    def optimizer_fn(key: str, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, torch.zeros((len(sampled), *v.shape[1:]), device=v.device)])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


def _add_position_noise(params: Any, scale: float) -> None:
    """Move each mean by Gaussian noise shaped by its covariance, nearly only for the transparent."""
    opacities = torch.sigmoid(params["opacities"].flatten())
    covars, _ = _quat_scale_to_covar_preci(
        params["quats"], torch.exp(params["scales"]), compute_covar=True, compute_preci=False, triu=False
    )
    gate = 1 / (1 + torch.exp(-100 * ((1 - opacities) - 0.995)))  # ~1 below opacity 0.005, ~0 above
    noise = torch.randn_like(params["means"]) * gate.unsqueeze(-1) * scale
    params["means"].add_(torch.einsum("bij,bj->bi", covars, noise))
