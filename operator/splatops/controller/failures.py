"""Classify why a training failed (or is stuck) into a contract.Reason plus an actionable message.

Pure: inputs are plain Kubernetes objects (dicts) and the trainer's parsed termination Result.
Order of evidence: the trainer's own word (termination message) beats exit codes, which beat the
Job's conditions, because the trainer knows *why* it stopped; the Job only knows *that* it did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Iterable, Mapping

from splatops import contract, names
from splatops.controller.timeutil import parse_time
from splatops.kubeapi import is_not_found, status_message  # noqa: F401 (is_not_found: for failures' callers)

R = contract.Reason


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str
    message: str


MESSAGES: dict[str, str] = {
    R.OUT_OF_MEMORY.value: contract.MSG_OOM,
    R.COLMAP_NOT_FOUND.value: contract.MSG_COLMAP_NOT_FOUND + " (expected <scene.path>/colmap/sparse_initial/ with cameras, images and points3D).",
    R.NO_IMAGES.value: contract.MSG_NO_IMAGES + " (expected image files in <scene.path>/images/).",
    R.DEADLINE_EXCEEDED.value: "Training exceeded its deadline (spec.activeDeadlineSeconds, else the operator's default). Raise spec.activeDeadlineSeconds, lower maxSteps or raise dataFactor.",
    R.BACKOFF_LIMIT_EXCEEDED.value: "The trainer failed on every retry (spec.backoffLimit reached). See `kubectl logs` of the last pod and error.log in the output directory (<scene.path>/gsplat/<training name>/ by default).",
    R.IMAGE_PULL.value: "The trainer image cannot be pulled. Check spec.image / the operator's trainer image, the registry, and the pull "
    "secrets: spec.podTemplate.imagePullSecrets (or the chart's trainer.podTemplate.imagePullSecrets).",
    R.UNSCHEDULABLE.value: "No GPU node can take the trainer pod. Check the GPU node pool (the chart's gpu.preset; default: node.kubernetes.io/instance-type g5.*), that the NVIDIA device plugin runs there, spec.affinity, spec.nodeSelector, spec.resources and spec.tolerations.",
    R.OOM_KILLED.value: "The trainer ran out of host memory (OOMKilled). Raise spec.resources.memory or raise dataFactor.",
    R.TRAINER_ERROR.value: "The trainer failed. See `kubectl logs` of the pod and error.log in the output directory (<scene.path>/gsplat/<training name>/ by default).",
    R.INVALID_OPTIONS.value: "The trainer rejected its options. Check the resource's spec.",
    R.OUTPUT_BUSY.value: "Another trainer holds the output directory's lock. Give this training its own spec.output.path, or re-create it once the other one ends.",
    R.TERMINATED.value: contract.MSG_TERMINATED.capitalize() + "; a retried pod resumes from the last checkpoint.",
    R.RECONSTRUCTION_FAILED.value: "Structure-from-motion registered too few of the scene's images. Take more photos with more overlap, sharp and of textured surfaces, or upload a COLMAP model to <scene.path>/colmap/sparse_initial/.",
    R.OUTPUT_NOT_WRITABLE.value: "The trainer cannot write its output directory (read-only or full volume). See `kubectl logs` of the pod.",
}

# Trainer reasons that say "this attempt stopped", not why the Job gave up: once the Job's retries
# are spent, BackoffLimitExceeded is the reason and the last attempt's words the detail.
_RETRIED_REASONS = frozenset({R.TRAINER_ERROR.value, R.TERMINATED.value})

_IMAGE_PULL_FATAL = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_IMAGE_PULL_TRANSIENT = frozenset({"ErrImagePull"})


def message_for(reason: str) -> str:
    """The actionable message for a reason the trainer reported without words of its own."""
    return MESSAGES.get(reason, MESSAGES[R.TRAINER_ERROR.value])


def trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == names.TRAINER_CONTAINER:
            return status
    return None


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = trainer_status(pod)
    if not status:
        return None
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")


def waiting_reason(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    status = trainer_status(pod)
    waiting = ((status or {}).get("state") or {}).get("waiting")
    if waiting:
        return str(waiting.get("reason") or ""), str(waiting.get("message") or "")
    return None


def pod_condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def job_condition(job: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def result_of(pod: Mapping[str, Any]) -> contract.Result | None:
    term = terminated_state(pod)
    return contract.parse_result((term or {}).get("message")) if term else None


def from_terminated(pod: Mapping[str, Any]) -> Failure | None:
    """A failed trainer container's reason, from its termination message or exit code."""
    term = terminated_state(pod)
    if not term or term.get("exitCode", 0) == 0:
        return None
    result = contract.parse_result(term.get("message"))
    if result is not None and not result.succeeded and result.reason:
        return Failure(result.reason, result.error or message_for(result.reason))
    if term.get("reason") == "OOMKilled":
        return Failure(R.OOM_KILLED.value, MESSAGES[R.OOM_KILLED.value])
    code = term.get("exitCode")
    if code == contract.ExitCode.OUT_OF_MEMORY:
        return Failure(R.OUT_OF_MEMORY.value, contract.MSG_OOM)
    if code == contract.ExitCode.TERMINATED:  # killed by SIGTERM before it could say so
        return Failure(R.TERMINATED.value, MESSAGES[R.TERMINATED.value])
    if code == contract.ExitCode.INVALID_INPUT:
        return Failure(R.INVALID_OPTIONS.value, "The trainer rejected its input (exit code 2). See `kubectl logs` and error.log in the output directory (<scene.path>/gsplat/<training name>/ by default).")
    return Failure(R.TRAINER_ERROR.value, f"The trainer exited with code {code}. " + MESSAGES[R.TRAINER_ERROR.value])


