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

The training loop drives either through a `StrategyAdapter` (`adapter(build_strategy(cfg))`):
`DefaultAdapter` or `MCMCAdapter`, the latter taking mcmc_cpu.py's refinement for CPU tensors.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import reset_opa

from . import losses, mcmc_cpu
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


# --- What the training loop calls ----------------------------------------------------------------
# The two strategies differ in their hooks (only the default one acts before backward), in the
# loss (MCMC adds its regularisers) and in their arguments after the step (the default one takes
# `packed`, MCMC the means' learning rate): one adapter each, so the loop has no branches.


class StrategyAdapter(abc.ABC):
    """One densification strategy as the loop drives it: `before_backward`, `loss`, `after_step`."""

    def __init__(self, strategy: DefaultStrategy | MCMCStrategy) -> None:
        self.strategy = strategy

    @property
    def absgrad(self) -> bool:
        """Whether the render must accumulate `means2d.absgrad` (the strategy reads it)."""
        return bool(getattr(self.strategy, "absgrad", False))

    @abc.abstractmethod
    def initial_state(self, scene_scale: float) -> dict[str, Any]:
        """The strategy's running state (checkpointed with the splats)."""

    @abc.abstractmethod
    def cap(self, gaussians: int) -> None:
        """Stop densification at this many Gaussians."""

    def before_backward(self, splats: Any, optimizers: Any, state: dict[str, Any], step: int, info: dict[str, Any]) -> None:
        """Before `loss.backward()` (the default strategy keeps means2d's gradient)."""

    def loss(self, loss: torch.Tensor, splats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The photometric loss plus this strategy's own terms."""
        return loss

    @abc.abstractmethod
    def after_step(self, splats: Any, optimizers: Any, state: dict[str, Any], step: int, info: dict[str, Any],
                   means_lr: float) -> None:
        """After the optimiser step: densify, prune, relocate, as the strategy's schedule says."""


class DefaultAdapter(StrategyAdapter):
    strategy: FixedDefaultStrategy

    def initial_state(self, scene_scale: float) -> dict[str, Any]:
        return self.strategy.initialize_state(scene_scale=scene_scale)

    def cap(self, gaussians: int) -> None:
        self.strategy.max_gaussians = gaussians

    def before_backward(self, splats: Any, optimizers: Any, state: dict[str, Any], step: int, info: dict[str, Any]) -> None:
        self.strategy.step_pre_backward(splats, optimizers, state, step, info)

    def after_step(self, splats: Any, optimizers: Any, state: dict[str, Any], step: int, info: dict[str, Any],
                   means_lr: float) -> None:
        self.strategy.step_post_backward(splats, optimizers, state, step, info, packed=False)


class MCMCAdapter(StrategyAdapter):
    strategy: MCMCStrategy

    def initial_state(self, scene_scale: float) -> dict[str, Any]:
        return self.strategy.initialize_state()

    def cap(self, gaussians: int) -> None:
        self.strategy.cap_max = min(self.strategy.cap_max, gaussians)

    def loss(self, loss: torch.Tensor, splats: dict[str, torch.Tensor]) -> torch.Tensor:
        return losses.mcmc_regularised(loss, splats)

    def after_step(self, splats: Any, optimizers: Any, state: dict[str, Any], step: int, info: dict[str, Any],
                   means_lr: float) -> None:
        # gsplat's MCMC ops call two CUDA-only kernels; CPU tensors take mcmc_cpu's equivalents.
        if splats["means"].is_cuda:
            self.strategy.step_post_backward(splats, optimizers, state, step, info, lr=means_lr)
        else:
            mcmc_cpu.step_post_backward(self.strategy, splats, optimizers, state, step, lr=means_lr)


def adapter(strategy: DefaultStrategy | MCMCStrategy) -> StrategyAdapter:
    return MCMCAdapter(strategy) if isinstance(strategy, MCMCStrategy) else DefaultAdapter(strategy)
