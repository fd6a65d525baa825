"""The optimisation loop: Gaussians from a SceneData, trained with gsplat, checkpointed, evaluated.

`train()` is the one entry point (cli.py calls it). It reports through `TrainHooks` and returns a
`TrainOutcome`; it never prints, writes the PLY or the termination message (trainer-io does).

Performance notes (GPU): images are uploaded once as uint8; the loop makes no device->host sync
except at report/eval/checkpoint steps and the strategy's refine steps; the loss window is
accumulated on the device; Adam is fused; checkpoints are serialised on a background thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import numpy as np
import torch
from gsplat.strategy import MCMCStrategy

from splatops.contract import EVENT_EVAL, EVENT_PROGRESS, MSG_OOM, Progress, Reason

from . import checkpoint as ckpt_mod
from . import memory
from .config import TrainerConfig
from .dataset import SceneData, View
from .errors import Terminated, TrainerError
from .image_metrics import SSIM_SIGMA, SSIM_WINDOW
from .image_metrics import psnr as psnr_fn
from .image_metrics import ssim as ssim_fn
from .render import default_backend, rasterize
from .splats import empty_splats, init_splats, make_optimizers, means_lr
from .strategy import build_strategy, initial_state

log = logging.getLogger(__name__)

MCMC_OPACITY_REG = 0.01
MCMC_SCALE_REG = 0.01

# On SIGTERM the loop writes a checkpoint of the current step only when that is expected to take
# at most this long (the previous checkpoint write's time, else the state's size at the assumed
# rate below): Kubernetes' default grace period is 30 s, and the failure report comes after it.
STOP_CHECKPOINT_BUDGET_S = 10.0
ASSUMED_CHECKPOINT_BYTES_PER_S = 100e6


class TrainHooks(Protocol):
    """How training reports; trainer-io implements it (stdout JSON, training_log.txt, metrics)."""

    def on_progress(self, p: Progress) -> None: ...

    def on_eval(self, p: Progress) -> None: ...


class TrainingDivergedError(TrainerError):
    """The loss became NaN/inf (exit code 1, reason TrainingDiverged)."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.TRAINING_DIVERGED, message)


@dataclasses.dataclass
class TrainOutcome:
    splats: dict[str, torch.Tensor]  # detached CPU tensors: means, scales, quats, opacities, sh0, shN
    steps: int
    psnr: float | None  # mean over scene.test; None when nothing is held out
    ssim: float | None
    num_gaussians: int
    duration_s: float  # wall time of this train() call
    steps_per_sec: float  # steps run by this call / loop wall time
    final_loss: float
    resumed_from: int | None = None  # checkpoint step this call continued from
    peak_gpu_memory_bytes: int | None = None
    gpu_seconds: float | None = None  # seconds this call held the GPU (its cost basis); None on the CPU
    memory_estimate: memory.MemoryEstimate | None = None  # what train() expected before the first step


# Images live on the GPU (one upload; the loop never waits for a copy) unless all of them would
# take more than this share of its memory: then they stay in pinned host memory and each step
# copies its one view (a few MB, overlapped), so a large capture trains instead of running out of
# memory before the first step.
IMAGES_ON_DEVICE_MAX_FRACTION = 0.25


def images_fit_on_device(image_bytes: int, device_bytes: int | None) -> bool:
    """Whether the views' images should live on the device (None: not a GPU, nothing to decide)."""
    return device_bytes is None or image_bytes <= IMAGES_ON_DEVICE_MAX_FRACTION * device_bytes


