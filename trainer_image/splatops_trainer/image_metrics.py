"""Differentiable image metrics in pure PyTorch (any device): SSIM and PSNR.

Images are channels-last, as `render.rasterize` returns them: [H, W, C] or [B, H, W, C], values in
[0, 1] (data range 1). Both return a 0-dim tensor: the mean over the batch (and, for SSIM, over
pixels and channels), differentiable w.r.t. both inputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1 = 0.01**2  # (k1 * data_range)^2, data_range = 1
_C2 = 0.03**2


def _as_bchw(img: Tensor, name: str) -> Tensor:
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4:
        raise ValueError(f"{name} must be [H, W, C] or [B, H, W, C] (channels last), got {list(img.shape)}")
    return img.permute(0, 3, 1, 2)


def _check_same(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {list(a.shape)} and {list(b.shape)}")


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=dtype)


def ssim(img1: Tensor, img2: Tensor, *, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5).

    Channels-last [H, W, C] or [B, H, W, C] in [0, 1]. Zero-padded "same" filtering, like the 3DGS
    reference implementation, so every pixel counts (also for images smaller than the window).
    """
    _check_same(img1, img2)
    x, y = _as_bchw(img1, "img1"), _as_bchw(img2, "img2")
    ch = x.shape[1]
    g = _gaussian_1d(window_size, float(sigma), x.device, x.dtype)
    # separable filter: one depthwise conv along x, one along y, for the 5 maps at once
    wx = g.view(1, 1, 1, -1).repeat(5 * ch, 1, 1, 1)
    wy = g.view(1, 1, -1, 1).repeat(5 * ch, 1, 1, 1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    pad = window_size // 2
    blurred = F.conv2d(F.conv2d(stack, wx, padding=(0, pad), groups=5 * ch), wy, padding=(pad, 0), groups=5 * ch)
    mu1, mu2, e11, e22, e12 = blurred.split(ch, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    num = (2 * mu12 + _C1) * (2 * s12 + _C2)
    den = (mu1_sq + mu2_sq + _C1) * (s1 + s2 + _C2)
    return (num / den).mean()


def psnr(img1: Tensor, img2: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for data range 1: mean over the batch of -10 log10(MSE).

    [H, W, C] or [B, H, W, C]; each image's MSE is taken separately, then the PSNRs are averaged.
    Identical images give +inf.
    """
    _check_same(img1, img2)
    a = img1[None] if img1.dim() == 3 else img1
    b = img2[None] if img2.dim() == 3 else img2
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse)).mean()
