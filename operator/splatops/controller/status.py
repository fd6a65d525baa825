"""Map what the cluster shows (Job, pods, trainer result, progress) to the resource's desired status.

Pure functions only; the handlers feed them objects from kopf's indices and write the difference.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Iterable, Mapping

from splatops import contract, names
from splatops.api import layout
from splatops.api.models import CONDITION_TYPES, MAX_DATA_FACTOR, OOM_DOWNSCALE, Phase, Spec
from splatops.controller import failures
from splatops.controller.jobs import data_factor
from splatops.controller.timeutil import format_time

# Reasons of non-failure phases.
REASON_CREATED = "JobCreated"
REASON_WAITING_SLOT = "WaitingForSlot"
REASON_WAITING_KUEUE = "WaitingForKueue"
REASON_PREEMPTED = "Preempted"
REASON_SUSPENDED = "SuspendedByUser"
REASON_RUNNING = "TrainerRunning"
REASON_RECONSTRUCTING = contract.STAGE_RECONSTRUCTING  # structure-from-motion before training
REASON_COMPLETE = "TrainingComplete"
REASON_RETRYING = "Retrying"
REASON_OUTPUT_BUSY = "OutputBusy"  # another training writes the same output directory
REASON_DOWNSCALED = "DownscaledAfterOOM"  # also the Warning Event's reason
GPU_MEMORY_TIGHT = "GPUMemoryTight"  # the Warning Event's reason when the trainer's memory check fails


@dataclasses.dataclass(frozen=True)
class Observed:
    """Everything the mapping looks at, gathered by the handler."""

    spec: Spec  # parsed once, by the handler
    status: Mapping[str, Any]  # current status of the resource
    generation: int | None
    job: Mapping[str, Any] | None
    pods: tuple[Mapping[str, Any], ...] = ()
    queued_by_operator: bool = False  # waiting under the operator's own cap
    now: float = 0.0
    unschedulable_grace: float = 600.0
    provisioning_grace: float = 0.0  # how long a pod a node is being provisioned for may wait
    nominated: frozenset[str] = frozenset()  # pods Karpenter launched a node for (Nominated Events)
    kueue_message: str | None = None  # why Kueue has not admitted the Job yet, in its words
    model_path: str | None = None  # where results.ply lands (relative to the volume)
    blocked: tuple[str, str] | None = None  # why the Job cannot be created now: (reason, message)
    output_busy: str | None = None  # why it waits for its output directory (no Job is made meanwhile)


def _pod_sort_key(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def running_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for pod in sorted(pods, key=_pod_sort_key, reverse=True):
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        state = (failures.trainer_status(pod) or {}).get("state") or {}
        if (pod.get("status") or {}).get("phase") == "Running" and "running" in state:
            return pod
    return None


def attempts(job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]], previous: int | None) -> int:
    """Pods started so far: those of the Jobs before this one (a lost Job made again carries
    their count in an annotation), plus this Job's counters or the pods of it we saw; never
    going backwards."""
    meta = (job or {}).get("metadata") or {}
    before = _int((meta.get("annotations") or {}).get(names.ANNOTATION_ATTEMPTS_BEFORE))
    st = (job or {}).get("status") or {}
    counted = int(st.get("active") or 0) + int(st.get("succeeded") or 0) + int(st.get("failed") or 0)
    uid = meta.get("uid")
    # A namesake Job's pods (the lost one's, still being collected) are not this Job's.
    mine = [p for p in pods if not uid or not _owner_uids(p) or uid in _owner_uids(p)]
    seen = len({(p.get("metadata") or {}).get("uid") or (p.get("metadata") or {}).get("name") for p in mine})
    return max(before + max(counted, seen), previous or 0)


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(r.get("uid")) for r in (obj.get("metadata") or {}).get("ownerReferences") or []}


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


PhaseVerdict = tuple[Phase, str, str]  # (phase, reason, message)


def desired_phase(obs: Observed) -> PhaseVerdict:
    """(phase, reason, message) from the observations."""
    prev = obs.status.get("phase")
    if prev in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        return terminal_phase(obs)
    if obs.job is None:
        return phase_without_job(obs)
    job = obs.job
    if failures.job_condition(job, "Complete") or failures.job_condition(job, "SuccessCriteriaMet"):
        return Phase.SUCCEEDED, REASON_COMPLETE, "Training complete."
    if failures.job_condition(job, "Failed") or failures.job_condition(job, "FailureTarget"):
        failure = failures.classify_job_failure(job, obs.pods)
        return Phase.FAILED, failure.reason, failure.message
    stuck = failures.stuck(obs.pods, obs.now, obs.unschedulable_grace, nominated=obs.nominated,
                           provisioning_grace=obs.provisioning_grace)
    if stuck is not None:
        return Phase.FAILED, stuck.reason, stuck.message
    if obs.spec.suspend:
        return Phase.SUSPENDED, REASON_SUSPENDED, "Suspended (spec.suspend); set it to false to resume from the last checkpoint."
    if (job.get("spec") or {}).get("suspend"):
        return queued_phase(obs)
    return phase_of_pods(obs, job)


def terminal_phase(obs: Observed) -> PhaseVerdict:
    """Terminal is final (the spec is immutable, nothing re-runs it). Only a generic failure
    reason may still be refined, once the failed pod's termination message is visible."""
    prev, reason = obs.status.get("phase"), obs.status.get("reason")
    job_finished = bool(failures.job_condition(obs.job, "Complete") or failures.job_condition(obs.job, "Failed"))
    if prev == Phase.FAILED.value and job_finished and reason == contract.Reason.TRAINER_ERROR.value:
        better = failures.classify_job_failure(obs.job, obs.pods)
        if better.reason != contract.Reason.TRAINER_ERROR.value:
            return Phase.FAILED, better.reason, better.message
    return Phase(prev), str(reason or ""), str(obs.status.get("message") or "")


