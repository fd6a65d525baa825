"""Status reconciliation: write what the cluster implies about a training, and react to phase changes."""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import kopf

from splatops import contract, names
from splatops.api.models import Phase, Spec
from splatops.controller import jobs, metrics, status
from splatops.controller.queue import TERMINAL
from splatops.controller.handlers.state import Indices, Key, Runtime
from splatops.controller.timeutil import parse_time

logger = logging.getLogger(__name__)

# Failures the operator decides itself while the Job would wait forever: stop the pod too.
OPERATOR_DECIDED = (contract.Reason.IMAGE_PULL.value, contract.Reason.UNSCHEDULABLE.value)


def job_finished(job: Mapping[str, Any]) -> bool:
    return bool(status.failures.job_condition(job, "Complete") or status.failures.job_condition(job, "Failed"))


async def reconcile(rt: Runtime, key: Key, idx: Indices, *, job: Mapping[str, Any] | None = None,
                    queued: bool = False) -> dict[str, Any] | None:
    """Write the status the cluster implies (only the changed fields; nothing if unchanged)."""
    if idx.training(key) is None:
        return None  # deleted: its state is gone, and taking its lock would make it again
    async with rt.lock(key):
        training = idx.training(key)
        spec = rt.spec(key, training) if training is not None else None
        if training is None or spec is None:
            return None  # gone, or an invalid spec: ensure_job fails it (InvalidSpec)
        jname = jobs.training_job_name(training)
        job, pods = await observe_job(rt, key, idx, training, job)
        if rt.retired(key, job):
            return None  # going (an OOM retry's, or with its training): the status waits for what follows
        current = rt.current_status(key, training)
        obs = await observe(rt, key, training, spec, current, job, pods, queued)
        desired = status.desired_status(obs)
        factor = status.oom_retry_factor(spec, current, desired)
        if factor is not None and job is not None:
            return await downscale(rt, training, spec, current, factor, (job.get("metadata") or {}).get("uid"))
        patch = status.status_patch(current, desired)
        if not patch:
            return desired
        if not await rt.api().patch_status(*key, patch):
            return None  # deleted meanwhile
        rt.remember(key, patch)
        metrics.STATUS_WRITES.labels("phase").inc()
        if status.phase_changed(current, desired):
            on_phase_change(rt, training, desired)
            if desired["phase"] == Phase.FAILED.value and desired.get("reason") in OPERATOR_DECIDED and job is not None \
                    and not (job.get("spec") or {}).get("suspend"):
                # The Job would wait forever; suspending removes the stuck pod but keeps the Job for inspection.
                await rt.api().patch_job(key[0], jname, {"spec": {"suspend": True}})
        return desired


async def observe_job(rt: Runtime, key: Key, idx: Indices, training: Mapping[str, Any],
                      job: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, tuple[Mapping[str, Any], ...]]:
    """The training's own Job (`job` if the caller has it fresher than the index) and its pods."""
    jname = jobs.training_job_name(training)
    job = job if job is not None else idx.job(key[0], jname)
    pods = idx.job_pods(key[0], jname)
    if job is not None and not jobs.owned_by(job, training["metadata"].get("uid")):
        return None, ()  # a deleted namesake's Job, still being garbage-collected: not ours
    if job is not None and not rt.retired(key, job) and rt.current_status(key, training).get("phase") not in TERMINAL and job_finished(job) \
            and not any(status.failures.terminated_state(p) for p in pods):
        # The Job's verdict can outrun the pod watch; the pod's termination message
        # carries the real reason, so read the pods once rather than guess.
        pods = tuple(await rt.api().job_pods(key[0], jname)) or pods
    return job, pods


async def observe(rt: Runtime, key: Key, training: Mapping[str, Any], spec: Spec, current: Mapping[str, Any],
                  job: Mapping[str, Any] | None, pods: tuple[Mapping[str, Any], ...], queued: bool) -> status.Observed:
    """Everything status.desired_status looks at, including what only the API can tell (Karpenter's
    nominations, Kueue's words)."""
    location = rt.location(key, training)
    blocked = rt.outputs.blocked.get(key) if job is None else None
    now = time.time()
    return status.Observed(
        spec=spec, status=current, generation=training["metadata"].get("generation"), job=job, pods=pods,
        queued_by_operator=queued, now=now, unschedulable_grace=rt.settings.unschedulable_grace,
        provisioning_grace=rt.settings.provisioning_grace,
        model_path=location.model_path if location is not None else None,
        output_busy=blocked.message if blocked is not None else None,
        blocked=rt.state(key).job_blocked,
        nominated=await nominated_by_karpenter(rt, key[0], pods, now),
        kueue_message=await kueue_message(rt, key, spec, job),
    )


