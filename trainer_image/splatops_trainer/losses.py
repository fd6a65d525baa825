"""What training minimises, and the optimiser step that follows: SSIM, the loss, fused Adam.

Three entry points:

* `ssim(img, ref)`: mean SSIM of channels-last images, the one SSIM the trainer uses (the training
  loss and the held-out evaluation alike). A faster kernel for some device belongs behind it.
* `photometric_loss(colors, gt, ssim_lambda)`: `(1 - lambda) * L1 + lambda * (1 - SSIM)`, the 3DGS
  loss; `mcmc_regularised(loss, splats)` adds the MCMC paper's opacity and scale terms.
* `fused_adam_step(optimizers)`: `step(); zero_grad(set_to_none=True)` of single-parameter Adams.
* `loss_function(compiled)`: `photometric_loss`, or the same function through `torch.compile`
  (Inductor fuses the L1/SSIM element-wise work and the copies around the blur into a few Triton
  kernels: the same numbers for about a quarter less GPU time per step, for a one-off compile).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1 = 0.01**2  # (k1 * data_range)^2, data_range = 1
_C2 = 0.03**2

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor, float], Tensor]

MCMC_OPACITY_REG = 0.01
MCMC_SCALE_REG = 0.01


class BandedBlur:
    """The SSIM's 11-tap Gaussian filter ("same", zero padding) as block-banded fp32 matmuls.

    cuDNN's grouped 1-D convolutions took ~1.4 ms of GPU time per step (forward + backward) on a
    538x960 image, more than the rasteriser; cutting the row into blocks of 64 outputs turns each
    pass into one small dense matmul ([.., 74] @ [74, 64]) at ~1/13 of a full banded matmul's work.
    """

    BLOCK = 64

    def __init__(self, taps: Tensor) -> None:
        self.taps = int(taps.numel())
        self.pad = self.taps // 2
        span = self.BLOCK + self.taps - 1
        m = torch.zeros(span, self.BLOCK, dtype=taps.dtype, device=taps.device)
        for j in range(self.BLOCK):
            m[j : j + self.taps, j] = taps
        self.matrix = m

    def _along_last(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        blocks = -(-n // self.BLOCK)
        xp = torch.nn.functional.pad(x, (self.pad, blocks * self.BLOCK - n + self.pad))
        span = self.BLOCK + self.taps - 1
        windows = xp.unfold(-1, span, self.BLOCK)  # [..., blocks, span], a strided view
        # One 2-D mm over all rows (not a batched matmul): fewer launches, better GEMM shape.
        out = windows.reshape(-1, span) @ self.matrix
        return out.view(*windows.shape[:-1], self.BLOCK).flatten(-2)[..., :n]

    def __call__(self, x: Tensor) -> Tensor:
        """Blur the last two dims."""
        x = self._along_last(x)
        return self._along_last(x.transpose(-1, -2)).transpose(-1, -2)


_BLURS: dict[tuple[torch.device, torch.dtype], BandedBlur] = {}


def _blur_for(img: Tensor) -> BandedBlur:
    key = (img.device, img.dtype)
    if key not in _BLURS:
        x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2.0
        g = torch.exp(-(x * x) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
        _BLURS[key] = BandedBlur((g / g.sum()).to(device=img.device, dtype=img.dtype))
    return _BLURS[key]


def ssim(img: Tensor, ref: Tensor) -> Tensor:
    """Mean structural similarity (Wang et al. 2004), 11x11 Gaussian window (sigma 1.5), as a 0-dim
    tensor differentiable w.r.t. both inputs.

    Channels-last [H, W, C] or [B, H, W, C] in [0, 1] (what `render.rasterize` returns). Zero-padded
    "same" filtering, like the 3DGS reference implementation, so every pixel counts (also for
    images smaller than the window).
    """
    if img.shape != ref.shape:
        raise ValueError(f"images must have the same shape, got {list(img.shape)} and {list(ref.shape)}")
    if img.dim() == 3:
        img, ref = img[None], ref[None]
    if img.dim() != 4:
        raise ValueError(f"images must be [H, W, C] or [B, H, W, C] (channels last), got {list(img.shape)}")
    a, b = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    ch = a.shape[1]
    mu1, mu2, e11, e22, e12 = _blur_for(img)(torch.cat([a, b, a * a, b * b, a * b], dim=1)).split(ch, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    num = (2 * mu12 + _C1) * (2 * (e12 - mu12) + _C2)
    den = (mu1_sq + mu2_sq + _C1) * (e11 - mu1_sq + e22 - mu2_sq + _C2)
    return (num / den).mean()


def photometric_loss(colors: Tensor, gt: Tensor, ssim_lambda: float) -> Tensor:
    """`(1 - lambda) * L1 + lambda * (1 - SSIM)` of a render against its view, [B, H, W, 3]."""
    l1 = (colors - gt).abs().mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(colors, gt))


class CompiledLoss:
    """`photometric_loss` through `torch.compile`, falling back to it for good on the first failure.

    A compile needs Triton and a C compiler at run time; an image or a GPU without them must cost
    the speed-up only, never the training, so any error of the compiled call (it surfaces at the
    first call) logs one warning and the eager function takes over.
    """

    def __init__(self) -> None:
        # fp32 matmuls on purpose (the blur's variances are differences of nearly equal moments):
        # Inductor's hint to enable TF32 would only be noise in the training log.
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores", category=UserWarning)
        self._fn: LossFn = torch.compile(photometric_loss, dynamic=False)
        self.failed: str | None = None

    def __call__(self, colors: Tensor, gt: Tensor, ssim_lambda: float) -> Tensor:
        if self.failed is None:
            try:
                return self._fn(colors, gt, ssim_lambda)
            except Exception as exc:  # noqa: BLE001 - any compile or launch failure: eager it is
                self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("Compiling the loss failed, training on without it: %s", self.failed)
        return photometric_loss(colors, gt, ssim_lambda)


def loss_function(compiled: bool) -> LossFn:
    """The loss the loop calls: compiled (see `CompiledLoss`) or eager."""
    return CompiledLoss() if compiled else photometric_loss


def mcmc_regularised(loss: Tensor, splats: dict[str, Tensor]) -> Tensor:
    """The MCMC paper's terms: mean opacity and mean scale, each weighted 0.01 (gsplat's defaults)."""
    loss = loss + MCMC_OPACITY_REG * torch.sigmoid(splats["opacities"]).mean()
    return loss + MCMC_SCALE_REG * torch.exp(splats["scales"]).mean()


@torch.no_grad()
def fused_adam_step(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """`opt.step(); opt.zero_grad(set_to_none=True)` for single-parameter Adams, minus the overhead.

    Runs the kernel `torch.optim.Adam(fused=True)` runs, on the optimizer's own state (same keys,
    same dtypes), so state_dict(), checkpoints and gsplat's strategy ops see no difference.
    """
    for opt in optimizers.values():
        group = opt.param_groups[0]
        p = group["params"][0]
        if p.grad is None:
            continue
        state = opt.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], amsgrad=False, maximize=False,
        )
        p.grad = None


def optimizer_step(optimizers: dict[str, torch.optim.Optimizer], *, fused: bool) -> None:
    """One Adam step of every parameter, gradients cleared: the fused kernel called directly on a
    GPU (torch.optim's per-call Python overhead, ~0.14 ms x 6 optimizers, dominated the host side
    of a step), torch.optim's own step elsewhere."""
    if fused:
        fused_adam_step(optimizers)
        return
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
