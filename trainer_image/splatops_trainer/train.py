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

from splatops.contract import EVENT_EVAL, EVENT_PROGRESS, MSG_OOM, MemoryCheck, Progress, Reason

from . import checkpoint as ckpt_mod
from . import losses, memory
from .config import TrainerConfig
from .dataset import SceneData, View
from .errors import Terminated, TrainerError
from .image_metrics import psnr as psnr_fn
from .preview import PreviewView, pick
from .render import default_backend, rasterize, visible_gaussians
from .splats import empty_splats, init_splats, make_optimizers, means_lr
from .strategy import adapter, build_strategy

log = logging.getLogger(__name__)

# On SIGTERM the loop writes a checkpoint of the current step only when that is expected to take
# at most this long (the previous checkpoint write's time, else the state's size at the assumed
# rate below): Kubernetes' default grace period is 30 s, and the failure report comes after it.
STOP_CHECKPOINT_BUDGET_S = 10.0
ASSUMED_CHECKPOINT_BYTES_PER_S = 100e6


class TrainHooks(Protocol):
    """How training reports; trainer-io implements it (stdout JSON, training_log.txt, metrics)."""

    def on_progress(self, p: Progress) -> None: ...

    def on_eval(self, p: Progress) -> None: ...

    # Optional (looked up with getattr): held-out views and their renders at an evaluation.
    # def on_preview(self, step: int, views: list[PreviewView]) -> None: ...
    # Optional: the GPU memory check before the first step (CUDA only: the free memory is known).
    # def on_memory(self, check: MemoryCheck) -> None: ...


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
        on_device = self._plan_memory()
        self.train_views = _DeviceViews.upload(scene.train, device, images_on_device=on_device)
        self.test_views = _DeviceViews.upload(scene.test, device, images_on_device=on_device)
        self.strategy = adapter(build_strategy(cfg))
        self._apply_auto_cap()
        self.start_step = 0
        self.resumed_from: int | None = None
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
            self.strategy_state = self.strategy.initial_state(scene.scene_scale)
        self.strategy.strategy.check_sanity(self.splats, self.optimizers)
        self.direct_adam = device.type == "cuda"  # losses.optimizer_step says why
        self.loss_fn = losses.loss_function(cfg.loss_compiled(device.type))
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt")
        self._pending: concurrent.futures.Future[Any] | None = None
        self._pending_step = 0
        self.saved_step = self.resumed_from  # the newest checkpoint of this state on disk
        self._last_save_s: float | None = None  # how long the last checkpoint write took
        self.should_stop = should_stop
        self.metrics: tuple[float | None, float | None] = (None, None)  # the last evaluation's PSNR, SSIM

    def _plan_memory(self) -> bool:
        """Estimate the run's peak GPU memory, report it against the free memory (the log, and the
        memory event the operator turns into status), and say whether the images go on the device."""
        cfg, scene, device = self.cfg, self.scene, self.device
        image_bytes = sum(v.image.numel() * v.image.element_size() for v in (*scene.train, *scene.test))
        device_bytes = _device_bytes(device)
        on_device = images_fit_on_device(image_bytes, device_bytes)
        self.memory_estimate = memory_estimate(cfg, scene, image_bytes if on_device else 0)
        self.gpu_free_bytes = _free_gpu_bytes(device)
        checked = _check_memory(cfg, self.memory_estimate, self.gpu_free_bytes)
        on_memory = getattr(self.hooks, "on_memory", None)
        if checked is not None and on_memory is not None:
            on_memory(checked)
        if not on_device:
            log.info(
                "Keeping the %d images (%.1f GiB) in host memory, more than %d%% of the GPU's %.1f GiB; "
                "each step copies one.", len(scene.train) + len(scene.test), image_bytes / 2**30,
                round(IMAGES_ON_DEVICE_MAX_FRACTION * 100), (device_bytes or 0) / 2**30,
            )
        return on_device

    def _apply_auto_cap(self) -> None:
        """No maxGaussians set and a GPU that the expected model would fill: stop densification
        where it still fits (a safety limit from this GPU's free memory, so not in the resume key)."""
        if self.cfg.max_gaussians > 0:
            return
        cap = memory.auto_cap(self.memory_estimate, self.gpu_free_bytes)
        if cap <= 0:
            return
        self.strategy.cap(cap)
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
            absgrad=self.strategy.absgrad,
            backend=self.backend,
        )

    @torch.no_grad()
    def evaluate(self, sh_degree: int, step: int) -> tuple[float | None, float | None]:
        if not self.test_views.images:
            return None, None
        psnrs, ssims, shown = [], [], []
        previewed = set(pick(len(self.test_views.images)))
        for i in range(len(self.test_views.images)):
            colors, _, _ = self._render(self.test_views, i, sh_degree)
            pred = colors.clamp(0.0, 1.0)
            gt = self.test_views.target(i)
            psnrs.append(psnr_fn(pred, gt).reshape(()))
            ssims.append(losses.ssim(pred, gt).reshape(()))
            if i in previewed:
                shown.append((i, pred))
        on_preview = getattr(self.hooks, "on_preview", None)
        if on_preview is not None:  # the eval already synced: a few small host copies more
            on_preview(step, [
                PreviewView(
                    name=self.scene.test[i].name,
                    truth=self.test_views.images[i].cpu().numpy(),
                    render=(pred[0] * 255.0 + 0.5).to(torch.uint8).cpu().numpy(),
                    psnr=float(psnrs[i]),
                )
                for i, pred in shown
            ])
        return float(torch.stack(psnrs).mean()), float(torch.stack(ssims).mean())

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.window = _LossWindow(self.start_step, self.device)
        loop_t0 = time.perf_counter()
        try:
            for step in range(self.start_step, cfg.max_steps):
                if self.should_stop is not None and self.should_stop():
                    self._stop(step)
                sh_degree = self.step(step)
                self.cadence(step + 1, sh_degree)
            loop_s = time.perf_counter() - loop_t0
            if self.start_step >= cfg.max_steps:  # resumed a finished run: just evaluate
                self.metrics = self.evaluate(_active_sh_degree(cfg, cfg.max_steps - 1), cfg.max_steps)
            self._wait_pending()
        finally:
            # Never leave a half-written checkpoint behind a crash: finish the pending write.
            try:
                self._wait_pending()
            finally:
                self._writer.shutdown(wait=True)
        return self._outcome(loop_s)

    def step(self, step: int) -> int:
        """Optimisation step `step` (0-based): render one view, loss, backward, Adam, densify.
        Returns the SH degree it rendered with. Never waits for the device."""
        cfg = self.cfg
        sh_degree = _active_sh_degree(cfg, step)
        i = self.view_order(step)
        lr = means_lr(step, cfg.max_steps, self.scene.scene_scale)
        self.optimizers["means"].param_groups[0]["lr"] = lr
        colors, alphas, info = self._render(self.train_views, i, sh_degree)
        if cfg.random_background:  # penalises transparency: gt has no alpha to match
            colors = colors + torch.rand(3, device=self.device) * (1.0 - alphas)
        gt = self.train_views.target(i)
        self.strategy.before_backward(self.splats, self.optimizers, self.strategy_state, step, info)
        loss = self.strategy.loss(self.loss_fn(colors, gt, cfg.ssim_lambda), self.splats)
        loss.backward()
        self.window.add(loss)
        visible = visible_gaussians(info, len(self.splats["means"])) if cfg.visible_adam else None
        losses.optimizer_step(self.optimizers, fused=self.direct_adam, visible=visible)
        self.strategy.after_step(self.splats, self.optimizers, self.strategy_state, step, info, lr)
        return sh_degree

    def cadence(self, done: int, sh_degree: int) -> None:
        """After `done` steps: checkpoint, evaluate and report where their intervals fall (all three
        after the last step). The only place the loop syncs with the device."""
        cfg = self.cfg
        last = done == cfg.max_steps
        report = last or _every(done, cfg.progress_every)
        save = last or _every(done, cfg.checkpoint_every)
        evaluate = last or _every(done, cfg.eval_every)
        if not (report or save or evaluate):
            return
        self.window.close(done)  # raises TrainingDivergedError on a non-finite loss
        psnr = ssim = None
        if save:
            self._save(done)
        if evaluate:
            psnr, ssim = self.metrics = self.evaluate(sh_degree, done)
            self.hooks.on_eval(self._progress(EVENT_EVAL, done, psnr, ssim))
        if report:
            self.hooks.on_progress(self._progress(EVENT_PROGRESS, done, psnr, ssim))
        self.window.restart(done)

    def _progress(self, event: str, done: int, psnr: float | None, ssim: float | None) -> Progress:
        return Progress(
            event=event, step=done, max_steps=self.cfg.max_steps, loss=self.window.loss,
            num_gaussians=int(self.splats["means"].shape[0]), steps_per_sec=round(self.window.rate, 2),
            elapsed_s=round(time.perf_counter() - self.t0, 2), psnr=psnr, ssim=ssim,
        )

    def _outcome(self, loop_s: float) -> TrainOutcome:
        ran = self.cfg.max_steps - self.start_step
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        psnr, ssim = self.metrics
        return TrainOutcome(
            splats={k: v.detach().cpu() for k, v in self.splats.items()},
            steps=self.cfg.max_steps,
            psnr=psnr,
            ssim=ssim,
            num_gaussians=int(self.splats["means"].shape[0]),
            duration_s=time.perf_counter() - self.t0,
            steps_per_sec=ran / loop_s if ran > 0 and loop_s > 0 else 0.0,
            final_loss=self.window.loss,
            resumed_from=self.resumed_from,
            peak_gpu_memory_bytes=peak,
            memory_estimate=self.memory_estimate,
        )


