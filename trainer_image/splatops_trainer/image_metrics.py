"""PSNR in pure PyTorch (any device); SSIM is `losses.ssim`, shared by the loss and evaluation.

Images are channels-last, as `render.rasterize` returns them: [H, W, C] or [B, H, W, C], values in
[0, 1] (data range 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(img1: Tensor, img2: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for data range 1: mean over the batch of -10 log10(MSE).

    [H, W, C] or [B, H, W, C]; each image's MSE is taken separately, then the PSNRs are averaged.
    Identical images give +inf. A 0-dim tensor.
    """
    if img1.shape != img2.shape:
        raise ValueError(f"images must have the same shape, got {list(img1.shape)} and {list(img2.shape)}")
    a = img1[None] if img1.dim() == 3 else img1
    b = img2[None] if img2.dim() == 3 else img2
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse)).mean()
