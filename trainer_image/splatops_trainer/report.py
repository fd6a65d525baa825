"""How the trainer tells the world: stdout JSON lines, training_log.txt, metrics.jsonl, preview.png,
Prometheus, termination.

`Reporter` implements train.TrainHooks. The operator reads the JSON lines from the pod log and
the final `contract.Result` from the termination message; humans read training_log.txt in the
original pipeline's words (`Iteration 15234/30000 | Loss: 0.0234`), rewritten atomically at each
report (never appended to in place); metrics.jsonl (beside results.ply) keeps every progress and
eval line the same way, for curves; preview.png is redrawn at each evaluation; Prometheus scrapes
the port.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from splatops import contract

from . import atomic
from .config import TrainerConfig
from .preview import PreviewView, write_preview


def eval_message(p: contract.Progress) -> str:
    if p.psnr is None:
        return f"Eval at iteration {p.step}/{p.max_steps} | no held-out views"
    ssim = f" | SSIM: {p.ssim:.4f}" if p.ssim is not None else ""
    return f"Eval at iteration {p.step}/{p.max_steps} | PSNR: {p.psnr:.2f} dB{ssim}"


class _Series:
    """One labelled series of a gauge, created by its first value: before that the family has
    no sample (a PSNR of 0 before the first evaluation would read as a real value)."""

    def __init__(self, family: Gauge, **labels: str) -> None:
        self._family, self._labels = family, labels

    def set(self, value: float) -> None:
        self._family.labels(**self._labels).set(value)


class Metrics:
    """The trainer's gauges (names from the contract) on their own registry and HTTP port."""

    def __init__(self, scene_id: str, port: int) -> None:
        self.registry = CollectorRegistry()
        labels = list(contract.METRIC_TRAINER_LABELS)

        def gauge(name: str, doc: str) -> Any:
            return _Series(Gauge(name, doc, labels, registry=self.registry), scene_id=scene_id)

        self.step = gauge(contract.METRIC_TRAINER_STEP, "Training steps completed")
        self.max_steps = gauge(contract.METRIC_TRAINER_MAX_STEPS, "Training steps planned")
        self.loss = gauge(contract.METRIC_TRAINER_LOSS, "Mean training loss since the last report")
        self.psnr = gauge(contract.METRIC_TRAINER_PSNR, "PSNR on held-out views (dB)")
        self.ssim = gauge(contract.METRIC_TRAINER_SSIM, "SSIM on held-out views")
        self.gaussians = gauge(contract.METRIC_TRAINER_GAUSSIANS, "Number of Gaussians")
        self.rate = gauge(contract.METRIC_TRAINER_STEPS_PER_SEC, "Training steps per second")
        self.gpu_mem = gauge(contract.METRIC_TRAINER_GPU_MEMORY, "GPU memory allocated by torch (bytes)")
        self.gpu_peak = gauge(contract.METRIC_TRAINER_GPU_MEMORY_PEAK, "Peak GPU memory allocated (bytes)")
        self._server = None
        if port:
            try:
                self._server, _ = start_http_server(port, registry=self.registry)
            except OSError as exc:  # e.g. several trainers on one machine: train anyway, unscraped
                print(f"warning: metrics not served, port {port}: {exc}", file=sys.stderr)

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def update(self, p: contract.Progress) -> None:
        self.step.set(p.step)
        self.max_steps.set(p.max_steps)
        self.loss.set(p.loss)
        if p.num_gaussians is not None:
            self.gaussians.set(p.num_gaussians)
        if p.steps_per_sec is not None:
            self.rate.set(p.steps_per_sec)
        if p.psnr is not None:
            self.psnr.set(p.psnr)
        if p.ssim is not None:
            self.ssim.set(p.ssim)
        self._gpu_memory()

    def _gpu_memory(self) -> None:
        torch = sys.modules.get("torch")  # never import (or initialise CUDA) just for a metric
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.gpu_mem.set(torch.cuda.memory_allocated())
            self.gpu_peak.set(torch.cuda.max_memory_allocated())

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class TrainingLog:
    """results/training_log.txt, rewritten whole and atomically (atomic.write_text), never appended.

    The lines live in memory, starting with the existing file's (a resumed or repeated run keeps
    the earlier lines). Every added line schedules a rewrite on a background thread, which writes
    the newest content (bursts coalesce into one write), so the training loop never waits for an
    fsync. `close()` writes whatever is still pending. A write that fails only warns: the run is
    not failed for its log.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            print(f"warning: could not read {path} (starting a new log): {exc}", file=sys.stderr)
            text = ""
        self._lines = [line + "\n" for line in text.splitlines()]
        self._cond = threading.Condition()
        self._dirty = False
        self._closing = False
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="training-log", daemon=True)
        self._thread.start()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return [line.rstrip("\n") for line in self._lines]

    def add(self, line: str) -> None:
        with self._cond:
            if self._closing:
                return
            self._lines.append(line + "\n")
            self._dirty = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._dirty:
                    return  # closing, nothing left to write
                text = "".join(self._lines)
                self._dirty = False
            try:
                atomic.write_text(self.path, text)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    print(f"warning: could not write {self.path}: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Write what is pending and stop the writer (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()


class Reporter:
    """TrainHooks for the CLI. Thread-safe enough for one training thread plus the HTTP server."""

    def __init__(self, cfg: TrainerConfig, stdout: IO[str] | None = None) -> None:
        self.cfg = cfg
        self.stdout = stdout or sys.stdout
        self.last: contract.Progress | None = None
        self._lock = threading.Lock()
        self._log: TrainingLog | None = None
        self._series: TrainingLog | None = None  # metrics.jsonl, rewritten like the log
        self.metrics: Metrics | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._log = TrainingLog(self.cfg.out / contract.TRAINING_LOG)
        self._series = TrainingLog(self.cfg.out / contract.METRICS_JSONL)
        self.metrics = Metrics(str(self.cfg.scene_id), self.cfg.metrics_port)
        self.metrics.max_steps.set(self.cfg.max_steps)
        self._emit({"event": contract.EVENT_STARTED, "scene_id": self.cfg.scene_id, "max_steps": self.cfg.max_steps})
        self._log_line(
            f"Training started {_now()} | scene {self.cfg.scene_id} | data_factor {self.cfg.data_factor} "
            f"| max_steps {self.cfg.max_steps} | strategy {self.cfg.strategy}"
        )

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        for writer in (self._log, self._series):
            if writer is not None:
                writer.close()
        self._log = self._series = None

    def __enter__(self) -> Reporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- TrainHooks --------------------------------------------------------------------------

    def on_progress(self, p: contract.Progress) -> None:
        self._report(p, p.message())

    def on_eval(self, p: contract.Progress) -> None:
        self._report(p, eval_message(p))

    def on_stage(self, report: contract.StageReport) -> None:
        """A stage before training (structure-from-motion): stdout for the operator, stderr for humans."""
        with self._lock:
            self._write_stdout(report.to_json())
            print(f"{report.stage}: {report.message}", file=sys.stderr, flush=True)

    def on_memory(self, check: contract.MemoryCheck) -> None:
        """The GPU memory check before the first step: stdout for the operator (status.gpuMemory
        and a Warning when it will not fit), the advice in training_log.txt for humans."""
        with self._lock:
            self._write_stdout(check.to_json())
            if not check.fits:
                self._log_line(f"GPU memory: {check.advice}")

    def _report(self, p: contract.Progress, line: str) -> None:
        with self._lock:
            self.last = p
            self._write_stdout(p.to_json())
            self._log_line(line)
            if self._series is not None:
                self._series.add(p.to_json())
            if self.metrics is not None:
                self.metrics.update(p)

    def on_preview(self, step: int, views: list[PreviewView]) -> None:
        """preview.png from an evaluation's views; a failed write only warns (never fails a run)."""
        if not views:
            return
        try:
            write_preview(self.cfg.out / contract.PREVIEW_PNG, views, step)
        except (OSError, ValueError) as exc:
            print(f"warning: could not write {contract.PREVIEW_PNG}: {exc}", file=sys.stderr)

    # --- outputs -----------------------------------------------------------------------------

    def _emit(self, data: dict[str, Any]) -> None:
        self._write_stdout(json.dumps(data, separators=(", ", ": "), default=str))

    def _write_stdout(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _log_line(self, line: str) -> None:
        if self._log is not None:
            self._log.add(line)

    def log(self, line: str) -> None:
        """A free-form line in training_log.txt (e.g. the final summary)."""
        with self._lock:
            self._log_line(line)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_termination_message(path: Path, result: contract.Result) -> bool:
    """Write the Result JSON to the termination log; warn (never fail) if it cannot be written.

    /dev/termination-log is a file the kubelet mounts; no temp file can be made next to it, so
    this writes in place when an atomic replace is impossible.
    """
    text = result.to_json()
    try:
        atomic.write_text(path, text)
        return True
    except OSError:
        pass
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return True
    except OSError as exc:
        print(f"warning: could not write the termination message to {path}: {exc}", file=sys.stderr)
        return False


def write_error_log(out_dir: Path, reason: str, message: str, exc: BaseException | None = None) -> Path | None:
    """<out>/error.log: when, why, and the traceback; None if the directory cannot be written."""
    path = out_dir / contract.ERROR_LOG
    text = f"{_now()} {reason}: {message}\n"
    if exc is not None and exc.__traceback__ is not None:
        text += "\n" + "".join(traceback.format_exception(exc))
    try:
        atomic.write_text(path, text)
        return path
    except OSError as err:
        print(f"warning: could not write {path}: {err}", file=sys.stderr)
        return None