def _device_bytes(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


@dataclasses.dataclass
class _DeviceViews:
    """Views ready for the loop: uint8 images (on the device, or pinned on the host when they do
    not fit), stacked intrinsics and poses on the device."""

    images: list[torch.Tensor]  # each [H, W, 3] uint8
    Ks: torch.Tensor  # [V, 3, 3]
    viewmats: torch.Tensor  # [V, 4, 4]
    sizes: list[tuple[int, int]]  # (width, height)
    device: torch.device = torch.device("cpu")

    @classmethod
    def upload(cls, views: list[View], device: torch.device, *, images_on_device: bool = True) -> _DeviceViews:
        if not views:
            return cls([], torch.empty(0, 3, 3, device=device), torch.empty(0, 4, 4, device=device), [], device)
        if images_on_device:
            images = [v.image.to(device, non_blocking=True) for v in views]
        else:
            images = [v.image.pin_memory() if device.type == "cuda" else v.image for v in views]
        return cls(
            images=images,
            Ks=torch.stack([v.K.float() for v in views]).to(device),
            viewmats=torch.stack([v.viewmat.float() for v in views]).to(device),
            sizes=[(v.width, v.height) for v in views],
            device=device,
        )

    def target(self, i: int) -> torch.Tensor:
        image = self.images[i].to(self.device, non_blocking=True)  # a no-op when already there
        return (image.float() / 255.0)[None]  # [1, H, W, 3]


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG's state as tensors and plain containers (checkpoints load with weights_only)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),  # uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


class EpochOrder:
    """Which training view step N shows: each view once per epoch, in a fresh shuffled order.

    What a shuffling data loader does, rather than a uniform draw with replacement: every view
    weighs the same in each stretch of steps (the default strategy's densification averages
    gradients over the ~100 steps between refinements), and no view goes unseen for long. On fox
    (7000 steps) it raised held-out PSNR from a mean of 31.50 (18 runs, 12 of them >= 31.5) to
    31.72 (20 runs, 19 of them >= 31.5): benchmarks/README.md. A pure function of (seed, step), so a resumed
    run shows exactly the views an uninterrupted one would, with no sampler state to checkpoint.
    """

    def __init__(self, num_views: int, seed: int):
        if num_views < 1:
            raise ValueError(f"need at least one view, got {num_views}")
        self.num_views, self.seed = num_views, seed
        self._epoch, self._perm = -1, []

    def __call__(self, step: int) -> int:
        epoch, pos = divmod(step, self.num_views)
        if epoch != self._epoch:  # CPU generator: drawing an order never touches the GPU
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.num_views, generator=g).tolist()
        return self._perm[pos]


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        # Evaluation's SSIM convolutions have fixed sizes: let cuDNN pick its fastest kernel once.
        # Matmuls stay full fp32 (no TF32): the training SSIM's variances are differences of
        # nearly equal blurred moments and would lose most of their digits at TF32's 10-bit mantissa.
        torch.backends.cudnn.benchmark = True


