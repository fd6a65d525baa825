"""A simulated Job controller and kubelet over `SplatopsEmulator`, driven step by step.

Tests (and the local executor) play the cluster: create a Job's pod, mark it Running with log
lines, terminate it with an exit code and a termination message, disrupt it. After each pod
change the Job's status is recomputed the way the real Job controller does it: podFailurePolicy
(FailJob / Ignore / Count), backoffLimit, activeDeadlineSeconds, suspend, the conditions
FailureTarget + Failed, SuccessCriteriaMet + Complete, Suspended. The decisions are pure functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import secrets
from typing import Any

from splatops import names
from splatops.local.cluster import EVENT_RESOURCE, JOB_RESOURCE, KUEUE_WORKLOAD_RESOURCE, POD_RESOURCE, SplatopsEmulator

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
DEFAULT_NODE = "sim-a10g-node-1"
# DisruptionTarget reasons whose pod stays (Failed) rather than being deleted: the kubelet's own.
KEEPS_DISRUPTED_POD = frozenset({"TerminationByKubelet"})
UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Pure decisions ------------------------------------------------------------------------------


def pod_manifest(job: dict[str, Any], suffix: str | None = None) -> dict[str, Any]:
    """The pod the Job controller creates from a Job's template (Pending, not yet scheduled)."""
    meta, template = job["metadata"], job["spec"]["template"]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update({JOB_NAME_LABEL: meta["name"], "job-name": meta["name"],
                   CONTROLLER_UID_LABEL: meta["uid"], "controller-uid": meta["uid"]})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{suffix or secrets.token_hex(3)[:5]}",
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": dict(template.get("spec") or {}),
        "status": {"phase": "Pending"},
    }


