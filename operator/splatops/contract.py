"""The trainer <-> operator contract (docs/architecture.md, "The trainer ⇄ operator contract").

Imported by both sides, so it imports only the standard library: the operator image has no
torch, the trainer pod has no Kubernetes client. Change it here and in docs/architecture.md together.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Collection
from typing import Any

# --- Exit codes ---------------------------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """Trainer process exit codes. The Job's podFailurePolicy keys on INVALID_INPUT and OOM."""

    COMPLETE = 0
    ERROR = 1  # anything else: retried by the Job (backoffLimit)
    INVALID_INPUT = 2  # scene, images, COLMAP model, options: retrying cannot help
    OUT_OF_MEMORY = 3  # CUDA OOM: retrying on the same GPU cannot help
    # SIGTERM (node drain, preemption, pod deletion): 128 + 15, what the signal itself would give.
    # Not a FailJob code: a drained pod (DisruptionTarget) is retried without counting against
    # backoffLimit, any other SIGTERM counts like ERROR; the retried pod resumes from a checkpoint.
    TERMINATED = 143


# --- Failure reasons (termination message "reason", status.reason) ------------------------------


class Reason(str, enum.Enum):
    """Machine-readable failure reasons, shared by trainer results and the operator's status."""

    COLMAP_NOT_FOUND = "ColmapNotFound"
    NO_IMAGES = "NoImages"
    MISSING_IMAGES = "MissingImages"
    INVALID_MODEL = "InvalidColmapModel"
    UNSUPPORTED_CAMERA = "UnsupportedCamera"
    INVALID_IMAGE = "InvalidImage"  # an input image file that cannot be decoded
    INVALID_OPTIONS = "InvalidOptions"
    OUTPUT_BUSY = "OutputBusy"  # another writer holds the output directory's lock
    OUT_OF_MEMORY = "OutOfMemory"
    TRAINING_DIVERGED = "TrainingDiverged"
    TRAINER_ERROR = "TrainerError"
    TERMINATED = "Terminated"  # SIGTERM: node drain, preemption, pod deletion
    OUTPUT_NOT_WRITABLE = "OutputNotWritable"  # read-only or too full output volume
    # Object storage (spec.scene.source, spec.output.uri): bad input, retrying cannot help.
    SCENE_SOURCE_NOT_FOUND = "SceneSourceNotFound"  # no such bucket, or nothing under the prefix
    OUTPUT_LOCATION_NOT_FOUND = "OutputLocationNotFound"  # the output bucket does not exist
    OBJECT_STORE_ACCESS_DENIED = "ObjectStoreAccessDenied"  # the pod's identity may not read/write there
    RECONSTRUCTION_FAILED = "ReconstructionFailed"  # structure-from-motion registered too few images
    # Reasons only the operator can observe (the trainer never ran or was killed):
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    IMAGE_PULL = "ImagePullFailed"
    UNSCHEDULABLE = "Unschedulable"
    OOM_KILLED = "OOMKilled"
    INVALID_SPEC = "InvalidSpec"
    SCENE_PVC_NOT_FOUND = "ScenePVCNotFound"


# The original pipeline's words; users and scripts grep for these.
MSG_COLMAP_NOT_FOUND = "COLMAP reconstruction not found"
MSG_NO_IMAGES = "No images found"
MSG_OOM = "CUDA out of memory. Try reducing data_factor or image resolution."
MSG_TERMINATED = "terminated by SIGTERM (node drain or preemption)"  # + "; resumes from step N"

EXIT_CODE_FOR_REASON: dict[Reason, ExitCode] = {
    Reason.COLMAP_NOT_FOUND: ExitCode.INVALID_INPUT,
    Reason.NO_IMAGES: ExitCode.INVALID_INPUT,
    Reason.MISSING_IMAGES: ExitCode.INVALID_INPUT,
    Reason.INVALID_MODEL: ExitCode.INVALID_INPUT,
    Reason.UNSUPPORTED_CAMERA: ExitCode.INVALID_INPUT,
    Reason.INVALID_IMAGE: ExitCode.INVALID_INPUT,
    Reason.INVALID_OPTIONS: ExitCode.INVALID_INPUT,
    Reason.OUTPUT_BUSY: ExitCode.INVALID_INPUT,
    Reason.OUT_OF_MEMORY: ExitCode.OUT_OF_MEMORY,
    Reason.SCENE_SOURCE_NOT_FOUND: ExitCode.INVALID_INPUT,
    Reason.OUTPUT_LOCATION_NOT_FOUND: ExitCode.INVALID_INPUT,
    Reason.OBJECT_STORE_ACCESS_DENIED: ExitCode.INVALID_INPUT,
    Reason.TRAINING_DIVERGED: ExitCode.ERROR,
    Reason.TRAINER_ERROR: ExitCode.ERROR,
    Reason.TERMINATED: ExitCode.TERMINATED,
    Reason.OUTPUT_NOT_WRITABLE: ExitCode.INVALID_INPUT,
    Reason.RECONSTRUCTION_FAILED: ExitCode.INVALID_INPUT,
}

