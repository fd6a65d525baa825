"""`splatops-train`: validate, load, train, write results.ply + config.json + the termination message.

Every TrainerConfig field is an option, as a flag (`--max-steps`) and as an environment variable
(`SPLATOPS_MAX_STEPS`); flags win (config.py). Exit codes follow `contract.ExitCode`: 2 for bad
input (decided before the GPU is touched), 3 for CUDA out of memory, 1 for anything else. An earlier results.ply
is only ever replaced atomically by a new complete one, never deleted or truncated on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splatops import contract

from . import atomic, config, disk, outlock
from .config import TrainerConfig
from .errors import Terminated, TrainerError
from .report import Reporter, write_error_log, write_termination_message

if TYPE_CHECKING:  # train imports torch and gsplat: only once the input has passed its checks
    from .train import TrainOutcome

log = logging.getLogger("splatops_trainer")


# --- Running -------------------------------------------------------------------------------------


def resolve_device(requested: str) -> Any:
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise TrainerError(
            contract.Reason.TRAINER_ERROR,
            "device cuda was requested but no CUDA device is visible: check the pod's GPU request "
            "and the node's NVIDIA device plugin, or use --device cpu.",
        )
    log.warning("no CUDA device visible: training on the CPU (slow; fine only for tiny scenes)")
    return torch.device("cpu")


def is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def classify(exc: BaseException) -> tuple[contract.Reason, str]:
    """The contract reason and user message for any failure."""
    if isinstance(exc, TrainerError):
        return exc.reason, exc.message
    if is_oom(exc):
        return contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM
    if isinstance(exc, Terminated):
        return contract.Reason.TERMINATED, str(exc)
    return contract.Reason.TRAINER_ERROR, f"{type(exc).__name__}: {exc}"


def effective_config(cfg: TrainerConfig, device: Any) -> dict[str, Any]:
    """config.json: the original keys first (scene_id, data_factor, max_steps, timestamp), then all."""
    data = cfg.to_dict()
    head = {k: data.pop(k) for k in ("scene_id", "data_factor", "max_steps")}
    return {**head, "timestamp": time.time(), **data, "resolved_device": str(device)}


def run(cfg: TrainerConfig, reporter: Reporter, sigterm: SigtermHandler | None = None) -> contract.Result:
    """Check, load, train, write outputs. Raises on any failure (main() reports it)."""
    from . import reconstruct
    from . import scene as scene_mod

    if cfg.scene_source:  # s3://: bring the scene (what changed since the last run) onto the claim first
        from . import objectstore

        objectstore.fetch_scene(cfg.scene_source, cfg.scene_dir)
    # Photos without a COLMAP model: structure-from-motion first, on CPU threads (reconstruct.py).
    sfm = reconstruct.ensure_model(cfg, reporter.on_stage)
    model_dir = cfg.scene_dir / contract.COLMAP_DIR if sfm is not None else None  # ours, even beside a user's sparse/0
    check = scene_mod.check_scene(cfg, model_dir)  # exit 2 material is decided here, before any CUDA use
    if cfg.reconstruct_only:
        return reconstruct_only_result(cfg, check.model_dir, sfm)
    disk.check_output(cfg, scene_mod.cached_pixels(cfg, check), check.reconstruction.num_points3D(), scene_mod.cache_dir(cfg))
    # Temp files of writes a SIGKILL cut short (results.ply, config.json, checkpoints, cache):
    # main() holds the output directory's lock, so no other writer is alive in it, and nothing
    # of this run is being written yet: every one of them is stale. Other trainings' output
    # directories nested inside (their own lock file) are left alone.
    for stale in atomic.remove_stale_temps(cfg.out):
        log.info("removed a stale temporary file %s", stale)
    remove_stale_error_log(cfg.out)
    device = resolve_device(cfg.device)
    data = scene_mod.load_scene(cfg, check)
    log.info("scene %s: %d train / %d test views, %d points", cfg.scene_id, len(data.train), len(data.test), len(data.points))

    from .train import train

    reporter.start()
    if sfm is not None:
        reporter.log(reconstruct.summary_line(sfm))
    with sigterm.deferred() if sigterm is not None else contextlib.nullcontext():
        outcome = train(cfg, data, reporter, device, should_stop=sigterm.requested if sigterm is not None else None)
    return write_outputs(cfg, outcome, device, sfm, reporter)


def write_outputs(cfg: TrainerConfig, outcome: TrainOutcome, device: Any, sfm: dict[str, Any] | None,
                  reporter: Reporter) -> contract.Result:
    """results.ply, the other formats and config.json from a finished training; its Result."""
    from .exports import listed, write_formats
    from .ply import write_ply

    out = cfg.out
    stats = write_ply(out / contract.RESULT_PLY, outcome.splats)
    if stats.dropped:
        log.warning("dropped %d Gaussians with non-finite values from results.ply", stats.dropped)
    outputs = [{"name": "ply", "file": contract.RESULT_PLY, "bytes": stats.size_bytes}]
    outputs += write_formats(out, outcome.splats, cfg.format_list)
    outputs += listed(out, "preview", contract.PREVIEW_PNG) + listed(out, "metrics", contract.METRICS_JSONL)
    config = effective_config(cfg, device)
    if sfm is not None:
        config["reconstruction"] = sfm
    atomic.write_json(out / contract.CONFIG_FILE, config)
    psnr = round(outcome.psnr, 4) if outcome.psnr is not None else None
    ssim = round(outcome.ssim, 4) if outcome.ssim is not None else None
    reporter.log(
        f"Training complete | Iteration {outcome.steps}/{cfg.max_steps} | Gaussians: {stats.written}"
        + (f" | PSNR: {psnr:.2f} dB | SSIM: {ssim:.4f}" if psnr is not None and ssim is not None else "")
        + f" | results.ply {stats.size_mb} MB"
        + (f" | dropped {stats.dropped} non-finite" if stats.dropped else "")
    )
    return contract.Result(
        status=contract.STATUS_COMPLETE, model_path=str(stats.path.resolve()), model_size_mb=stats.size_mb,
        num_gaussians=stats.written, psnr=psnr, ssim=ssim, steps=outcome.steps,
        duration_s=round(outcome.duration_s, 2), config=config, gpu_seconds=outcome.gpu_seconds,
        peak_gpu_memory_bytes=outcome.peak_gpu_memory_bytes,
        gpu_memory_estimate_bytes=outcome.memory_estimate.total_bytes if outcome.memory_estimate else None,
        outputs=outputs, reconstruction=sfm,
    )


def reconstruct_only_result(cfg: TrainerConfig, model_dir: Path, sfm: dict[str, Any] | None) -> contract.Result:
    """`--reconstruct-only` (the REST API's colmap_ba): the COLMAP model is the result; no training."""
    config = {**effective_config(cfg, "none"), **({"reconstruction": sfm} if sfm is not None else {})}
    atomic.write_json(cfg.out / contract.CONFIG_FILE, config)
    log.info("reconstruct-only: the COLMAP model is %s; not training", model_dir)
    return contract.Result(status=contract.STATUS_COMPLETE, model_path=str(model_dir.resolve()), steps=0,
                           duration_s=sfm.get("seconds") if sfm else 0.0, config=config, reconstruction=sfm)


def remove_stale_error_log(out: Path) -> None:
    """An earlier run's error.log would describe this run until it ends: remove it (one unlink,
    atomic) once this run owns the output directory and its input passed the checks."""
    try:
        (out / contract.ERROR_LOG).unlink(missing_ok=True)
    except OSError as exc:  # e.g. a read-only volume: the disk check reports that, not this
        log.warning("could not remove the earlier %s: %s", out / contract.ERROR_LOG, exc)


def load_native_libraries() -> None:
    """Import the modules that load native code, before our SIGTERM handler is installed.

    pycolmap's glog installs a C-level "failure signal handler" for SIGTERM when it is imported,
    over Python's: a SIGTERM then dumps a C++ stack and exits 143 without a word from us. So the
    order is fixed here: scene (pycolmap, torch), then train (gsplat) and ply; only then
    `SigtermHandler.install`, whose sigaction replaces glog's.
    """
    from . import ply, reconstruct, scene, train  # noqa: F401


class SigtermHandler:
    """Our SIGTERM handler: raise `Terminated` at once, or, while the training loop runs
    (`deferred()`), only note the request: the loop checks `requested()` between steps, writes a
    checkpoint of a consistent state and raises `Terminated` itself with the step to resume from.
    """

    def __init__(self) -> None:
        self._requested = False
        self._deferred = False
        self._previous: Any = None
        self.installed = False

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self)
        self.installed = True

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self.installed = False

    def __call__(self, signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: let the failure report finish
        self._requested = True
        log.warning("SIGTERM received (node drain, preemption or pod deletion): stopping")
        if not self._deferred:
            raise Terminated()

    def requested(self) -> bool:
        return self._requested

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False


def _newest_checkpoint_step(cfg: TrainerConfig) -> int:
    """The step a retried pod resumes from when SIGTERM came outside the training loop."""
    from .checkpoint import checkpoint_dir, list_checkpoints

    found = list_checkpoints(checkpoint_dir(cfg))
    return found[0][0] if found else 0


# Described and uploaded beside the model files run() lists (results.ply, the formats, preview, metrics).
EXTRA_OUTPUTS = (("config", contract.CONFIG_FILE), ("log", contract.TRAINING_LOG))


def publish(cfg: TrainerConfig, result: contract.Result) -> contract.Result:
    """The result with every output's bytes and sha256, each uploaded first when cfg.output_uri
    is set (then with its uri)."""
    from . import objectstore

    wanted = [(str(e["name"]), str(e["file"])) for e in result.outputs or []] + list(EXTRA_OUTPUTS)
    described = objectstore.describe(cfg.out, [file for _, file in wanted])
    if cfg.output_uri:
        described = objectstore.upload_outputs(cfg.output_uri, cfg.out, described)
    by_file = {d["name"]: d for d in described}  # describe() names each by its path under cfg.out
    outputs = []
    for name, file in wanted:
        if file in by_file:
            found = by_file[file]
            outputs.append({"name": name, "file": file, "bytes": found["bytes"], "sha256": found["sha256"],
                            **({"uri": found["uri"]} if "uri" in found else {})})
    return dataclasses.replace(result, outputs=outputs)


@dataclasses.dataclass(frozen=True)
class _Fallback:
    """Where to report a failure that happened before a TrainerConfig existed (bad options)."""

    termination_log: Path
    out_dir: Path | None  # the scene's output directory, if the scene directory exists

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> _Fallback:
        """From the options as given (flags over env vars), unchecked."""
        get = lambda name: str(raw[name]).strip() if raw.get(name) is not None and str(raw[name]).strip() else None  # noqa: E731
        scene_dir = get("scene_dir")
        out = get("output_dir") or (Path(scene_dir) / contract.OUTPUT_DIR if scene_dir else None)
        return cls(
            termination_log=Path(get("termination_log") or contract.TERMINATION_LOG),
            out_dir=Path(out) if out and scene_dir and Path(scene_dir).is_dir() else None,
        )


def _fail(cfg: TrainerConfig | None, fallback: _Fallback, exc: BaseException, reporter: Reporter | None,
          lock: outlock.OutputLock | None) -> int:
    if isinstance(exc, Terminated) and exc.resume_step is None and cfg is not None:
        exc = Terminated(_newest_checkpoint_step(cfg))
    reason, message = classify(exc)
    code = exc.exit_code if isinstance(exc, TrainerError) else int(contract.EXIT_CODE_FOR_REASON.get(reason, contract.ExitCode.ERROR))
    print(f"error: {message}", file=sys.stderr, flush=True)
    if reason is contract.Reason.TRAINER_ERROR and not isinstance(exc, (TrainerError, Terminated)):
        logging.getLogger("splatops_trainer").error("unexpected failure", exc_info=exc)
    print(json.dumps({"event": contract.EVENT_FAILED, "reason": reason.value, "error": message}), flush=True)
    if reporter is not None:
        reporter.log(f"Training failed: {message}")
    # error.log only where the scene exists (never create a scene directory for a wrong path),
    # and only by the output directory's lock holder: never over another writer's.
    out_dir = (cfg.out if cfg.scene_dir.is_dir() else None) if cfg is not None else fallback.out_dir
    held = lock if lock is not None or out_dir is None else outlock.try_acquire(out_dir, outlock.holder_info(None))
    if out_dir is not None and held is not None:
        write_error_log(out_dir, reason.value, message, None if isinstance(exc, (TrainerError, Terminated)) else exc)
    if held is not None and held is not lock:
        held.release()
    write_termination_message(
        cfg.termination_log if cfg is not None else fallback.termination_log,
        contract.Result(status=contract.STATUS_FAILED, reason=reason.value, error=message),
    )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg: TrainerConfig | None = None
    raw: dict[str, Any] = {}
    reporter: Reporter | None = None
    lock: outlock.OutputLock | None = None
    # Signal handlers can only be installed from the main thread (tests may call main() elsewhere).
    sigterm = SigtermHandler() if _main_thread() else None
    try:
        load_native_libraries()  # first: pycolmap's glog would replace a handler installed before
        if sigterm is not None:
            sigterm.install()
        raw = config.env_options(os.environ)  # what the failure report falls back on if the flags are bad
        raw = config.read_options(argv, os.environ)
        cfg = TrainerConfig(**raw)
        reporter = Reporter(cfg)
        if cfg.scene_dir.is_dir() or cfg.scene_source:  # else the scene check fails; no directory for a wrong path
            # Before anything in the output directory is written; held until the process ends.
            lock = outlock.acquire(cfg.out, outlock.holder_info(cfg.scene_id))
        result = run(cfg, reporter, sigterm)
        reporter.close()  # training_log.txt written whole before it is described and uploaded
        result = publish(cfg, result)
        print(json.dumps({"event": contract.EVENT_COMPLETE, "model_path": result.model_path}), flush=True)
        write_termination_message(cfg.termination_log, result)
        return int(contract.ExitCode.COMPLETE)
    except (Exception, Terminated) as exc:  # noqa: BLE001 - every failure is reported, then exits non-zero
        return _fail(cfg, _Fallback.of(raw), exc, reporter, lock)
    finally:
        if reporter is not None:
            reporter.close()
        if lock is not None:
            lock.release()
        if sigterm is not None:
            sigterm.restore()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