class BandedBlur:
    """The SSIM's 11-tap Gaussian filter ("same", zero padding) as block-banded fp32 matmuls.

    cuDNN's grouped 1-D convolutions took ~1.4 ms of GPU time per step (forward + backward) on a
    538x960 image, more than the rasteriser; cutting the row into blocks of 64 outputs turns each
    pass into one small dense matmul ([.., 74] @ [74, 64]) at ~1/13 of a full banded matmul's work.
    Same numbers as `image_metrics.ssim`'s convolution (tested), on every device.
    """

    BLOCK = 64

    def __init__(self, taps: torch.Tensor) -> None:
        self.taps = int(taps.numel())
        self.pad = self.taps // 2
        span = self.BLOCK + self.taps - 1
        m = torch.zeros(span, self.BLOCK, dtype=taps.dtype, device=taps.device)
        for j in range(self.BLOCK):
            m[j : j + self.taps, j] = taps
        self.matrix = m

    def _along_last(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        blocks = -(-n // self.BLOCK)
        xp = torch.nn.functional.pad(x, (self.pad, blocks * self.BLOCK - n + self.pad))
        span = self.BLOCK + self.taps - 1
        windows = xp.unfold(-1, span, self.BLOCK)  # [..., blocks, span], a strided view
        # One 2-D mm over all rows (not a batched matmul): fewer launches, better GEMM shape.
        out = windows.reshape(-1, span) @ self.matrix
        return out.view(*windows.shape[:-1], self.BLOCK).flatten(-2)[..., :n]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Blur the last two dims."""
        x = self._along_last(x)
        return self._along_last(x.transpose(-1, -2)).transpose(-1, -2)


_BLURS: dict[tuple[torch.device, torch.dtype], BandedBlur] = {}


def ssim_loss_term(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of channels-last [B, H, W, C] images: `image_metrics.ssim`'s definition, faster."""
    key = (img.device, img.dtype)
    if key not in _BLURS:
        x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2.0
        g = torch.exp(-(x * x) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
        _BLURS[key] = BandedBlur((g / g.sum()).to(device=img.device, dtype=img.dtype))
    blur = _BLURS[key]
    a, b = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    ch = a.shape[1]
    mu1, mu2, e11, e22, e12 = blur(torch.cat([a, b, a * a, b * b, a * b], dim=1)).split(ch, dim=1)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu12 + c1) * (2 * (e12 - mu12) + c2)
    den = (mu1_sq + mu2_sq + c1) * (e11 - mu1_sq + e22 - mu2_sq + c2)
    return (num / den).mean()


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



class _Trainer:
    def __init__(
        self, cfg: TrainerConfig, scene: SceneData, hooks: TrainHooks, device: torch.device,
        should_stop: Callable[[], bool] | None = None,
    ):
        if cfg.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {cfg.max_steps}")
        if not scene.train:
            raise ValueError("the scene has no training views")
        self.cfg, self.scene, self.hooks, self.device = cfg, scene, hooks, device
        self.backend = default_backend(device)
        _seed_all(cfg.seed, device)
        self.view_order = EpochOrder(len(scene.train), cfg.seed)
        image_bytes = sum(v.image.numel() * v.image.element_size() for v in (*scene.train, *scene.test))
        device_bytes = _device_bytes(device)
        on_device = images_fit_on_device(image_bytes, device_bytes)
        self.memory_estimate = memory_estimate(cfg, scene, image_bytes if on_device else 0)
        self.gpu_free_bytes = _free_gpu_bytes(device)
        _check_memory(cfg, self.memory_estimate, self.gpu_free_bytes)
        if not on_device:
            log.info(
                "Keeping the %d images (%.1f GiB) in host memory, more than %d%% of the GPU's %.1f GiB; "
                "each step copies one.", len(scene.train) + len(scene.test), image_bytes / 2**30,
                round(IMAGES_ON_DEVICE_MAX_FRACTION * 100), (device_bytes or 0) / 2**30,
            )
        self.train_views = _DeviceViews.upload(scene.train, device, images_on_device=on_device)
        self.test_views = _DeviceViews.upload(scene.test, device, images_on_device=on_device)
        self.strategy = build_strategy(cfg)
        self._apply_auto_cap()
        self.is_mcmc = isinstance(self.strategy, MCMCStrategy)
        self.start_step = 0
        self.resumed_from: int | None = None
        ckpt_mod.remove_stale_temps(cfg)
        self.resume_key = cfg.resume_key(scene.fingerprint)
        if cfg.resume:
            found = ckpt_mod.find_resumable(cfg, self.resume_key)
            ckpt, self._retire = found.checkpoint, found.stale
        else:  # starting over on purpose: the old checkpoints go once this run has its own
            ckpt, self._retire = None, [p for _, p in ckpt_mod.list_checkpoints(ckpt_mod.checkpoint_dir(cfg))]
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.splats = init_splats(
                scene,
                sh_degree=cfg.sh_degree,
                init_opacity=cfg.init_opacity,
                init_scale=cfg.init_scale,
                device=device,
            )
            self.optimizers = make_optimizers(self.splats, scene.scene_scale)
            self.strategy_state = initial_state(self.strategy, scene.scene_scale)
        self.strategy.check_sanity(self.splats, self.optimizers)
        # torch.optim's per-call Python overhead (~0.14 ms x 6 optimizers) dominated the CPU side
        # of a GPU step; the same fused kernel is called directly there.
        self.direct_adam = device.type == "cuda"
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt")
        self._pending: concurrent.futures.Future[Any] | None = None
        self._pending_step = 0
        self.saved_step = self.resumed_from  # the newest checkpoint of this state on disk
        self._last_save_s: float | None = None  # how long the last checkpoint write took
        self.should_stop = should_stop

    def _apply_auto_cap(self) -> None:
        """No maxGaussians set and a GPU that the expected model would fill: stop densification
        where it still fits (a safety limit from this GPU's free memory, so not in the resume key)."""
        if self.cfg.max_gaussians > 0:
            return
        cap = memory.auto_cap(self.memory_estimate, self.gpu_free_bytes)
        if cap <= 0:
            return
        if isinstance(self.strategy, MCMCStrategy):
            self.strategy.cap_max = min(self.strategy.cap_max, cap)
        else:
            self.strategy.max_gaussians = cap
        log.warning("GPU memory: no maxGaussians set; densification stops at %d Gaussians, where the "
                    "estimate reaches %d%% of the %.2f GiB free", cap, round(memory.AUTO_CAP_SHARE * 100),
                    (self.gpu_free_bytes or 0) / memory.GIB)

    # --- checkpoints -------------------------------------------------------------------------

    def _restore(self, ckpt: ckpt_mod.Checkpoint) -> None:
        n = int(ckpt.splats["means"].shape[0])
        self.splats = empty_splats(n, self.cfg.sh_degree, self.device)
        with torch.no_grad():
            for k, v in ckpt.splats.items():
                self.splats[k].copy_(v)
        self.optimizers = make_optimizers(self.splats, self.scene.scene_scale)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(ckpt.optimizers[k])
        self.strategy_state = _to_device(ckpt.strategy_state, self.device)
        _set_rng_state(ckpt.rng, self.device)
        self.start_step = self.resumed_from = ckpt.step
        log.info("resumed from checkpoint at step %d (%d Gaussians)", ckpt.step, n)

    def _save(self, done: int) -> None:
        """Snapshot to CPU now (consistent state); serialise + fsync on the writer thread."""
        self._wait_pending()
        t0 = time.perf_counter()
        snap = ckpt_mod.Checkpoint(
            step=done,
            splats={k: _to_cpu(v) for k, v in self.splats.items()},
            optimizers={k: _to_cpu(o.state_dict()) for k, o in self.optimizers.items()},
            strategy_state=_to_cpu(self.strategy_state),
            rng=_rng_state(self.device),
            resume_key=self.resume_key,
        )
        retire, self._retire = self._retire, []
        self._pending_step = done
        self._pending = self._writer.submit(_timed_save, self.cfg, snap, retire, t0)

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._last_save_s = pending.result()  # re-raises a failed write
            self.saved_step = self._pending_step

    def _checkpoint_is_quick(self) -> bool:
        if self._last_save_s is not None:
            return self._last_save_s <= STOP_CHECKPOINT_BUDGET_S
        state_bytes = 3 * sum(v.numel() * v.element_size() for v in self.splats.values())  # + Adam moments
        return state_bytes / ASSUMED_CHECKPOINT_BYTES_PER_S <= STOP_CHECKPOINT_BUDGET_S

    def _stop(self, done: int) -> NoReturn:
        """SIGTERM, seen between steps (a consistent state): checkpoint step `done` if that is
        quick, then raise Terminated with the step a retried pod resumes from."""
        self._wait_pending()
        if done > (self.saved_step or 0) and self._checkpoint_is_quick():
            log.warning("stopping on SIGTERM: writing a checkpoint at step %d", done)
            try:
                self._save(done)
                self._wait_pending()
            except OSError as exc:
                log.warning("stopping on SIGTERM: the checkpoint at step %d was not written: %s", done, exc)
        elif done > (self.saved_step or 0):
            log.warning("stopping on SIGTERM: no time to write a checkpoint (the last write took %.1f s)", self._last_save_s or 0.0)
        raise Terminated(self.saved_step or 0)

    # --- rendering / evaluation ---------------------------------------------------------------

    def _render(self, views: _DeviceViews, i: int, sh_degree: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        s = self.splats
        width, height = views.sizes[i]
        return rasterize(
            means=s["means"],
            quats=s["quats"],
            scales=torch.exp(s["scales"]),
            opacities=torch.sigmoid(s["opacities"]),
            colors=torch.cat([s["sh0"], s["shN"]], dim=1),
            viewmats=views.viewmats[i : i + 1],
            Ks=views.Ks[i : i + 1],
            width=width,
            height=height,
            sh_degree=sh_degree,
            packed=False,
            absgrad=bool(getattr(self.strategy, "absgrad", False)),  # the strategy reads .absgrad
            backend=self.backend,
        )

    @torch.no_grad()
    def evaluate(self, sh_degree: int) -> tuple[float | None, float | None]:
        if not self.test_views.images:
            return None, None
        psnrs, ssims = [], []
        for i in range(len(self.test_views.images)):
            colors, _, _ = self._render(self.test_views, i, sh_degree)
            pred = colors.clamp(0.0, 1.0)
            gt = self.test_views.target(i)
            psnrs.append(psnr_fn(pred, gt).reshape(()))
            ssims.append(ssim_fn(pred, gt).reshape(()))
        return float(torch.stack(psnrs).mean()), float(torch.stack(ssims).mean())

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        lam = cfg.ssim_lambda
        loss_sum = torch.zeros((), device=self.device)
        window_start, window_t = self.start_step, time.perf_counter()
        last_loss = float("nan")
        last_rate = 0.0
        psnr = ssim = None
        evaluated_at = -1
        loop_t0 = time.perf_counter()
        try:
            for step in range(self.start_step, cfg.max_steps):
                if self.should_stop is not None and self.should_stop():
                    self._stop(step)
                done = step + 1
                sh_degree = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
                i = self.view_order(step)
                means_lr_now = means_lr(step, cfg.max_steps, self.scene.scene_scale)
                self.optimizers["means"].param_groups[0]["lr"] = means_lr_now

                colors, alphas, info = self._render(self.train_views, i, sh_degree)
                if cfg.random_background:  # penalises transparency: gt has no alpha to match
                    bg = torch.rand(3, device=self.device)
                    colors = colors + bg * (1.0 - alphas)
                gt = self.train_views.target(i)
                if not self.is_mcmc:
                    self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, step, info)
                l1 = (colors - gt).abs().mean()
                loss = (1.0 - lam) * l1 + lam * (1.0 - ssim_loss_term(colors, gt))
                if self.is_mcmc:
                    loss = loss + MCMC_OPACITY_REG * torch.sigmoid(self.splats["opacities"]).mean()
                    loss = loss + MCMC_SCALE_REG * torch.exp(self.splats["scales"]).mean()
                loss.backward()
                loss_sum += loss.detach()

                if self.direct_adam:
                    fused_adam_step(self.optimizers)
                else:
                    for opt in self.optimizers.values():
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                if self.is_mcmc:
                    self.strategy.step_post_backward(
                        self.splats, self.optimizers, self.strategy_state, step, info, lr=means_lr_now
                    )
                else:
                    self.strategy.step_post_backward(
                        self.splats, self.optimizers, self.strategy_state, step, info, packed=False
                    )

                is_last = done == cfg.max_steps
                report = is_last or (cfg.progress_every > 0 and done % cfg.progress_every == 0)
                save = is_last or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0)
                evaluate = is_last or (cfg.eval_every > 0 and done % cfg.eval_every == 0)
                if not (report or save or evaluate):
                    continue
                # Report steps are the only place the loop syncs with the device.
                window_loss = float(loss_sum) / max(done - window_start, 1)
                if not math.isfinite(window_loss):
                    raise TrainingDivergedError(
                        f"Training diverged: the loss became {window_loss} between steps "
                        f"{window_start + 1} and {done}. Check the scene's poses and images, or "
                        "try the other densification strategy."
                    )
                now = time.perf_counter()
                last_rate = (done - window_start) / max(now - window_t, 1e-9)
                last_loss = window_loss
                num = int(self.splats["means"].shape[0])
                if save:
                    self._save(done)
                if evaluate:
                    psnr, ssim = self.evaluate(sh_degree)
                    evaluated_at = done
                    self.hooks.on_eval(
                        Progress(
                            event=EVENT_EVAL, step=done, max_steps=cfg.max_steps, loss=window_loss,
                            num_gaussians=num, steps_per_sec=round(last_rate, 2),
                            elapsed_s=round(time.perf_counter() - t0, 2), psnr=psnr, ssim=ssim,
                        )
                    )
                if report:
                    self.hooks.on_progress(
                        Progress(
                            event=EVENT_PROGRESS, step=done, max_steps=cfg.max_steps, loss=window_loss,
                            num_gaussians=num, steps_per_sec=round(last_rate, 2),
                            elapsed_s=round(time.perf_counter() - t0, 2),
                            psnr=psnr if evaluated_at == done else None,
                            ssim=ssim if evaluated_at == done else None,
                        )
                    )
                loss_sum.zero_()
                window_start, window_t = done, time.perf_counter()
            loop_s = time.perf_counter() - loop_t0
            if self.start_step >= cfg.max_steps:  # resumed a finished run: just evaluate
                psnr, ssim = self.evaluate(min(cfg.sh_degree, (cfg.max_steps - 1) // max(cfg.sh_degree_interval, 1)))
            self._wait_pending()
        finally:
            # Never leave a half-written checkpoint behind a crash: finish the pending write.
            try:
                self._wait_pending()
            finally:
                self._writer.shutdown(wait=True)
        ran = cfg.max_steps - self.start_step
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return TrainOutcome(
            splats={k: v.detach().cpu() for k, v in self.splats.items()},
            steps=cfg.max_steps,
            psnr=psnr,
            ssim=ssim,
            num_gaussians=int(self.splats["means"].shape[0]),
            duration_s=time.perf_counter() - t0,
            steps_per_sec=ran / loop_s if ran > 0 and loop_s > 0 else 0.0,
            final_loss=last_loss,
            resumed_from=self.resumed_from,
            peak_gpu_memory_bytes=peak,
            memory_estimate=self.memory_estimate,
        )


def _timed_save(cfg: TrainerConfig, snap: ckpt_mod.Checkpoint, retire: list[Any], since: float) -> float:
    """save_checkpoint on the writer thread; the seconds since the snapshot began."""
    ckpt_mod.save_checkpoint(cfg, snap, retire)
    return time.perf_counter() - since


def memory_estimate(cfg: TrainerConfig, scene: SceneData, images_on_device_bytes: int) -> memory.MemoryEstimate:
    """The run's peak GPU memory as expected before it starts (memory.py says how)."""
    views = [*scene.train, *scene.test]
    largest = max(views, key=lambda v: v.width * v.height)
    cap = cfg.max_gaussians if cfg.max_gaussians > 0 else 0
    if cfg.strategy == "mcmc":
        cap = min(cfg.cap_max, cap) if cap else cfg.cap_max
    expected = memory.expected_gaussians(
        train_pixels=sum(v.width * v.height for v in scene.train), max_steps=cfg.max_steps,
        initial=int(scene.points.shape[0]), cap=cap,
    )
    one_view = largest.image.numel() * largest.image.element_size()
    return memory.estimate(width=largest.width, height=largest.height, image_bytes=images_on_device_bytes or one_view,
                           gaussians=expected, sh_degree=cfg.sh_degree)


def _free_gpu_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


def _check_memory(cfg: TrainerConfig, est: memory.MemoryEstimate, free: int | None) -> None:
    """Log the estimate against the GPU's free memory, as a warning with advice when it will not
    fit (training still starts: the estimate is rough, and a cap or downscale may follow)."""
    if free is None:
        return
    tip = memory.advice(est, free, cfg.data_factor)
    if tip is None:
        log.info("GPU memory: %s", memory.describe(est, free))
    else:
        log.warning("GPU memory: %s", tip)


def oom_message(est: memory.MemoryEstimate | None, free: int | None, data_factor: int) -> str:
    """The original words plus what the estimate says would have fit."""
    if est is None or free is None:
        return MSG_OOM
    tip = memory.advice(est, free, data_factor)
    return f"{MSG_OOM} {tip or 'Before training, ' + memory.describe(est, free) + '; the estimate was too low.'}"


def train(
    cfg: TrainerConfig, scene: SceneData, hooks: TrainHooks, device: torch.device,
    should_stop: Callable[[], bool] | None = None,
) -> TrainOutcome:
    """Train (or resume) to cfg.max_steps; raise TrainingDivergedError on a non-finite loss and a
    TrainerError OutOfMemory (exit code 3) that names the memory estimate on CUDA out of memory.

    `should_stop` is checked before every step: when it says so (SIGTERM), a checkpoint is written
    if it is quick and `errors.Terminated` is raised with the step to resume from.
    """
    t0 = time.perf_counter()
    _configure_backends(device)
    trainer: _Trainer | None = None
    try:
        trainer = _Trainer(cfg, scene, hooks, device, should_stop)
        outcome = trainer.run()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()):
            raise
        est = trainer.memory_estimate if trainer is not None else None
        free = trainer.gpu_free_bytes if trainer is not None else None
        raise TrainerError(Reason.OUT_OF_MEMORY, oom_message(est, free, cfg.data_factor)) from exc
    if device.type == "cuda":
        outcome.gpu_seconds = round(time.perf_counter() - t0, 2)
    return outcome