async def downscale(rt: Runtime, training: Mapping[str, Any], spec: Spec, current: Mapping[str, Any], factor: int,
                    job_uid: str | None) -> dict[str, Any] | None:
    """CUDA out of memory under spec.oom.policy Downscale: Pending again at `factor`, a Warning,
    and the failed Job deleted; once it is gone, the timer creates the next one at the new factor
    (sync_training). The trainer's resume key holds the factor, so nothing of the old resolution
    is resumed. Called with the training's lock held."""
    meta = training["metadata"]
    ns, name = meta["namespace"], meta["name"]
    patch = status.downscaled_status(current, spec, factor, time.time(), meta.get("generation"))
    if not await rt.api().patch_status(ns, name, patch):
        return None  # deleted meanwhile
    rt.remember((ns, name), patch)
    metrics.STATUS_WRITES.labels("phase").inc()
    kopf.event(event_body(training), type="Warning", reason=status.REASON_DOWNSCALED, message=patch["message"])
    st = rt.state((ns, name))
    st.job_created = st.admitted = False
    rt.metrics.set_phase(ns, name, patch["phase"])
    if job_uid:
        st.retired_jobs.add(job_uid)
    await rt.api().delete_job(ns, jobs.training_job_name(training))
    return {**current, **patch}


async def nominated_by_karpenter(rt: Runtime, ns: str, pods: Any, now: float) -> frozenset[str]:
    """Pods past the Unschedulable grace that Karpenter launched a node for (a Nominated Event).

    Asked only then (one Events list per such pod and reconcile), so a training waiting for
    Karpenter's g5 node is not failed while the node boots; without RBAC to list Events, none."""
    found = set()
    for pod in pods:
        since = status.failures.unschedulable_since(pod)
        name = (pod.get("metadata") or {}).get("name")
        if since is None or now - since < rt.settings.unschedulable_grace or status.failures.provisioning(pod):
            continue
        try:
            events = await rt.api().pod_events(ns, name)
        except Exception as exc:  # 403 or a flaky API: fall back to the plain grace
            logger.debug("cannot list the Events of pod %s/%s: %s", ns, name, exc)
            continue
        if any(e.get("reason") == status.failures.KARPENTER_NOMINATED for e in events):
            found.add(name)
    return frozenset(found)


async def kueue_message(rt: Runtime, key: Key, spec: Spec, job: Mapping[str, Any] | None) -> str | None:
    """Why Kueue has not admitted the training's suspended Job, read from its Workload (at most
    once per progress interval per training: the timer's cadence; nothing without Kueue or RBAC
    to read Workloads)."""
    st = rt.state(key)
    if not spec.queue_name or job is None or not (job.get("spec") or {}).get("suspend"):
        st.kueue_seen = None
        return None
    now = time.monotonic()
    seen = st.kueue_seen
    if seen is not None and now - seen[0] < rt.settings.progress_interval:
        return seen[1]
    message = None
    try:
        workloads = await rt.api().kueue_workloads(key[0], str((job.get("metadata") or {}).get("uid") or ""))
        message = status.failures.kueue_pending(workloads)
    except Exception as exc:  # no Kueue (404), no RBAC (403): the plain message
        logger.debug("cannot read Kueue's Workload of %s/%s: %s", *key, exc)
    st.kueue_seen = (now, message)
    return message


async def fail_invalid(rt: Runtime, key: Key, training: Mapping[str, Any], detail: str) -> None:
    """Fail a training whose spec the schema let through but the operator (or the API server) cannot run."""
    await fail(rt, key, training, contract.Reason.INVALID_SPEC.value, f"Invalid spec: {detail}")


async def fail(rt: Runtime, key: Key, training: Mapping[str, Any], reason: str, message: str) -> None:
    """Fail a training before it has a Job (nothing in the cluster would ever say why)."""
    ns, name = key
    desired = status.failed_status(reason, message, time.time(), training["metadata"].get("generation"))
    if not await rt.api().patch_status(ns, name, desired):
        return  # deleted meanwhile
    rt.remember(key, desired)
    on_phase_change(rt, training, desired)


def on_phase_change(rt: Runtime, training: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    """A Kubernetes Event and the outcome metrics for every phase change."""
    ns, name = training["metadata"]["namespace"], training["metadata"]["name"]
    phase, reason, message = desired["phase"], desired.get("reason") or "", desired.get("message") or ""
    rt.metrics.set_phase(ns, name, phase)
    kind = "Warning" if phase == Phase.FAILED.value else "Normal"
    kopf.event(event_body(training), type=kind, reason=phase, message=f"{reason}: {message}" if reason else message)
    started = parse_time(desired.get("startTime"))
    finished = parse_time(desired.get("completionTime"))
    duration = (finished - started) if started is not None and finished is not None else None
    if phase == Phase.SUCCEEDED.value:
        metrics.SUCCEEDED.labels(ns).inc()
        if duration is not None:
            metrics.DURATION.labels("succeeded").observe(max(0.0, duration))
    elif phase == Phase.FAILED.value:
        metrics.FAILED.labels(ns, reason or "Unknown").inc()
        if duration is not None:
            metrics.DURATION.labels("failed").observe(max(0.0, duration))


def event_body(training: Mapping[str, Any]) -> dict[str, Any]:
    """The object reference kopf.event needs (the training, not a whole body)."""
    meta = training.get("metadata") or {}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }
