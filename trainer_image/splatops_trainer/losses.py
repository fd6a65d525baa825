"""What training minimises, and the optimiser step that follows: SSIM, the loss, fused Adam.

The entry points:

* `ssim(img, ref)`: mean SSIM of channels-last images, the one SSIM the trainer uses (the training
  loss and the held-out evaluation alike). A faster kernel for some device belongs behind it.
* `photometric_loss(colors, gt, ssim_lambda)`: `(1 - lambda) * L1 + lambda * (1 - SSIM)`, the 3DGS
  loss; `mcmc_regularised(loss, splats)` adds the MCMC paper's opacity and scale terms.
* `fused_adam_step(optimizers)`: `step(); zero_grad(set_to_none=True)` of single-parameter Adams;
  `visible_adam_step(optimizers, visible)` the same on the rows a view sees only.
* `loss_function(compiled)`: `photometric_loss`, or the same function through `torch.compile`
  (Inductor fuses the L1/SSIM element-wise work and the copies around the blur into a few Triton
  kernels: the same numbers for about a quarter less GPU time per step, for a one-off compile).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

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


def _gaussian_taps() -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
    return g / g.sum()


_TAPS = tuple(float(t) for t in _gaussian_taps())
_BLURS: dict[tuple[torch.device, torch.dtype], BandedBlur] = {}


def _blur_for(img: Tensor) -> BandedBlur:
    key = (img.device, img.dtype)
    if key not in _BLURS:
        _BLURS[key] = BandedBlur(_gaussian_taps().to(device=img.device, dtype=img.dtype))
    return _BLURS[key]


def shifted_blur(x: Tensor) -> Tensor:
    """The same filter as a weighted sum of 11 shifted copies per axis, for `torch.compile` only.

    Eagerly that is 22 kernels per axis; traced, it is pure element-wise work that Inductor fuses
    (the five moment maps, both passes and their backward) into a few Triton kernels, where the
    banded matmuls stay two cuBLAS calls and an unfold backward each way.
    """
    pad = SSIM_WINDOW // 2
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (pad, pad))
    x = sum(t * xp[..., k : k + w] for k, t in enumerate(_TAPS))
    xp = torch.nn.functional.pad(x, (0, 0, pad, pad))
    return sum(t * xp[..., k : k + h, :] for k, t in enumerate(_TAPS))


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
    blur = shifted_blur if torch.compiler.is_compiling() else _blur_for(img)
    mu1, mu2, e11, e22, e12 = blur(torch.cat([a, b, a * a, b * b, a * b], dim=1)).split(ch, dim=1)
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


def _adams_with_grads(
    optimizers: dict[str, torch.optim.Optimizer], *, step_on_host: bool
) -> Iterator[tuple[dict[str, Any], Tensor, dict[str, Tensor]]]:
    """(param group, parameter, state) of each single-parameter Adam whose parameter has a
    gradient, its state created as torch.optim would on first use (the step count on the host or,
    as the fused kernel wants it, beside the parameter)."""
    for opt in optimizers.values():
        group = opt.param_groups[0]
        p = group["params"][0]
        if p.grad is None:
            continue
        state = opt.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device="cpu" if step_on_host else p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        yield group, p, state


@torch.no_grad()
def fused_adam_step(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """`opt.step(); opt.zero_grad(set_to_none=True)` for single-parameter Adams, minus the overhead.

    Runs the kernel `torch.optim.Adam(fused=True)` runs, on the optimizer's own state (same keys,
    same dtypes), so state_dict(), checkpoints and gsplat's strategy ops see no difference.
    """
    for group, p, state in _adams_with_grads(optimizers, step_on_host=False):
        state["step"] += 1
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], amsgrad=False, maximize=False,
        )
        p.grad = None


def _adam_rows(p: Tensor, g: Tensor, m: Tensor, v: Tensor, rows: Tensor | None, lr: float, b1: float, b2: float,
               eps: float) -> None:
    """gsplat's `adam` kernel (csrc/AdamCUDA.cu) in torch, for the CPU: Adam without bias
    correction on the rows (Gaussians) where `rows` is True, every row where it is None."""
    m_new = b1 * m + (1.0 - b1) * g
    v_new = b2 * v + (1.0 - b2) * g * g
    p_new = p - lr * m_new / (v_new.sqrt() + eps)
    keep = None if rows is None else rows.view(-1, *([1] * (p.dim() - 1)))
    for old, new in ((p, p_new), (m, m_new), (v, v_new)):
        old.copy_(new if keep is None else torch.where(keep, new, old))


@torch.no_grad()
def visible_adam_step(optimizers: dict[str, torch.optim.Optimizer], visible: Tensor) -> None:
    """Adam on the Gaussians the step's view sees only (Taming 3DGS; gsplat's `visible_adam`).

    An unseen Gaussian has a zero gradient; plain Adam would still decay its moments and move it
    along its old momentum, for a read and write of every parameter. Here its row is skipped: less
    GPU work the fewer a view sees. Bias-corrected like torch's Adam (gsplat's kernel is not): the
    correction is folded into the kernel's learning rate and epsilon, with the step count kept on
    the host (checkpoints hold it as torch.optim does). No weight decay: neither the kernel nor
    `make_optimizers`' Adams have any.
    """
    kernel = _gsplat_adam if visible.is_cuda else _adam_rows
    for group, p, state in _adams_with_grads(optimizers, step_on_host=True):
        # .cpu(): a resumed fused optimizer loads its count onto the GPU; one sync, then host-side
        step = state["step"] = state["step"].cpu() + 1
        beta1, beta2 = group["betas"]
        bc1, bc2 = 1.0 - beta1 ** float(step), (1.0 - beta2 ** float(step)) ** 0.5
        kernel(p, p.grad, state["exp_avg"], state["exp_avg_sq"], visible, group["lr"] * bc2 / bc1, beta1, beta2,
               group["eps"] * bc2)
        p.grad = None


def _gsplat_adam(p: Tensor, g: Tensor, m: Tensor, v: Tensor, rows: Tensor | None, lr: float, b1: float, b2: float,
                 eps: float) -> None:
    from gsplat.cuda._wrapper import adam  # CUDA only: a CPU run never loads gsplat's extension

    adam(p, g.contiguous(), m, v, rows, lr, b1, b2, eps)


def optimizer_step(optimizers: dict[str, torch.optim.Optimizer], *, fused: bool, visible: Tensor | None = None) -> None:
    """One Adam step of every parameter, gradients cleared: only the visible Gaussians' rows when
    `visible` is given (`visible_adam_step`); else the fused kernel called directly on a GPU
    (torch.optim's per-call Python overhead, ~0.14 ms x 6 optimizers, dominated the host side of a
    step), torch.optim's own step elsewhere."""
    if visible is not None:
        visible_adam_step(optimizers, visible)
        return
    if fused:
        fused_adam_step(optimizers)
        return
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
