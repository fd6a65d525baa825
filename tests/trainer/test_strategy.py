"""Densification strategy: schedules scaled to the run length, and gsplat 1.5.3's reset bug fixed."""

from __future__ import annotations

import pytest
import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy

from splatops_trainer.config import TrainerConfig
from splatops_trainer.splats import make_optimizers
from splatops_trainer.strategy import (
    FixedDefaultStrategy,
    Schedule,
    build_strategy,
    default_schedule,
    mcmc_schedule,
)


@pytest.mark.parametrize(
    ("max_steps", "expected"),
    [
        (30_000, Schedule(refine_start=500, refine_stop=15_000, refine_every=100, reset_every=3_000)),
        (7_000, Schedule(refine_start=117, refine_stop=3_500, refine_every=100, reset_every=3_000)),  # one reset, at 3000
        (300, Schedule(refine_start=5, refine_stop=150, refine_every=10, reset_every=75)),  # once, halfway
        (60, Schedule(refine_start=1, refine_stop=30, refine_every=10, reset_every=15)),
        (1, Schedule(refine_start=1, refine_stop=1, refine_every=1, reset_every=1)),
    ],
)
def test_default_schedule_scales_with_run_length(max_steps: int, expected: Schedule) -> None:
    assert default_schedule(max_steps) == expected


@pytest.mark.parametrize(
    ("max_steps", "refine_stop", "refine_every"),
    [(30_000, 25_000, 100), (7_000, 5_833, 100), (300, 250, 10), (6, 5, 5)],
)
def test_mcmc_schedule(max_steps: int, refine_stop: int, refine_every: int) -> None:
    s = mcmc_schedule(max_steps)
    assert (s.refine_stop, s.refine_every, s.reset_every) == (refine_stop, refine_every, 0)


@pytest.mark.parametrize(
    ("strategy", "cls"), [("default", FixedDefaultStrategy), ("mcmc", MCMCStrategy)]
)
def test_build_strategy(tmp_path, strategy: str, cls: type) -> None:
    cfg = TrainerConfig(scene_dir=tmp_path, max_steps=7000, strategy=strategy, cap_max=12_345)  # type: ignore[arg-type]
    s = build_strategy(cfg)
    assert type(s) is cls
    assert s.refine_stop_iter < 7000
    if strategy == "mcmc":
        assert s.cap_max == 12_345


def _params(n: int) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(0)
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
            "scales": torch.nn.Parameter(torch.full((n, 3), -3.0)),
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
            "opacities": torch.nn.Parameter(torch.zeros(n)),  # sigmoid 0.5
            "sh0": torch.nn.Parameter(torch.zeros(n, 1, 3)),
            "shN": torch.nn.Parameter(torch.zeros(n, 15, 3)),
        }
    )