def _active_sh_degree(cfg: TrainerConfig, step: int) -> int:
    """The SH degree step `step` renders with: one more every sh_degree_interval steps."""
    return min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)


def _every(done: int, interval: int) -> bool:
    return interval > 0 and done % interval == 0


class _LossWindow:
    """The loss summed on the device over the steps since the last report (no sync per step)."""

    def __init__(self, start: int, device: torch.device) -> None:
        self.sum = torch.zeros((), device=device)
        self.start, self.t = start, time.perf_counter()
        self.loss = float("nan")  # the mean of the last closed window
        self.rate = 0.0  # its steps per second

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss.detach()

    def close(self, done: int) -> None:
        """Mean loss and step rate of the window that ends after step `done` (a device sync)."""
        mean = float(self.sum) / max(done - self.start, 1)
        if not math.isfinite(mean):
            raise TrainingDivergedError(
                f"Training diverged: the loss became {mean} between steps {self.start + 1} and {done}. "
                "Check the scene's poses and images, or try the other densification strategy."
            )
        self.rate = (done - self.start) / max(time.perf_counter() - self.t, 1e-9)
        self.loss = mean

    def restart(self, done: int) -> None:
        self.sum.zero_()
        self.start, self.t = done, time.perf_counter()


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


def _check_memory(cfg: TrainerConfig, est: memory.MemoryEstimate, free: int | None) -> MemoryCheck | None:
    """Log the estimate against the GPU's free memory, as a warning with advice when it will not
    fit (training still starts: the estimate is rough, and a cap or downscale may follow); the
    check for the stdout `memory` event, None when the free memory is unknown (no CUDA)."""
    if free is None:
        return None
    checked = memory.check(est, free, cfg.data_factor)
    if checked.fits:
        log.info("GPU memory: %s", memory.describe(est, free))
    else:
        log.warning("GPU memory: %s", checked.advice)
    return checked


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