# --- Paths (inside the scene directory; docs/architecture.md "The volume") -----------------

IMAGES_DIR = "images"
COLMAP_DIR = "colmap/sparse_initial"
SPARSE_DIR = "sparse/0"
SPARSE_LINK_TARGET = "../colmap/sparse_initial"  # relative, so the link survives remounts
# A COLMAP model: these three files, all .bin or all .txt (what pycolmap reads), in SPARSE_DIR or
# COLMAP_DIR. The one layout check of the trainer, the CLI, the gateway and `splatops local`.
MODEL_FILES = ("cameras", "images", "points3D")
MODEL_SUFFIXES = (".bin", ".txt")


def is_colmap_model(file_names: Collection[str]) -> bool:
    """Whether a directory holding the files `file_names` holds a COLMAP model."""
    return any(all(f"{stem}{ext}" in file_names for stem in MODEL_FILES) for ext in MODEL_SUFFIXES)


def has_colmap_model(directory: str | os.PathLike[str]) -> bool:
    """Whether `directory` holds a COLMAP model (its files may be links, followed)."""
    candidates = [f"{stem}{ext}" for stem in MODEL_FILES for ext in MODEL_SUFFIXES]
    return is_colmap_model({n for n in candidates if os.path.isfile(os.path.join(directory, n))})

# The seed's output directory, <scene>/gsplat. A training's own is <scene>/gsplat/<training name>
# or its spec.output.path (splatops.api.layout decides; the trainer gets it as ENV_OUTPUT_DIR).
OUTPUT_DIR = "gsplat"
# Inside an output directory (whichever it is):
CONFIG_FILE = "config.json"
RESULT_PLY = "results.ply"  # the MAIN OUTPUT
RESULTS_DIR = "results"
TRAINING_LOG = "results/training_log.txt"
CHECKPOINTS_DIR = "results/checkpoints"
ERROR_LOG = "error.log"
# The trainer's exclusive lock on its output directory, held for the whole run (flock; the file
# also names the holder). Never deleted, so every writer locks the same inode.
LOCK_FILE = ".splatops.lock"
PREVIEW_PNG = "preview.png"  # beside results.ply: held-out views, ground truth | render, with PSNRs
METRICS_JSONL = "metrics.jsonl"  # beside results.ply: one progress/eval JSON object per line

# Model formats the trainer can write beside results.ply (spec.outputs.formats), and their files.
# results.ply is always written: the original API and `splatops download` serve it.
FORMAT_FILES: dict[str, str] = {
    "ply": RESULT_PLY,
    "spz": "results.spz",  # Niantic's SPZ (v2, gzip): about 10x smaller, loads in web viewers
    "splat": "results.splat",  # the antimatter15 .splat layout (gsplat's exporter)
    "ply_compressed": "results.compressed.ply",  # PlayCanvas's compressed PLY (gsplat's exporter)
}
DEFAULT_FORMATS = ("ply", "spz")

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # bytes; the kubelet truncates beyond this
DEFAULT_METRICS_PORT = 9090

