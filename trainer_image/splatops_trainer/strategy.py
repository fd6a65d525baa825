"""Densification strategies: gsplat 1.5.3's DefaultStrategy (fixed) and MCMCStrategy.

Two things gsplat 1.5.3 gets wrong that we do not inherit:

* `DefaultStrategy.step_post_backward` guards the opacity reset with
  `step % self.reset_every == 0 & step > 0`. `&` binds tighter than the comparisons, so the
  expression is the chained comparison `step % reset_every == 0 > 0`, which is always False:
  opacities are never reset. `FixedDefaultStrategy` resets at every positive multiple of
  `reset_every` (while refining, as in the 3DGS reference).
* Its `_update_state` calls `torch.where(mask)` every step, a device->host sync that stalls the
  GPU pipeline each iteration. Ours accumulates with dense masked sums instead (same numbers).

Hyperparameters are the 3DGS reference's for 30k steps; the refine window scales in proportion
for other lengths, the opacity-reset period does not (see `default_schedule`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy import ops as _ops
from gsplat.strategy.ops import reset_opa

from .config import TrainerConfig

REFERENCE_STEPS = 30_000
REFERENCE_RESET_EVERY = 3_000


@dataclasses.dataclass(frozen=True)
class Schedule:
    refine_start: int
    refine_stop: int
    refine_every: int
    reset_every: int


def default_schedule(max_steps: int) -> Schedule:
    """3DGS reference (refine 500..15000 every 100, reset every 3000), refine window scaled.

    The refine window scales with max_steps, so a 7k-step run densifies over its first half like
    a 30k one. The opacity-reset period does not: after a reset every Gaussian must re-learn its
    opacity, and the prune that follows thins the model, which takes a fixed number of steps to
    recover from. Scaled down (every 700 steps in a 7k run: four resets) the fox model ended with
    144k Gaussians instead of 171k and 0.09 dB lower mean held-out PSNR (11 and 14 runs,
    benchmarks/README.md), at the same speed. Runs that refine for less than 3000 steps reset
    once, halfway through refining.
    """
    f = max_steps / REFERENCE_STEPS
    refine_stop = max(1, round(15_000 * f))
    # 100 as in the reference for real runs; shorter runs refine more often, but never more often
    # than every 10 steps: the growth criterion averages gradients over the views since the last
    # refine, and a 1-view average duplicates nearly everything (exponential growth).
    refine_every = max(min(10, refine_stop), min(100, refine_stop // 30))
    reset_every = REFERENCE_RESET_EVERY if refine_stop > REFERENCE_RESET_EVERY else refine_stop // 2
    return Schedule(
        refine_start=max(1, round(500 * f)),
        refine_stop=refine_stop,
        refine_every=refine_every,
        reset_every=max(refine_every, reset_every),
    )


def mcmc_schedule(max_steps: int) -> Schedule:
    """MCMC reference (refine 500..25000 every 100) scaled to max_steps; MCMC never resets."""
    f = max_steps / REFERENCE_STEPS
    refine_stop = max(1, round(25_000 * f))
    refine_every = max(min(10, refine_stop), min(100, refine_stop // 50))
    return Schedule(
        refine_start=max(1, round(500 * f)),
        refine_stop=refine_stop,
        refine_every=refine_every,
        reset_every=0,
    )


@dataclasses.dataclass
class FixedDefaultStrategy(DefaultStrategy):
    """DefaultStrategy whose opacity reset fires, whose per-step bookkeeping never syncs, and
    whose growth stops at `max_gaussians` (0: no cap)."""

    max_gaussians: int = 0

    def _grow_gs(self, params: Any, optimizers: Any, state: dict[str, Any], step: int) -> tuple[int, int]:  # type: ignore[override]
        if self.max_gaussians > 0:
            self._limit_growth(params, state)
        return super()._grow_gs(params, optimizers, state, step)

    @torch.no_grad()
    def _limit_growth(self, params: Any, state: dict[str, Any]) -> None:
        """Let only the highest-gradient candidates grow, as many as the cap leaves room for.

        Each grown Gaussian (duplicated or split) adds one, so at most `max_gaussians - n` may
        grow; the others' accumulated gradients are zeroed for this refine step (they are zeroed
        after it anyway), which keeps them under the growth threshold. Refine steps already sync.
        """
        n = int(params["means"].shape[0])
        room = max(0, self.max_gaussians - n)
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        if int(high.sum()) <= room:
            return
        keep = torch.zeros_like(high)
        if room > 0:
            keep[torch.topk(torch.where(high, grads, -1.0), room).indices] = True
        state["grad2d"].masked_fill_(~keep, 0.0)
        if state.get("radii") is not None:
            state["radii"].masked_fill_(~keep, 0.0)

    def should_reset(self, step: int) -> bool:
        return self.reset_every > 0 and step > 0 and step % self.reset_every == 0

    def step_post_backward(  # type: ignore[override]
        self,
        params: Any,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        packed: bool = False,
    ) -> None:
        if step >= self.refine_stop_iter:
            return
        self._update_state(params, state, info, packed=packed)
        if (
            step > self.refine_start_iter
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        ):
            self._grow_gs(params, optimizers, state, step)
            self._prune_gs(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
            if self.refine_scale2d_stop_iter > 0:
                state["radii"].zero_()
        if self.should_reset(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    def _update_state(  # type: ignore[override]
        self,
        params: Any,
        state: dict[str, Any],
        info: dict[str, Any],
        packed: bool = False,
    ) -> None:
        if packed:  # the upstream path is already sync-free enough for packed mode
            super()._update_state(params, state, info, packed=packed)
            return
        grad = info[self.key_for_gradient].absgrad if self.absgrad else info[self.key_for_gradient].grad
        # Normalise to [-1, 1] screen space, as upstream does (Python scalars: no host->device copy).
        sx = info["width"] / 2.0 * info["n_cameras"]
        sy = info["height"] / 2.0 * info["n_cameras"]
        norms = torch.hypot(grad[..., 0] * sx, grad[..., 1] * sy)  # [C, N]
        radii = info["radii"]
        visible = (radii > 0).all(dim=-1) if radii.dim() == norms.dim() + 1 else radii > 0  # [C, N]
        n = norms.shape[-1]
        if state["grad2d"] is None:
            state["grad2d"] = torch.zeros(n, device=norms.device)
        if state["count"] is None:
            state["count"] = torch.zeros(n, device=norms.device)
        state["grad2d"] += torch.where(visible, norms, 0.0).sum(dim=0)
        state["count"] += visible.sum(dim=0, dtype=torch.float32)
        if self.refine_scale2d_stop_iter > 0:
            if state.get("radii") is None:
                state["radii"] = torch.zeros(n, device=norms.device)
            r = radii.max(dim=-1).values if radii.dim() == norms.dim() + 1 else radii
            r = torch.where(visible, r.float() / float(max(info["width"], info["height"])), 0.0)
            state["radii"] = torch.maximum(state["radii"], r.amax(dim=0))


# --- CPU support for MCMC ------------------------------------------------------------------------
# gsplat's MCMC ops call two CUDA-only kernels (noise injection's covariance, relocation). On the
# CPU (CI's tiny training runs) they would trigger a CUDA JIT build and fail, so the ops module's
# references are wrapped to dispatch on the tensor's device: CUDA tensors take gsplat's kernels
# unchanged, CPU tensors take the pure-PyTorch equivalents below.


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


def _dispatching(cuda_fn: Any, torch_fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else next(iter(kwargs.values()))
        return (cuda_fn if first.is_cuda else torch_fn)(*args, **kwargs)

    call.__wrapped__ = cuda_fn  # type: ignore[attr-defined]
    return call


if not hasattr(_ops.compute_relocation, "__wrapped__"):
    _ops.compute_relocation = _dispatching(_ops.compute_relocation, relocation_torch)
    _ops.quat_scale_to_covar_preci = _dispatching(_ops.quat_scale_to_covar_preci, _quat_scale_to_covar_preci)


def build_strategy(cfg: TrainerConfig) -> DefaultStrategy | MCMCStrategy:
    if cfg.strategy == "default":
        s = default_schedule(cfg.max_steps)
        return FixedDefaultStrategy(
            refine_start_iter=s.refine_start,
            refine_stop_iter=s.refine_stop,
            refine_every=s.refine_every,
            reset_every=s.reset_every,
            max_gaussians=cfg.max_gaussians,
        )
    if cfg.strategy == "mcmc":
        s = mcmc_schedule(cfg.max_steps)
        return MCMCStrategy(
            cap_max=min(cfg.cap_max, cfg.max_gaussians) if cfg.max_gaussians > 0 else cfg.cap_max,
            refine_start_iter=s.refine_start,
            refine_stop_iter=s.refine_stop,
            refine_every=s.refine_every,
        )
    raise ValueError(f"unknown strategy {cfg.strategy!r}: use 'default' or 'mcmc'")


def initial_state(strategy: DefaultStrategy | MCMCStrategy, scene_scale: float) -> dict[str, Any]:
    if isinstance(strategy, MCMCStrategy):
        return strategy.initialize_state()
    return strategy.initialize_state(scene_scale=scene_scale)