def phase_without_job(obs: Observed) -> PhaseVerdict:
    if obs.output_busy and obs.spec.suspend:
        return Phase.SUSPENDED, REASON_SUSPENDED, "Suspended (spec.suspend) before it started; " + obs.output_busy
    if obs.output_busy:
        return Phase.QUEUED, REASON_OUTPUT_BUSY, obs.output_busy
    if obs.blocked is not None:  # e.g. JobCreateRetrying, JobNameTaken
        return Phase.PENDING, obs.blocked[0], obs.blocked[1]
    if obs.status.get("reason") == REASON_DOWNSCALED:  # the next Job, at the new factor, is on its way
        return Phase.PENDING, REASON_DOWNSCALED, str(obs.status.get("message") or "")
    if obs.queued_by_operator:
        return Phase.QUEUED, REASON_WAITING_SLOT, "Waiting for a free training slot (operator cap)."
    return Phase.PENDING, REASON_CREATED, "Creating the training Job."


def queued_phase(obs: Observed) -> PhaseVerdict:
    """The Job is suspended, not by the user: the operator's queue or Kueue holds it."""
    if not obs.spec.queue_name:
        return Phase.QUEUED, REASON_WAITING_SLOT, "Waiting for a free training slot (operator cap)."
    # Kueue re-suspends a preempted Job without any DisruptionTarget: if it ever ran, it was preempted.
    if obs.status.get("phase") == Phase.RUNNING.value or obs.status.get("startTime") \
            or obs.status.get("reason") == REASON_PREEMPTED:
        return Phase.QUEUED, REASON_PREEMPTED, "Preempted by Kueue; resumes from the last checkpoint when readmitted."
    why = f": {obs.kueue_message}" if obs.kueue_message else "."
    return Phase.QUEUED, REASON_WAITING_KUEUE, f"Waiting for Kueue to admit the Job (queue {obs.spec.queue_name}){why}"


def phase_of_pods(obs: Observed, job: Mapping[str, Any]) -> PhaseVerdict:
    """A Job that runs (not finished, not suspended): what its pods say."""
    if running_pod(obs.pods) is not None:
        progress = obs.status.get("progress") or {}
        if progress.get("stage") == contract.STAGE_RECONSTRUCTING:  # written by the progress poll
            return Phase.RUNNING, REASON_RECONSTRUCTING, f"Reconstructing the scene from its photos: {progress.get('message')}"
        return Phase.RUNNING, REASON_RUNNING, "Training."
    if any((p.get("status") or {}).get("phase") == "Succeeded" for p in obs.pods):
        return Phase.RUNNING, REASON_RUNNING, "Training finished; the Job is completing."
    detail = failures.pending_detail(obs.pods, obs.nominated)
    if detail is not None:
        return Phase.PENDING, detail[0], detail[1]
    if int(((job.get("status") or {}).get("failed")) or 0) > 0:
        return Phase.PENDING, REASON_RETRYING, "A trainer pod failed; the Job is retrying it (resumes from the last checkpoint)."
    return Phase.PENDING, REASON_CREATED, "Waiting for the trainer pod to start."