# --- Environment variables the operator sets on the trainer container ---------------------------
# Every trainer option is settable as SPLATOPS_<OPTION_IN_UPPER_SNAKE>; these are the ones the
# operator's Job builder uses, named once here.
ENV_PREFIX = "SPLATOPS_"
ENV_SCENE_DIR = "SPLATOPS_SCENE_DIR"
ENV_OUTPUT_DIR = "SPLATOPS_OUTPUT_DIR"  # the training's own output directory (see splatops.api.layout)
ENV_DATA_FACTOR = "SPLATOPS_DATA_FACTOR"
ENV_MAX_STEPS = "SPLATOPS_MAX_STEPS"
ENV_STRATEGY = "SPLATOPS_STRATEGY"
ENV_SH_DEGREE = "SPLATOPS_SH_DEGREE"
ENV_TEST_EVERY = "SPLATOPS_TEST_EVERY"
ENV_EVAL_EVERY = "SPLATOPS_EVAL_EVERY"
ENV_CHECKPOINT_EVERY = "SPLATOPS_CHECKPOINT_EVERY"
ENV_SEED = "SPLATOPS_SEED"
ENV_CAP_MAX = "SPLATOPS_CAP_MAX"
ENV_MAX_GAUSSIANS = "SPLATOPS_MAX_GAUSSIANS"
ENV_METRICS_PORT = "SPLATOPS_METRICS_PORT"
ENV_TERMINATION_LOG = "SPLATOPS_TERMINATION_LOG"
ENV_SCENE_ID = "SPLATOPS_SCENE_ID"
ENV_DEVICE = "SPLATOPS_DEVICE"
ENV_PROGRESS_EVERY = "SPLATOPS_PROGRESS_EVERY"
ENV_SCENE_SOURCE = "SPLATOPS_SCENE_SOURCE"  # s3://bucket/prefix/: fetched into the scene directory first
ENV_OUTPUT_URI = "SPLATOPS_OUTPUT_URI"  # s3://bucket/prefix/: the outputs are uploaded there on success
S3_SCHEME = "s3://"
ENV_FORMATS = "SPLATOPS_FORMATS"  # comma-separated FORMAT_FILES keys
ENV_RECONSTRUCT = "SPLATOPS_RECONSTRUCT"  # IfMissing | Always | Never (RECONSTRUCT_MODES)
ENV_RECONSTRUCT_ONLY = "SPLATOPS_RECONSTRUCT_ONLY"

# Structure-from-motion when a scene has images but no COLMAP model (the trainer's reconstruct.py).
RECONSTRUCT_IF_MISSING = "IfMissing"
RECONSTRUCT_ALWAYS = "Always"
RECONSTRUCT_NEVER = "Never"
RECONSTRUCT_MODES = (RECONSTRUCT_IF_MISSING, RECONSTRUCT_ALWAYS, RECONSTRUCT_NEVER)

# --- Training option bounds, shared by the resource's spec (splatops.api.models) and the trainer's
# options (splatops_trainer.config), so neither accepts what the other refuses.
DATA_FACTORS = (1, 2, 4, 8)  # image downscale factors
STRATEGIES = ("default", "mcmc")  # densification strategies
MIN_STEPS = 1
MAX_STEPS = 1_000_000  # the spec's limit (the trainer itself takes any number from MIN_STEPS)
MAX_SH_DEGREE = 4  # spherical-harmonics degrees 0..MAX_SH_DEGREE
MAX_SEED = 2**31 - 1

# --- Progress events (one JSON object per stdout line) -------------------------------------------

EVENT_PROGRESS = "progress"
EVENT_EVAL = "eval"
EVENT_STARTED = "started"
EVENT_COMPLETE = "complete"
EVENT_FAILED = "failed"
# A stage before training (structure-from-motion), with its own words:
# {"event": "stage", "stage": "Reconstructing", "message": "Extracting features 12/50", "done": 12, "total": 50}
EVENT_STAGE = "stage"
STAGE_RECONSTRUCTING = "Reconstructing"


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report. `psnr` only when the trainer evaluated at this step."""

    step: int
    max_steps: int
    loss: float
    num_gaussians: int | None = None
    steps_per_sec: float | None = None
    elapsed_s: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    event: str = EVENT_PROGRESS

    @property
    def percent(self) -> float:
        return round(100.0 * self.step / self.max_steps, 2) if self.max_steps > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.steps_per_sec or self.steps_per_sec <= 0:
            return None
        return max(0.0, (self.max_steps - self.step) / self.steps_per_sec)

    def message(self) -> str:
        """The original pipeline's progress line: `Iteration 15234/30000 | Loss: 0.0234`."""
        return format_progress_message(self.step, self.max_steps, self.loss)

    def to_json(self) -> str:
        return _event_json(self)