def _info(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.randn(1, n, 2, generator=g) * 1e-3
    radii = torch.randint(0, 4, (1, n, 2), generator=g, dtype=torch.int32)
    return {"means2d": means2d, "radii": radii, "width": 64, "height": 48, "n_cameras": 1, "gaussian_ids": None}


def _reset_steps(strategy: DefaultStrategy, steps: int) -> list[int]:
    n = 32
    params = _params(n)
    opts = make_optimizers(params, scene_scale=1.0)
    state = strategy.initialize_state(scene_scale=1.0)
    fired = []
    for step in range(steps):
        with torch.no_grad():
            params["opacities"].fill_(0.0)  # back to 0.5 so each reset is visible
        strategy.step_post_backward(params, opts, state, step, _info(n, step), packed=False)
        if torch.sigmoid(params["opacities"]).max() < 0.02:
            fired.append(step)
    return fired


def test_opacity_reset_fires_at_multiples_but_not_step_zero() -> None:
    # Refining is switched off (start beyond the run) so only the reset can lower opacities.
    fixed = FixedDefaultStrategy(refine_start_iter=10_000, refine_stop_iter=100, reset_every=30)
    assert _reset_steps(fixed, 100) == [30, 60, 90]


def test_opacity_reset_stops_with_refining() -> None:
    fixed = FixedDefaultStrategy(refine_start_iter=10_000, refine_stop_iter=61, reset_every=30)
    assert _reset_steps(fixed, 100) == [30, 60]


def test_upstream_default_strategy_never_resets() -> None:
    """Documents the gsplat 1.5.3 bug we work around; if this fails, upstream fixed it."""
    upstream = DefaultStrategy(refine_start_iter=10_000, refine_stop_iter=100, reset_every=30)
    assert _reset_steps(upstream, 100) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sync_free_state_update_matches_upstream(seed: int) -> None:
    n = 50
    ours, theirs = FixedDefaultStrategy(), DefaultStrategy()
    s_ours, s_theirs = ours.initialize_state(), theirs.initialize_state()
    params = _params(n)
    for k in range(3):
        info = _info(n, seed * 10 + k)
        ours._update_state(params, s_ours, info)
        theirs._update_state(params, s_theirs, info)
    torch.testing.assert_close(s_ours["grad2d"], s_theirs["grad2d"])
    torch.testing.assert_close(s_ours["count"], s_theirs["count"])
    assert s_ours["count"].sum() > 0


def test_refine_grows_high_gradient_gaussians() -> None:
    n = 40
    strategy = FixedDefaultStrategy(refine_start_iter=0, refine_every=5, refine_stop_iter=100, reset_every=1000)
    params = _params(n)
    opts = make_optimizers(params, scene_scale=1.0)
    state = strategy.initialize_state(scene_scale=1.0)
    for step in range(1, 6):
        info = _info(n, step)
        info["means2d"].grad = torch.full((1, n, 2), 1.0)  # far above grow_grad2d
        info["radii"] = torch.full((1, n, 2), 3, dtype=torch.int32)
        strategy.step_post_backward(params, opts, state, step, info)
    assert params["means"].shape[0] == 2 * n  # small Gaussians are duplicated
    assert opts["means"].param_groups[0]["params"][0] is params["means"]


def _grow_once(strategy: FixedDefaultStrategy, n: int, grads: torch.Tensor) -> torch.nn.ParameterDict:
    """One refine window (steps 1..5) whose per-Gaussian screen gradient is `grads` [n]."""
    params = _params(n)
    opts = make_optimizers(params, scene_scale=1.0)
    state = strategy.initialize_state(scene_scale=1.0)
    for step in range(1, 6):
        info = _info(n, step)
        info["means2d"].grad = grads.reshape(1, n, 1).expand(1, n, 2).clone()
        info["radii"] = torch.full((1, n, 2), 3, dtype=torch.int32)
        strategy.step_post_backward(params, opts, state, step, info)
    return params


@pytest.mark.parametrize(("cap", "expected"), [(0, 80), (1000, 80), (55, 55), (40, 40), (10, 40)])
def test_max_gaussians_caps_growth(cap: int, expected: int) -> None:
    """Growth stops at the cap (never below what exists: the cap does not prune), and the
    Gaussians that do grow are the ones with the largest gradients."""
    n = 40
    grads = torch.linspace(1.0, 2.0, n)  # all far above grow_grad2d; the last ones highest
    strategy = FixedDefaultStrategy(refine_start_iter=0, refine_every=5, refine_stop_iter=100, reset_every=1000,
                                    max_gaussians=cap)
    params = _grow_once(strategy, n, grads)
    assert params["means"].shape[0] == expected
    if n < cap < 2 * n:  # these are split: the grown leave their place; the rest keep theirs, in order
        kept = n - (cap - n)
        torch.testing.assert_close(params["means"][:kept], _params(n)["means"][:kept])


def test_max_gaussians_reaches_the_strategies(tmp_path) -> None:
    default = build_strategy(TrainerConfig(scene_dir=tmp_path, max_gaussians=500_000))
    mcmc = build_strategy(TrainerConfig(scene_dir=tmp_path, strategy="mcmc", max_gaussians=500_000))
    mcmc_uncapped = build_strategy(TrainerConfig(scene_dir=tmp_path, strategy="mcmc"))
    assert (default.max_gaussians, mcmc.cap_max, mcmc_uncapped.cap_max) == (500_000, 500_000, 1_000_000)


@pytest.mark.parametrize("seed", [0, 1])
def test_relocation_torch_matches_reference_formula(seed: int) -> None:
    import math

    from gsplat.strategy import MCMCStrategy as M

    from splatops_trainer.mcmc_cpu import relocation_torch

    g = torch.Generator().manual_seed(seed)
    n = 20
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    scales = torch.rand(n, 3, generator=g) + 0.1
    ratios = torch.randint(1, 8, (n,), generator=g)
    binoms = M().initialize_state()["binoms"]
    new_o, new_s = relocation_torch(opac, scales, ratios, binoms)
    for j in range(n):
        r, o = int(ratios[j]), float(opac[j])
        no = 1 - (1 - o) ** (1 / r)
        denom = sum(
            math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * no ** (k + 1)
            for i in range(1, r + 1)
            for k in range(i)
        )
        assert float(new_o[j]) == pytest.approx(no, rel=1e-5)
        torch.testing.assert_close(new_s[j], scales[j] * (o / denom), rtol=1e-4, atol=1e-6)


def test_importing_the_trainer_patches_nothing_in_gsplat() -> None:
    """The CPU MCMC path is chosen by the adapter, not by rewriting gsplat's ops at import."""
    from gsplat.strategy import ops

    import splatops_trainer.strategy  # noqa: F401
    import splatops_trainer.train  # noqa: F401

    assert not hasattr(ops.compute_relocation, "__wrapped__")
    assert ops.compute_relocation.__module__ == "gsplat.relocation"
    assert ops.quat_scale_to_covar_preci.__module__.startswith("gsplat.cuda")


def _mcmc_run(post_backward, steps: range) -> tuple[dict[str, torch.Tensor], dict]:
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(3)
    n = 60
    ps = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.rand(n, 3, generator=g) - 3.0),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(n, generator=g) * 4.0),  # some below min_opacity
        "sh0": torch.nn.Parameter(torch.rand(n, 1, 3, generator=g)),
        "shN": torch.nn.Parameter(torch.zeros(n, 3, 3)),
    })
    opts = make_optimizers(ps, scene_scale=1.0)
    strategy = MCMCStrategy(cap_max=75, refine_start_iter=1, refine_stop_iter=50, refine_every=2)
    state = strategy.initialize_state()
    for step in steps:
        sum((v * v).sum() for v in ps.values()).backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        post_backward(strategy, ps, opts, state, step)
    return {k: v.detach().clone() for k, v in ps.items()}, {k: o.state_dict() for k, o in opts.items()}


