"""visible_adam: Adam on the Gaussians a view sees only (losses.visible_adam_step), and the SSIM
blur the compiled loss traces (losses.shifted_blur). gsplat's CUDA kernel behind the step is
checked against the torch rows used here on the GPU machine (benchmarks/README.md)."""

from __future__ import annotations

import copy

import pytest
import torch

from splatops_trainer import losses
from splatops_trainer.config import TrainerConfig
from splatops_trainer.splats import make_optimizers

SHAPES = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3), "shN": (15, 3)}
N = 40


def _params(seed: int = 0) -> tuple[torch.nn.ParameterDict, dict[str, torch.optim.Optimizer]]:
    g = torch.Generator().manual_seed(seed)
    ps = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(N, *s, generator=g)) for k, s in SHAPES.items()})
    return ps, make_optimizers(ps, scene_scale=2.0)


def _backward(ps: torch.nn.ParameterDict, i: int, rows: torch.Tensor | None = None) -> None:
    """A loss whose gradient is zero on the rows a view would not see (as in a render)."""
    w = torch.ones(N) if rows is None else rows.float()
    loss = sum((w.view(-1, *[1] * (v.dim() - 1)) * (v - 0.1 * (i + 1)) ** 2).sum() for v in ps.values())
    loss.backward()


@pytest.mark.parametrize("steps", [1, 3, 12])
def test_with_every_gaussian_visible_it_is_torch_adam(steps: int) -> None:
    """The bias correction folded into the kernel's lr and eps gives torch's numbers."""
    ref, ref_opts = _params()
    ours, our_opts = _params()
    for i in range(steps):
        _backward(ref, i)
        _backward(ours, i)
        losses.optimizer_step(ref_opts, fused=False)
        losses.optimizer_step(our_opts, fused=False, visible=torch.ones(N, dtype=torch.bool))
    for k in SHAPES:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6)
        assert ours[k].grad is None
        so, sr = our_opts[k].state[ours[k]], ref_opts[k].state[ref[k]]
        assert so.keys() == sr.keys()
        torch.testing.assert_close(so["exp_avg"], sr["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(so["exp_avg_sq"], sr["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        assert float(so["step"]) == float(sr["step"]) == steps


def test_unseen_gaussians_keep_their_values_and_moments() -> None:
    ps, opts = _params()
    for i in range(3):  # some momentum everywhere first
        _backward(ps, i)
        losses.optimizer_step(opts, fused=False, visible=torch.ones(N, dtype=torch.bool))
    seen = torch.arange(N) % 3 == 0
    before = {k: (ps[k].detach().clone(), opts[k].state[ps[k]]["exp_avg"].clone()) for k in SHAPES}
    _backward(ps, 3, rows=seen)
    losses.optimizer_step(opts, fused=False, visible=seen)
    for k in SHAPES:
        value, moment = before[k]
        assert torch.equal(ps[k].detach()[~seen], value[~seen]), f"{k}: an unseen Gaussian moved"
        assert torch.equal(opts[k].state[ps[k]]["exp_avg"][~seen], moment[~seen])
        assert (ps[k].detach()[seen] != value[seen]).all(), f"{k}: a seen Gaussian did not move"


def test_the_step_count_survives_a_checkpoint_round_trip() -> None:
    """Checkpoints hold the optimizer state as torch.optim does; resuming continues the count."""
    ps, opts = _params()
    for i in range(2):
        _backward(ps, i)
        losses.optimizer_step(opts, fused=False, visible=torch.ones(N, dtype=torch.bool))
    saved = copy.deepcopy({k: o.state_dict() for k, o in opts.items()})  # as torch.save would
    again, again_opts = _params()
    with torch.no_grad():
        for k in SHAPES:
            again[k].copy_(ps[k])
    for k, o in again_opts.items():
        o.load_state_dict(saved[k])
    for i in (2, 3):
        for p, o in ((ps, opts), (again, again_opts)):
            _backward(p, i)
            losses.optimizer_step(o, fused=False, visible=torch.ones(N, dtype=torch.bool))
    for k in SHAPES:
        torch.testing.assert_close(again[k], ps[k], rtol=0, atol=0)
        assert float(again_opts[k].state[again[k]]["step"]) == 4


@pytest.mark.parametrize(("values", "expected"), [({}, True), ({"visible_adam": False}, False)])
def test_visible_adam_is_the_default(tmp_path, values, expected) -> None:
    assert TrainerConfig(scene_dir=tmp_path, **values).visible_adam is expected


@pytest.mark.parametrize("shape", [(1, 15, 67, 131), (2, 3, 5, 7), (1, 6, 11, 11)])
def test_the_traced_blur_is_the_banded_one(shape) -> None:
    """Both the same 11-tap Gaussian with zero padding, also for images smaller than the window."""
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(losses.shifted_blur(x), losses._blur_for(x)(x), rtol=0, atol=1e-12)