def format_progress_message(step: int, max_steps: int, loss: float) -> str:
    return f"Iteration {step}/{max_steps} | Loss: {loss:.4f}"


def _event_json(event: Any) -> str:
    """A stdout event dataclass as one JSON line, unset (None) fields left out, `event` first so a
    human tailing the log sees what the line is."""
    data = {k: v for k, v in dataclasses.asdict(event).items() if v is not None}
    return json.dumps({"event": data.pop("event"), **data}, separators=(", ", ": "))


def _count(value: Any) -> int | None:
    """A non-negative integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _event(line: str) -> dict[str, Any] | None:
    """One stdout line as a JSON object, or None (log lines are interleaved: garbage is normal)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_progress_line(line: str) -> Progress | None:
    """Parse one stdout line; None for anything that is not a well-formed progress/eval event.

    Other log lines are interleaved with progress lines, so garbage is normal, never an error.
    """
    data = _event(line)
    if data is None or data.get("event") not in (EVENT_PROGRESS, EVENT_EVAL):
        return None
    step, max_steps = data.get("step"), data.get("max_steps")
    loss = _finite(data.get("loss"))
    if not isinstance(step, int) or not isinstance(max_steps, int) or loss is None:
        return None
    if step < 0 or max_steps <= 0:
        return None
    gaussians = data.get("num_gaussians")
    return Progress(
        event=data["event"],
        step=step,
        max_steps=max_steps,
        loss=loss,
        num_gaussians=gaussians if isinstance(gaussians, int) else None,
        steps_per_sec=_finite(data.get("steps_per_sec")),
        elapsed_s=_finite(data.get("elapsed_s")),
        psnr=_finite(data.get("psnr")),
        ssim=_finite(data.get("ssim")),
    )


def last_progress(log_text: str) -> Progress | None:
    """The newest progress in a log tail, carrying forward the newest PSNR/SSIM seen before it."""
    latest: Progress | None = None
    psnr: float | None = None
    ssim: float | None = None
    for line in log_text.splitlines():
        parsed = parse_progress_line(line)
        if parsed is None:
            continue
        if parsed.psnr is not None:
            psnr, ssim = parsed.psnr, parsed.ssim
        if latest is None or parsed.step >= latest.step:
            latest = parsed
    if latest is not None and latest.psnr is None and psnr is not None:
        latest = dataclasses.replace(latest, psnr=psnr, ssim=ssim)
    return latest


@dataclasses.dataclass(frozen=True)
class StageReport:
    """Progress of a stage before training (e.g. structure-from-motion): a phrase, maybe counts."""

    stage: str  # STAGE_RECONSTRUCTING
    message: str  # "Extracting features 12/50", "Matching (exhaustive) 45/120 pairs", "Registered 47/50 images"
    done: int | None = None
    total: int | None = None
    elapsed_s: float | None = None
    event: str = EVENT_STAGE

    def to_json(self) -> str:
        return _event_json(self)


def parse_stage_line(line: str) -> StageReport | None:
    """One stdout line as a stage event; None for anything else."""
    data = _event(line)
    if data is None or data.get("event") != EVENT_STAGE:
        return None
    stage, message = data.get("stage"), data.get("message")
    if not isinstance(stage, str) or not isinstance(message, str) or not stage:
        return None
    return StageReport(stage=stage, message=message, done=_count(data.get("done")), total=_count(data.get("total")),
                       elapsed_s=_finite(data.get("elapsed_s")))


def last_report(log_text: str) -> Progress | StageReport | None:
    """What the trainer is doing now: the newest training progress (as `last_progress`), unless a
    stage event came after the last progress line (structure-from-motion runs before training)."""
    stage: StageReport | None = None
    for line in log_text.splitlines():
        parsed = parse_stage_line(line)
        if parsed is not None:
            stage = parsed
        elif parse_progress_line(line) is not None:
            stage = None
    return stage if stage is not None else last_progress(log_text)


# The trainer's GPU memory check, once before the first step when the free memory is known (CUDA):
# {"event": "memory", "estimate_bytes": 25769803776, "free_bytes": 23622320128, "fits": false,
#  "advice": "It will probably not fit: ... Try maxGaussians 1,200,000 or dataFactor 2 ..."}
EVENT_MEMORY = "memory"