def test_cpu_mcmc_refinement_is_gsplats_with_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """mcmc_cpu.step_post_backward draws and moves exactly what gsplat's MCMCStrategy does when its
    two CUDA kernels are swapped (in this test only) for their PyTorch equivalents."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
    from gsplat.strategy import ops

    from splatops_trainer import mcmc_cpu

    steps = range(0, 9)  # refines at 2, 4, 6, 8: relocation and growth; noise every step
    ours, our_opts = _mcmc_run(lambda s, p, o, st, step: mcmc_cpu.step_post_backward(s, p, o, st, step, lr=1e-3), steps)
    monkeypatch.setattr(ops, "compute_relocation", mcmc_cpu.relocation_torch)
    monkeypatch.setattr(ops, "quat_scale_to_covar_preci", _quat_scale_to_covar_preci)
    ref, ref_opts = _mcmc_run(lambda s, p, o, st, step: s.step_post_backward(p, o, st, step, {}, lr=1e-3), steps)
    assert ours["means"].shape[0] == ref["means"].shape[0] == 72  # 60, then 5% more at each refine
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=0, msg=k)
    for k in ref_opts:
        for key, v in ref_opts[k]["state"][0].items():
            torch.testing.assert_close(our_opts[k]["state"][0][key], v, rtol=0, atol=0)