def classify_job_failure(job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]) -> Failure:
    """Why a Job whose Failed condition is True failed."""
    newest_first = sorted(pods, key=_pod_time, reverse=True)
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
    job_reason = str(cond.get("reason") or "")
    if job_reason == "DeadlineExceeded":
        return Failure(R.DEADLINE_EXCEEDED.value, MESSAGES[R.DEADLINE_EXCEEDED.value])
    for pod in newest_first:
        failure = from_terminated(pod)
        if failure is not None:
            if job_reason == "BackoffLimitExceeded" and failure.reason in _RETRIED_REASONS:
                return Failure(R.BACKOFF_LIMIT_EXCEEDED.value, f"{MESSAGES[R.BACKOFF_LIMIT_EXCEEDED.value]} Last error: {failure.message}")
            return failure
    if job_reason == "BackoffLimitExceeded":
        return Failure(R.BACKOFF_LIMIT_EXCEEDED.value, MESSAGES[R.BACKOFF_LIMIT_EXCEEDED.value])
    detail = str(cond.get("message") or "")
    return Failure(R.TRAINER_ERROR.value, (detail + " " if detail else "") + MESSAGES[R.TRAINER_ERROR.value])


# Karpenter's Event on a pod it launches a node (NodeClaim) for: "Pod should schedule on: nodeclaim/...".
KARPENTER_NOMINATED = "Nominated"


def provisioning(pod: Mapping[str, Any], nominated: Collection[str] = ()) -> bool:
    """A node is on its way for `pod`: the scheduler nominated one (status.nominatedNodeName), or
    Karpenter launched a NodeClaim for it (a Nominated Event; `nominated` holds such pods' names)."""
    return bool((pod.get("status") or {}).get("nominatedNodeName")) or \
        (pod.get("metadata") or {}).get("name") in nominated


def unschedulable_since(pod: Mapping[str, Any]) -> float | None:
    """When a pending pod became Unschedulable (None: it is not)."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    sched = pod_condition(pod, "PodScheduled")
    if not (sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable"):
        return None
    return parse_time(sched.get("lastTransitionTime")) or parse_time((pod.get("metadata") or {}).get("creationTimestamp"))


def stuck(pods: Iterable[Mapping[str, Any]], now: float, unschedulable_grace: float, *,
          nominated: Collection[str] = (), provisioning_grace: float = 0.0) -> Failure | None:
    """A pod the Job would wait on forever: fatal image pull, or unschedulable beyond the grace
    (beyond `provisioning_grace` while a node is being provisioned for it)."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        waiting = waiting_reason(pod)
        if waiting and waiting[0] in _IMAGE_PULL_FATAL:
            detail = waiting[1]
            return Failure(R.IMAGE_PULL.value, MESSAGES[R.IMAGE_PULL.value] + (f" ({detail})" if detail else ""))
        since = unschedulable_since(pod)
        on_its_way = provisioning(pod, nominated)
        grace = max(unschedulable_grace, provisioning_grace) if on_its_way else unschedulable_grace
        if since is not None and now - since >= grace:
            detail = str((pod_condition(pod, "PodScheduled") or {}).get("message") or "")
            waited = f" A node was being provisioned for it, but none was ready after {grace:.0f} s." if on_its_way else ""
            return Failure(R.UNSCHEDULABLE.value, MESSAGES[R.UNSCHEDULABLE.value] + waited + (f" Scheduler: {detail}" if detail else ""))
    return None


def pending_detail(pods: Iterable[Mapping[str, Any]], nominated: Collection[str] = ()) -> tuple[str, str] | None:
    """Why a not-yet-running pod waits (reason, message), for a Pending status that explains itself."""
    for pod in pods:
        waiting = waiting_reason(pod)
        if waiting and waiting[0] in _IMAGE_PULL_TRANSIENT:
            return R.IMAGE_PULL.value, f"Pulling the trainer image failed, retrying: {waiting[1]}".strip()
        sched = pod_condition(pod, "PodScheduled")
        if sched and sched.get("status") == "False":
            if provisioning(pod, nominated):
                return "NodeProvisioning", "Waiting for a GPU node being provisioned for the trainer (Karpenter or preemption)."
            return "Unschedulable", "Waiting for a GPU node: " + str(sched.get("message") or "no node fits yet")
        if waiting and waiting[0]:
            return waiting[0], waiting[1] or waiting[0]
    return None


def kueue_pending(workloads: Iterable[Mapping[str, Any]]) -> str | None:
    """Kueue's own words for why a Job's Workload is not admitted (QuotaReserved or Admitted
    False, e.g. "couldn't assign flavors to pod set main: insufficient unused quota for
    nvidia.com/gpu in flavor a10g, 1 more needed"); None when it says nothing."""
    for workload in workloads:
        conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
        for type_ in ("QuotaReserved", "Admitted"):
            cond = conditions.get(type_) or {}
            if cond.get("status") == "False" and cond.get("message"):
                return str(cond["message"])
    return None


def _pod_time(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


# --- Checks before the Job exists ---------------------------------------------------------------


def scene_pvc_not_found(namespace: str, claim: str, path: str) -> Failure:
    """The scene's PersistentVolumeClaim does not exist: say which, and what to do."""
    return Failure(
        R.SCENE_PVC_NOT_FOUND.value,
        f'PersistentVolumeClaim "{claim}" (spec.scene.claimName) not found in namespace "{namespace}". '
        f"Create it with the scene under {path}/ (images/ and colmap/sparse_initial/), or fix "
        "spec.scene.claimName; the spec is immutable, so then delete and re-create this training.",
    )






def api_error_message(code: int | None, reason: str | None, body: Any) -> str:
    """What the API server said about a rejected request (its Status message, else the HTTP reason)."""
    return status_message(body) or f"HTTP {code} {reason or ''}".strip()
