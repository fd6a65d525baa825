"""SSIM (splatops_trainer.losses, the loss's and evaluation's) and PSNR (image_metrics): identities,
known values, an independent reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from splatops_trainer.image_metrics import psnr
from splatops_trainer.losses import ssim


def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Direct 2D-window SSIM on [B, H, W, C] (non-separable), zero padding, per channel."""
    x, y = x.permute(0, 3, 1, 2).double(), y.permute(0, 3, 1, 2).double()
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    w2 = torch.outer(g, g) / torch.outer(g, g).sum()
    ch = x.shape[1]
    w = w2.expand(ch, 1, 11, 11)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, w, padding=5, groups=ch)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean()


@pytest.mark.parametrize("shape", [(20, 30, 3), (2, 24, 17, 3), (1, 8, 8, 3)])
def test_ssim_of_an_image_with_itself_is_one(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, x).dim() == 0


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_matches_a_direct_2d_window_reference(noise):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 25, 31, 3, generator=gen)
    y = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert ssim(x, y).item() == pytest.approx(_reference_ssim(x, y).item(), abs=1e-5)
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-6)  # symmetric


@pytest.mark.parametrize(("h", "w", "seed"), [(30, 40, 0), (37, 129, 1), (5, 9, 2), (64, 64, 3)])
def test_banded_ssim_and_its_gradient_match_the_reference(h: int, w: int, seed: int) -> None:
    """The block-banded blur across block edges (129 > 2 x 64 columns) and for images smaller than
    the window, forward and backward."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, h, w, 3, generator=g, requires_grad=True)
    b = (a.detach() + 0.1 * torch.randn(2, h, w, 3, generator=g)).clamp(0, 1)
    a64 = a.detach().double().requires_grad_()
    ours, ref = ssim(a, b), _reference_ssim(a64, b)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    (ga,) = torch.autograd.grad(ours, a)
    (gr,) = torch.autograd.grad(ref, a64)
    torch.testing.assert_close(ga.double(), gr, rtol=1e-3, atol=1e-8)


def test_ssim_decreases_with_noise_and_has_finite_gradients():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(16, 16, 3, generator=gen)
    values = [ssim(x, (x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1)).item() for s in (0.01, 0.1, 0.4)]
    assert values[0] > values[1] > values[2]
    y = torch.rand(16, 16, 3, generator=gen, requires_grad=True)
    ssim(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("a", "b", "expected_db"),
    [(0.0, 0.1, 20.0), (0.5, 0.51, 40.0), (0.2, 0.7, 20 * math.log10(2))],
)
def test_psnr_of_constant_images(a, b, expected_db):
    x, y = torch.full((8, 9, 3), a), torch.full((8, 9, 3), b)
    assert psnr(x, y).item() == pytest.approx(expected_db, abs=1e-3)
    assert psnr(x[None], y[None]).item() == pytest.approx(expected_db, abs=1e-3)


def test_psnr_averages_per_image_values_over_the_batch():
    x = torch.zeros(2, 4, 4, 3)
    y = torch.stack([torch.full((4, 4, 3), 0.1), torch.full((4, 4, 3), 0.01)])
    assert psnr(x, y).item() == pytest.approx((20.0 + 40.0) / 2, abs=1e-3)


@pytest.mark.parametrize("fn", [ssim, psnr])
def test_metrics_reject_mismatched_shapes(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(8, 8, 3), torch.zeros(8, 9, 3))