@dataclasses.dataclass(frozen=True)
class MemoryCheck:
    """The estimated peak GPU memory of a run against the GPU's free memory before it trains."""

    estimate_bytes: int
    free_bytes: int
    fits: bool
    advice: str = ""  # what to change when it does not fit (empty when it fits)
    event: str = EVENT_MEMORY

    def to_json(self) -> str:
        return _event_json(self)


def parse_memory_line(line: str) -> MemoryCheck | None:
    """One stdout line as a memory event; None for anything else (or a malformed one)."""
    data = _event(line)
    if data is None or data.get("event") != EVENT_MEMORY:
        return None
    estimate, free = _count(data.get("estimate_bytes")), _count(data.get("free_bytes"))
    fits, advice = data.get("fits"), data.get("advice")
    if estimate is None or free is None or not isinstance(fits, bool):
        return None
    return MemoryCheck(estimate_bytes=estimate, free_bytes=free, fits=fits, advice=advice if isinstance(advice, str) else "")


def last_memory_check(log_text: str) -> MemoryCheck | None:
    """The newest memory event in a log tail (a retried pod checks again), or None."""
    found: MemoryCheck | None = None
    for line in log_text.splitlines():
        parsed = parse_memory_line(line)
        if parsed is not None:
            found = parsed
    return found


# --- Result (termination message) ----------------------------------------------------------------

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Result:
    """The trainer's final word, written to the termination message (< 4 KiB)."""

    status: str  # STATUS_COMPLETE | STATUS_FAILED
    model_path: str | None = None
    model_size_mb: float | None = None
    num_gaussians: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    steps: int | None = None
    duration_s: float | None = None
    config: dict[str, Any] | None = None
    # The files the run produced: [{"name": "spz", "file": "results.spz", "bytes": N, "sha256": ...,
    # "uri": "s3://..." (with an output uri)}], "file" relative to the output directory (short:
    # the message has 4 KiB).
    outputs: list[dict[str, Any]] | None = None
    reason: str | None = None
    error: str | None = None
    gpu_seconds: float | None = None  # seconds the run held its GPU(s), times their number: the cost basis
    peak_gpu_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated
    gpu_memory_estimate_bytes: int | None = None  # the trainer's estimate before the first step
    # Structure-from-motion's numbers when this run reconstructed the scene (registered, points, ...)
    reconstruction: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == STATUS_COMPLETE

    def to_json(self) -> str:
        """Serialize, dropping `config` and then truncating `error` to stay under the limit."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and "config" in data:
            data["config"] = {
                k: data["config"][k]
                for k in ("scene_id", "data_factor", "max_steps", "strategy", "timestamp")
                if k in data["config"]
            }
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and "reconstruction" in data:
            data["reconstruction"] = {k: v for k, v in data["reconstruction"].items() if k != "unregistered"}
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and "error" in data:
            overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
            data["error"] = data["error"][: max(0, len(data["error"]) - overflow)] + "..."
            text = json.dumps(data, separators=(",", ":"))
        return text


def parse_result(text: str | None) -> Result | None:
    """Parse a termination message; None if it is absent or not ours (e.g. a kubelet message)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("status") not in (STATUS_COMPLETE, STATUS_FAILED):
        return None
    fields = {f.name for f in dataclasses.fields(Result)}
    return Result(**{k: v for k, v in data.items() if k in fields})


# --- Trainer metrics (Prometheus, served by the trainer while it trains) -------------------------
# Named here because the chart's dashboard, alerts and PodMonitor depend on them too.

METRIC_TRAINER_STEP = "splatops_trainer_step"
METRIC_TRAINER_MAX_STEPS = "splatops_trainer_max_steps"
METRIC_TRAINER_LOSS = "splatops_trainer_loss"
METRIC_TRAINER_PSNR = "splatops_trainer_psnr_db"
METRIC_TRAINER_SSIM = "splatops_trainer_ssim"
METRIC_TRAINER_GAUSSIANS = "splatops_trainer_gaussians"
METRIC_TRAINER_STEPS_PER_SEC = "splatops_trainer_steps_per_second"
METRIC_TRAINER_GPU_MEMORY = "splatops_trainer_gpu_memory_bytes"
METRIC_TRAINER_GPU_MEMORY_PEAK = "splatops_trainer_gpu_memory_peak_bytes"
METRIC_TRAINER_LABELS = ("scene_id",)