def _condition(type_: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
    t = now()
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": t, "lastTransitionTime": t}


def pod_failure_action(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, str] | None:
    """The podFailurePolicy rule a failed pod matches: (action, description) or None."""
    for index, rule in enumerate((policy or {}).get("rules") or []):
        codes = rule.get("onExitCodes")
        if codes:
            for cs in pod.get("status", {}).get("containerStatuses") or []:
                if codes.get("containerName") and cs.get("name") != codes["containerName"]:
                    continue
                term = (cs.get("state") or {}).get("terminated")
                if not term:
                    continue
                code, values = term.get("exitCode"), set(codes.get("values") or [])
                hit = code in values if codes.get("operator") == "In" else (code not in values and code != 0)
                if hit:
                    return rule["action"], (
                        f"Container {cs.get('name')} for pod {pod['metadata'].get('namespace')}/"
                        f"{pod['metadata']['name']} failed with exit code {code} matching "
                        f"{rule['action']} rule at index {index}")
        for pattern in rule.get("onPodConditions") or []:
            for cond in pod.get("status", {}).get("conditions") or []:
                if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get("status", "True"):
                    return rule["action"], (
                        f"Pod {pod['metadata'].get('namespace')}/{pod['metadata']['name']} has "
                        f"condition {cond['type']} matching {rule['action']} rule at index {index}")
    return None


@dataclasses.dataclass(frozen=True)
class JobVerdict:
    """What the Job controller decides from the Job and its pods."""

    active: int
    ready: int
    succeeded: int
    failed: int  # counted failures (Ignore'd pods are not counted)
    terminal: str | None  # "Complete" | "Failed" | None
    reason: str = ""
    message: str = ""
    needs_pod: bool = False  # create a replacement pod


def decide(job: dict[str, Any], pods: list[dict[str, Any]], *, deadline_passed: bool = False) -> JobVerdict:
    spec = job.get("spec", {})
    active = [p for p in pods if _phase(p) in ("Pending", "Running")]
    ready = [p for p in active if _phase(p) == "Running"]
    succeeded = [p for p in pods if _phase(p) == "Succeeded"]
    failed_pods = [p for p in pods if _phase(p) == "Failed"]
    counted, fail_job = 0, None
    for pod in failed_pods:
        hit = pod_failure_action(spec.get("podFailurePolicy"), pod)
        if hit and hit[0] == "FailJob" and fail_job is None:
            fail_job = hit[1]
        if not hit or hit[0] in ("Count", "FailJob"):
            counted += 1
    base = dict(active=len(active), ready=len(ready), succeeded=len(succeeded), failed=counted)
    if succeeded:
        return JobVerdict(**base, terminal="Complete", reason="CompletionsReached",
                          message="Reached expected number of succeeded pods")
    if fail_job:
        return JobVerdict(**base, terminal="Failed", reason="PodFailurePolicy", message=fail_job)
    if counted > int(spec.get("backoffLimit", 6)):
        return JobVerdict(**base, terminal="Failed", reason="BackoffLimitExceeded",
                          message="Job has reached the specified backoff limit")
    if deadline_passed:
        return JobVerdict(**base, terminal="Failed", reason="DeadlineExceeded",
                          message="Job was active longer than specified deadline")
    suspended = bool(spec.get("suspend"))
    return JobVerdict(**base, terminal=None, needs_pod=not suspended and not active)


def job_status(job: dict[str, Any], verdict: JobVerdict) -> dict[str, Any]:
    """The Job's new status: counters plus the conditions the real controller writes."""
    old = job.get("status") or {}
    conditions = [dict(c) for c in old.get("conditions") or []]
    types = {c["type"]: c for c in conditions}
    status: dict[str, Any] = {
        "active": verdict.active, "ready": verdict.ready,
        "succeeded": verdict.succeeded, "failed": verdict.failed,
    }
    if verdict.terminal == "Complete" and "Complete" not in types:
        conditions += [_condition("SuccessCriteriaMet", verdict.reason, verdict.message),
                       _condition("Complete", verdict.reason, verdict.message)]
        status["completionTime"] = now()
    elif verdict.terminal == "Failed" and "Failed" not in types:
        conditions += [_condition("FailureTarget", verdict.reason, verdict.message),
                       _condition("Failed", verdict.reason, verdict.message)]
    suspended = bool(job.get("spec", {}).get("suspend"))
    if verdict.terminal is None:
        cond = types.get("Suspended")
        if suspended and (cond is None or cond["status"] != "True"):
            conditions = [c for c in conditions if c["type"] != "Suspended"]
            conditions.append(_condition("Suspended", "JobSuspended", "Job suspended"))
        elif not suspended and cond is not None and cond["status"] == "True":
            conditions = [c for c in conditions if c["type"] != "Suspended"]
            conditions.append(_condition("Suspended", "JobResumed", "Job resumed", "False"))
            # The real controller restarts the clock: activeDeadlineSeconds counts active time.
            status["startTime"] = now()
    if not suspended and "startTime" not in old and verdict.terminal is None:
        status["startTime"] = now()
    if conditions:
        status["conditions"] = conditions
    return status


# --- The driver ---------------------------------------------------------------------------------


class SimCluster:
    """Step-by-step Job controller + kubelet. Every method leaves the Job status recomputed.

    `pods(job)` lists oldest first; the pods this instance created are ordered exactly.
    """

    def __init__(self, emulator: SplatopsEmulator, namespace: str = "default", *,
                 controller_lag: float = 0.0) -> None:
        self.emulator = emulator
        self.namespace = namespace
        # Seconds between a pod's change and the Job controller's reaction to it (real clusters:
        # milliseconds to seconds; watchers can see the two in either order).
        self.controller_lag = controller_lag
        self.expired: set[str] = set()  # Jobs whose activeDeadlineSeconds the test declared passed
        self._created: dict[str, int] = {}  # pod name -> creation order (timestamps are in seconds)

    # -- reads ---------------------------------------------------------------------------------

    def job(self, name: str) -> dict[str, Any] | None:
        return self.emulator.read(JOB_RESOURCE, self.namespace, name)

    def jobs(self, training: str | None = None) -> list[dict[str, Any]]:
        selector = f"{names.LABEL_TRAINING}={training}" if training else None
        return self.emulator.list_objects(JOB_RESOURCE, self.namespace, selector)

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        pods = self.emulator.list_objects(POD_RESOURCE, self.namespace, f"{JOB_NAME_LABEL}={job_name}")
        return sorted(pods, key=lambda p: (self._created.get(p["metadata"]["name"], -1),
                                           p["metadata"]["creationTimestamp"]))

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.emulator.read(POD_RESOURCE, self.namespace, name)
        if pod is None:
            raise LookupError(f"pod {self.namespace}/{name} does not exist")
        return pod

    def _job_of(self, pod_name: str) -> str:
        return self.pod(pod_name)["metadata"]["labels"][JOB_NAME_LABEL]

    # -- Job controller ------------------------------------------------------------------------

    async def sync_job(self, job_name: str) -> dict[str, Any]:
        """One reconcile of the Job controller: create a pod if due, write the Job status.

        A suspended Job's active pods are deleted (their processes killed), as the real one does.
        """
        job = self.job(job_name)
        if job is None:
            raise LookupError(f"job {self.namespace}/{job_name} does not exist")
        if job.get("spec", {}).get("suspend"):
            for pod in self.pods(job_name):
                if _phase(pod) in ("Pending", "Running"):
                    await self.emulator.delete(POD_RESOURCE, self.namespace, pod["metadata"]["name"])
        verdict = decide(job, self.pods(job_name), deadline_passed=job_name in self.expired)
        if verdict.needs_pod and not _terminal(job):
            pod = await self.emulator.create(POD_RESOURCE, pod_manifest(job))
            self._created[pod["metadata"]["name"]] = len(self._created)
            await self.emulator.patch(POD_RESOURCE, self.namespace, pod["metadata"]["name"],
                                      {"status": {"phase": "Pending"}}, subresource="status")
            verdict = dataclasses.replace(verdict, active=verdict.active + 1)
        if verdict.terminal:
            for pod in self.pods(job_name):  # a finished Job leaves no pod running
                if _phase(pod) in ("Pending", "Running"):
                    await self._set_pod(pod["metadata"]["name"], _terminated(137, "Error", ""), "Failed")
        return await self.emulator.patch(JOB_RESOURCE, self.namespace, job_name,
                                         {"status": job_status(job, verdict)}, subresource="status")

    async def start(self, job_name: str) -> str:
        """Sync a new (or retrying) Job and return the name of its newest pod."""
        await self.sync_job(job_name)
        pods = self.pods(job_name)
        if not pods:
            raise LookupError(f"job {job_name} has no pod (suspended or finished?)")
        return pods[-1]["metadata"]["name"]

    async def expire(self, job_name: str) -> dict[str, Any]:
        """activeDeadlineSeconds has passed: the Job fails with DeadlineExceeded."""
        self.expired.add(job_name)
        return await self.sync_job(job_name)

    # -- kubelet --------------------------------------------------------------------------------

    async def run(self, pod_name: str, *lines: str, node: str = DEFAULT_NODE) -> None:
        """Schedule and start the pod; its container prints `lines`."""
        t = now()
        await self.emulator.patch(POD_RESOURCE, self.namespace, pod_name, {"spec": {"nodeName": node}})
        await self.emulator.append_log(self.namespace, pod_name, *lines)
        await self._set_pod(pod_name, {"running": {"startedAt": t}}, "Running", ready=True,
                            extra={"startTime": t, "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                                {"type": "Ready", "status": "True", "lastTransitionTime": t}]})
        await self._react(pod_name)

    async def log(self, pod_name: str, *lines: str) -> None:
        await self.emulator.append_log(self.namespace, pod_name, *lines)

    async def terminate(self, pod_name: str, exit_code: int, message: str = "",
                        reason: str | None = None) -> dict[str, Any]:
        """The container exits; `message` is what it wrote to its termination-log file."""
        reason = reason or ("Completed" if exit_code == 0 else "Error")
        await self._set_pod(pod_name, _terminated(exit_code, reason, message),
                            "Succeeded" if exit_code == 0 else "Failed")
        return await self._react(pod_name)

    async def disrupt(self, pod_name: str, reason: str = "PreemptionByScheduler") -> dict[str, Any]:
        """Node disruption: DisruptionTarget, the container killed; the Job retries (Ignore rule).

        As on a real cluster, the pod is then gone, except for the kubelet's own evictions (node
        pressure, `TerminationByKubelet`), which leave it Failed: preemption, the Eviction API and
        taint eviction delete it (tests/cluster saw the evicted pod disappear)."""
        t = now()
        pod = self.pod(pod_name)
        conditions = [c for c in pod.get("status", {}).get("conditions") or [] if c["type"] != "DisruptionTarget"]
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason,
                           "message": "Kubernetes Scheduler: preempting to accommodate a higher priority pod",
                           "lastTransitionTime": t})
        await self._set_pod(pod_name, _terminated(137, "Error", ""), "Failed",
                            extra={"conditions": conditions})
        job_name = self._job_of(pod_name)
        if reason not in KEEPS_DISRUPTED_POD:
            await self.emulator.delete(POD_RESOURCE, self.namespace, pod_name)
        if self.controller_lag > 0:
            await asyncio.sleep(self.controller_lag)
        return await self.sync_job(job_name)

    async def image_pull_failure(self, pod_name: str, reason: str = "ImagePullBackOff") -> None:
        image = self.pod(pod_name)["spec"]["containers"][0].get("image", "")
        await self._set_pod(pod_name, {"waiting": {
            "reason": reason, "message": f'Back-off pulling image "{image}"'}}, "Pending")
        await self._react(pod_name)

    async def karpenter_nominates(self, pod_name: str, nodeclaim: str = "gpu-g5-xl4k7") -> dict[str, Any]:
        """Karpenter launched a NodeClaim for the pod: its "Nominated" Event on the pod."""
        return await self.emulator.create(EVENT_RESOURCE, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod_name}.nominated", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "namespace": self.namespace},
            "reason": "Nominated", "message": f"Pod should schedule on: nodeclaim/{nodeclaim}",
            "type": "Normal", "source": {"component": "karpenter"}, "firstTimestamp": now(), "lastTimestamp": now(),
            "count": 1})

    async def kueue_pending(self, job_name: str, message: str) -> dict[str, Any]:
        """Kueue's Workload for the Job, not admitted: QuotaReserved False with Kueue's words."""
        job = self.job(job_name) or {}
        name = f"job-{job_name}-1a2b3"
        await self.emulator.create(KUEUE_WORKLOAD_RESOURCE, {
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}},
            "spec": {"queueName": job["metadata"]["labels"].get(names.KUEUE_QUEUE_LABEL, "")}})
        return await self.emulator.patch(KUEUE_WORKLOAD_RESOURCE, self.namespace, name, {"status": {"conditions": [{
            "type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message,
            "lastTransitionTime": now()}]}}, subresource="status")

    async def unschedulable(self, pod_name: str, message: str = UNSCHEDULABLE_MESSAGE) -> None:
        await self.emulator.patch(POD_RESOURCE, self.namespace, pod_name, {"status": {
            "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now()}]}}, subresource="status")
        await self._react(pod_name)

    async def _react(self, pod_name: str) -> dict[str, Any]:
        if self.controller_lag > 0:
            await asyncio.sleep(self.controller_lag)
        return await self.sync_job(self._job_of(pod_name))

    async def _set_pod(self, pod_name: str, state: dict[str, Any], phase: str, *,
                       ready: bool = False, extra: dict[str, Any] | None = None) -> None:
        pod = self.pod(pod_name)
        container = pod["spec"]["containers"][0]
        status = {"phase": phase, **(extra or {}), "containerStatuses": [{
            "name": container.get("name", names.TRAINER_CONTAINER), "image": container.get("image", ""),
            "ready": ready, "restartCount": 0, "started": "running" in state, "state": state,
        }]}
        await self.emulator.patch(POD_RESOURCE, self.namespace, pod_name, {"status": status},
                                  subresource="status")


def _terminated(exit_code: int, reason: str, message: str) -> dict[str, Any]:
    t = now()
    term: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "startedAt": t, "finishedAt": t}
    if message:
        term["message"] = message
    return {"terminated": term}


def _terminal(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"