def conditions(previous: Iterable[Mapping[str, Any]] | None, phase: Phase, reason: str, message: str,
               now: float, generation: int | None) -> list[dict[str, Any]]:
    """One condition per phase type: the current phase's is True, the rest False.

    lastTransitionTime only moves when a condition's status flips (metav1.Condition semantics).
    """
    old = {c.get("type"): c for c in previous or []}
    stamp = format_time(now)
    result = []
    for type_ in CONDITION_TYPES:
        status = "True" if phase.value == type_ else "False"
        prior = old.get(type_)
        cond = {
            "type": type_,
            "status": status,
            "reason": reason if status == "True" else (prior.get("reason") if prior and prior.get("status") == status else f"Not{type_}"),
            "message": message if status == "True" else "",
            "lastTransitionTime": prior["lastTransitionTime"] if prior and prior.get("status") == status and prior.get("lastTransitionTime") else stamp,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        result.append(cond)
    return result


def _succeeded_result(pods: Iterable[Mapping[str, Any]]) -> contract.Result | None:
    for pod in sorted(pods, key=_pod_sort_key, reverse=True):
        result = failures.result_of(pod)
        if result is not None and result.succeeded:
            return result
    return None


def desired_status(obs: Observed) -> dict[str, Any]:
    """The full status the resource should have (progress excluded: the timer owns it)."""
    phase, reason, message = desired_phase(obs)
    prev = obs.status
    out: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "observedGeneration": obs.generation,
        "attempts": attempts(obs.job, obs.pods, prev.get("attempts")),
    }
    if obs.job is not None:
        out["jobName"] = (obs.job.get("metadata") or {}).get("name")
    job_status = (obs.job or {}).get("status") or {}
    start = prev.get("startTime") or job_status.get("startTime")
    if start is None and phase == Phase.RUNNING:
        start = format_time(obs.now)
    if start:
        out["startTime"] = start
    if phase == Phase.QUEUED:
        out["queuedAt"] = prev.get("queuedAt") if prev.get("phase") == Phase.QUEUED.value and prev.get("queuedAt") else format_time(obs.now)
    elif prev.get("queuedAt"):
        out["queuedAt"] = prev["queuedAt"]
    if phase.terminal:
        out["completionTime"] = prev.get("completionTime") or job_status.get("completionTime") or format_time(obs.now)
    if phase == Phase.SUCCEEDED:
        result = _succeeded_result(obs.pods)
        if result is not None or not prev.get("modelPath"):
            out.update(result_fields(result, obs.model_path))
        # Once Succeeded, the pods (and the Job, by its TTL) may be gone: keep what was written then.
        final = final_progress(prev.get("progress"), result) if result is not None or prev.get("phase") != phase.value else None
        if final is not None:
            out["progress"] = final
    out["conditions"] = conditions(prev.get("conditions"), phase, reason, message, obs.now, obs.generation)
    return out


def oom_retry_factor(spec: Spec, current: Mapping[str, Any], desired: Mapping[str, Any]) -> int | None:
    """The dataFactor to train at again after a CUDA out-of-memory failure under spec.oom.policy
    Downscale: twice the current one, up to 8 (None: the failure stands)."""
    if desired.get("phase") != Phase.FAILED.value or desired.get("reason") != contract.Reason.OUT_OF_MEMORY.value:
        return None
    if current.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value):
        return None
    if spec.oom.policy != OOM_DOWNSCALE:
        return None
    factor = data_factor(spec, current) * 2
    return factor if factor <= MAX_DATA_FACTOR else None


def downscaled_status(current: Mapping[str, Any], spec: Spec, factor: int, now: float,
                      generation: int | None) -> dict[str, Any]:
    """Pending again at `factor`: the status patch of an out-of-memory retry."""
    old = data_factor(spec, current)
    message = (f"CUDA out of memory at dataFactor {old}; training again at dataFactor {factor} "
               f"(spec.oom.policy {OOM_DOWNSCALE}). The new run starts fresh: checkpoints of dataFactor "
               f"{old} are not resumed.")
    return {
        "phase": Phase.PENDING.value, "reason": REASON_DOWNSCALED, "message": message, "dataFactor": factor,
        "observedGeneration": generation, "gpuMemory": None,  # the last run's check; the next one checks again
        "conditions": conditions(current.get("conditions"), Phase.PENDING, REASON_DOWNSCALED, message, now, generation),
    }


def failed_status(reason: str, message: str, now: float, generation: int | None) -> dict[str, Any]:
    """The whole status of a training failed before its Job exists (invalid spec, missing PVC)."""
    return {
        "phase": Phase.FAILED.value, "reason": reason, "message": message,
        "completionTime": format_time(now), "observedGeneration": generation,
        "conditions": conditions(None, Phase.FAILED, reason, message, now, generation),
    }


def final_progress(progress: Mapping[str, Any] | None, result: contract.Result | None) -> dict[str, Any] | None:
    """On success the last polled progress is stale: show the finished count."""
    if not progress:
        return None
    max_steps = int(progress.get("maxSteps") or 0)
    step = (result.steps if result is not None and result.steps else None) or max_steps
    out = {**progress, "step": step, "percent": 100.0, "etaSeconds": 0.0}
    if result is not None and result.psnr is not None:
        out["psnr"] = result.psnr
    if progress.get("loss") is not None:
        out["message"] = contract.format_progress_message(step, max_steps, float(progress["loss"]))
    return out


def result_fields(result: contract.Result | None, default_model_path: str | None) -> dict[str, Any]:
    """modelPath, modelSizeMB, metrics, config from the trainer's termination message."""
    fields: dict[str, Any] = {}
    if default_model_path:
        fields["modelPath"] = default_model_path
    if result is None:
        return fields
    if result.model_path:
        reported = result.model_path
        fields["modelPath"] = layout.volume_relative(reported) if layout.in_volume(reported) else (default_model_path or reported)
    if result.model_size_mb is not None:
        fields["modelSizeMB"] = result.model_size_mb
    metrics = {
        "psnr": result.psnr,
        "ssim": result.ssim,
        "numGaussians": result.num_gaussians,
        "steps": result.steps,
        "durationSeconds": result.duration_s,
        "gpuSeconds": result.gpu_seconds,
        "peakGpuMemoryBytes": result.peak_gpu_memory_bytes,
        "gpuMemoryEstimateBytes": result.gpu_memory_estimate_bytes,
    }
    metrics = {k: v for k, v in metrics.items() if v is not None}
    if metrics:
        fields["metrics"] = metrics
    if result.config:
        fields["config"] = result.config
    outputs = output_refs(result.outputs or [], fields.get("modelPath"))
    if outputs:
        fields["outputs"] = outputs
    if result.reconstruction:
        fields["reconstruction"] = result.reconstruction
    return fields


def output_refs(outputs: list[Any], model_path: str | None) -> list[dict[str, Any]]:
    """status.outputs[]: name, path (inside the volume), uri (object storage), bytes, sha256. The
    trainer names each file relative to its output directory, results.ply's directory."""
    directory = posixpath.dirname(model_path) if model_path else ""
    refs = []
    for entry in outputs:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or file.startswith("/") or ".." in file.split("/"):
            continue
        ref: dict[str, Any] = {"name": str(entry.get("name") or file), "path": posixpath.join(directory, file)}
        for key in ("uri", "bytes", "sha256"):
            if entry.get(key) is not None:
                ref[key] = entry[key]
        refs.append(ref)
    return refs


def progress_status(progress: contract.Progress, now: float) -> dict[str, Any]:
    """status.progress from a parsed trainer progress line."""
    out: dict[str, Any] = {
        "step": progress.step,
        "maxSteps": progress.max_steps,
        "percent": progress.percent,
        "loss": progress.loss,
        "message": progress.message(),
        "updatedAt": format_time(now),
    }
    optional = {
        "psnr": progress.psnr,
        "ssim": progress.ssim,
        "numGaussians": progress.num_gaussians,
        "stepsPerSec": progress.steps_per_sec,
        "etaSeconds": round(progress.eta_s, 1) if progress.eta_s is not None else None,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def stage_status(report: contract.StageReport, now: float) -> dict[str, Any]:
    """status.progress during a stage before training: its words, its items as step/maxSteps."""
    total = report.total if report.total else 1
    done = min(report.done or 0, total) if report.total else 0  # no total: no percent either
    return {
        "stage": report.stage,
        "step": done,
        "maxSteps": total,
        "percent": round(100.0 * done / total, 2),
        "message": report.message,
        "updatedAt": format_time(now),
    }


def report_status(report: contract.Progress | contract.StageReport, now: float) -> dict[str, Any]:
    if isinstance(report, contract.StageReport):
        return stage_status(report, now)
    return progress_status(report, now)


def gpu_memory_status(check: contract.MemoryCheck | None, current: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """status.gpuMemory to write for a log tail's memory check: only one that will not fit, and
    not again when the status already holds it (None: nothing to write, nor to warn about). A
    downscaled retry checks again at its new resolution: new numbers are written (and warned) once more."""
    if check is None or check.fits:
        return None
    fields = {"estimateBytes": check.estimate_bytes, "freeBytes": check.free_bytes, "fits": False,
              "advice": check.advice}
    return None if dict(current or {}) == fields else fields


def gpu_memory_warning(fields: Mapping[str, Any]) -> str:
    """The Warning Event's words: the trainer's advice, or the bare numbers when it gave none."""
    gib = 2**30
    return fields.get("advice") or (
        f"The trainer estimates a peak of {fields['estimateBytes'] / gib:.2f} GiB of GPU memory, more than the "
        f"{fields['freeBytes'] / gib:.2f} GiB free; it may fail with CUDA out of memory."
    )


def should_write_status(last_write: float | None, now: float, interval: float) -> bool:
    """Throttle: at most one progress write per resource per `interval` seconds."""
    return last_write is None or now - last_write >= interval


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch turning `current` into `desired` (only changed keys; empty = no write)."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def phase_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return current.get("phase") != desired.get("phase")
