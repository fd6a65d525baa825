"""Handlers of the GaussianSplatTraining itself: its one Job, spec.suspend, forgetting it on deletion.

Level-triggered: every watch event of a training (and the progress timer, which retries what an
event could not finish) makes the cluster match the resource, whatever happened before. No kopf
create/update/field handler is registered for trainings, so kopf keeps no progress or diff-base
annotations on them: no annotation patch and no second processing cycle per creation (a quarter
of the operator's CPU in a burst), and the operator needs no `patch` on the resource itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Mapping

import kopf
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from splatops.api.models import Spec, parse_spec
from splatops.controller import failures, jobs, queue, status
from splatops.controller.handlers.admission import admit_waiting, admitted_metrics, slots
from splatops.controller.handlers.reconcile import event_body, fail, fail_invalid, reconcile
from splatops.controller.handlers.state import TERMINAL, Indices, Key, Runtime, snapshot
from splatops.controller.timeutil import format_time


# While a deleted namesake's Job is still being garbage-collected, creation waits: the error says
# so, and the next event or progress-timer tick tries again (kopf does not retry event handlers).
FOREIGN_JOB_RETRY = 10.0
JOB_RECREATED = "JobRecreated"  # the Event reason
log = logging.getLogger("splatops.operator")


class JobRejected(Exception):
    """The API server refused the Job as invalid (400/422): retrying cannot help."""


async def training_event(rt: Runtime, idx: Indices, *, type: str | None, body: kopf.Body, namespace: str,
                         name: str, logger: Any, **_: Any) -> None:
    key: Key = (namespace, name)
    if type == "DELETED":  # the Job and pods go by garbage collection; the PVC is never touched
        rt.forget(key)
        rt.metrics.forget_training(namespace, name)
        return
    await sync_training(rt, idx, key, body, logger)


async def sync_training(rt: Runtime, idx: Indices, key: Key, body: Mapping[str, Any], logger: Any) -> None:
    """Make the cluster match the training: its one Job exists (created suspended when it must
    queue) and follows spec.suspend. Idempotent; a failure is retried by the next event or timer."""
    training = idx.training(key) or snapshot(body)
    if rt.current_status(key, training).get("phase") in TERMINAL:
        return  # final, also when the Job is gone (ttlSecondsAfterFinished): never a new Job
    namespace, name = key
    existing = idx.job(namespace, jobs.job_name(name))
    if existing is None and key in rt.job_created:
        return  # created or adopted: the Job watch has not caught up yet
    if existing is not None and key in rt.job_created:
        await follow_suspend(rt, idx, key, training, existing, logger)
        return
    await ensure_job(rt, idx, key, training, logger)


async def ensure_job(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], logger: Any) -> None:
    """Validate, then create the one Job (suspended when it must queue), or adopt ours.
    Called by sync_training for a training that is not terminal."""
    namespace, name = key
    try:
        spec = parse_spec(dict(training.get("spec") or {}))
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        await fail_invalid(rt, key, training, detail)
        return
    jname = jobs.job_name(name)
    uid = training["metadata"]["uid"]
    existing = idx.job(namespace, jname)
    if existing is not None and not jobs.owned_by(existing, uid):
        raise _foreign_job(jname, existing)
    if rt.retired(existing):
        return  # an OOM retry's old Job, still going: its DELETED event and the timer bring us back
    if existing is not None:  # ours from before (an operator restart): adopt it, never a second one
        rt.job_created.add(key)
        await follow_suspend(rt, idx, key, training, existing, logger)
        return
    problem = await scene_problem(rt, namespace, spec, logger)
    if problem is not None:
        await fail(rt, key, training, problem.reason, problem.message)
        return
    queued = False
    max_concurrent = rt.settings.max_concurrent
    capped = max_concurrent > 0 and not (spec.suspend or spec.queue_name)
    others: list[queue.Waiting] = []
    # Only admission under a cap needs serialising; uncapped creates run concurrently.
    async with rt.admission_lock if capped else contextlib.nullcontext():
        suspend = bool(spec.suspend or spec.queue_name)
        if capped:
            running, waiting = slots(rt, idx)
            created_at = str(training["metadata"].get("creationTimestamp") or format_time(time.time()))
            me = queue.Waiting(created_at, rt.first_seen(key), namespace, name)
            admitted = queue.admit(running, [w for w in waiting if (w.namespace, w.name) != key] + [me], max_concurrent)
            suspend = queued = me not in admitted
            others = [w for w in admitted if w != me and w.has_job]
        current = rt.current_status(key, training)  # dataFactor of an OOM retry may not be indexed yet
        manifest = jobs.build_job({**training, "status": current}, rt.settings, suspend=suspend)
        try:
            job, created = await create_or_adopt(rt, namespace, manifest, uid, logger)
        except JobRejected as exc:
            await fail_invalid(rt, key, training, str(exc))
            return
        rt.job_created.add(key)
        rt.suspend_seen[key] = bool(spec.suspend)
        if created and current.get("jobName") and current.get("reason") != status.REASON_DOWNSCALED:
            job_recreated(training, jname)
        if not (job.get("spec") or {}).get("suspend"):
            rt.admitted.add(key)
            if created:  # an adopted Job was counted by whoever created it
                admitted_metrics(training)
            logger.info(f"Created Job {jname}." if created else f"Adopted Job {jname}.")
        else:
            why = "Kueue" if spec.queue_name else "suspend" if spec.suspend else "queued"
            logger.info(f"Created Job {jname} suspended ({why}).")
    if others:
        await admit_waiting(rt, idx)
    await reconcile(rt, key, idx, job=job, queued=queued)


def job_recreated(training: Mapping[str, Any], jname: str) -> None:
    """The status names a Job that is gone before its outcome was recorded: deleted by hand, or by
    ttlSecondsAfterFinished while the operator was down. Creating it again is the level-triggered
    answer (the trainer resumes from its newest checkpoint, and a finished one only rewrites its
    results); the Warning says why a training ran a second pod."""
    message = (f"Job {jname} was deleted before its outcome was recorded (by hand, or by "
               "ttlSecondsAfterFinished while the operator was down); created it again: the trainer "
               "resumes from its newest checkpoint on the volume.")
    meta = training["metadata"]
    log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), message)  # not kopf's logger: one Event, ours
    kopf.event(event_body(training), type="Warning", reason=JOB_RECREATED, message=message)


async def create_or_adopt(rt: Runtime, namespace: str, manifest: dict[str, Any], uid: str,
                          logger: Any) -> tuple[dict[str, Any], bool]:
    """Create the Job; a 409 means it exists: use it if it is ours, never make a second one.
    Returns (the Job, whether we created it)."""
    jname = manifest["metadata"]["name"]
    try:
        return await rt.api().create_job(namespace, manifest), True
    except ApiException as exc:
        if exc.status in (400, 422):
            detail = failures.api_error_message(exc.status, exc.reason, exc.body)
            raise JobRejected(f"the API server rejected Job {jname}: {detail}") from exc
        if exc.status != 409:
            raise
    existing = await rt.api().read_job(namespace, jname)
    if not jobs.owned_by(existing, uid):
        raise _foreign_job(jname, existing)
    logger.info(f"Job {jname} already exists; adopting it (no second Job).")
    return existing, False


def _foreign_job(jname: str, job: Mapping[str, Any]) -> kopf.TemporaryError:
    """A Job of a deleted namesake is still being garbage-collected: wait for it to go."""
    owners = [r.get("uid") for r in (job.get("metadata") or {}).get("ownerReferences") or []]
    return kopf.TemporaryError(f"Job {jname} exists but belongs to another owner {owners}; waiting for its deletion.",
                               delay=FOREIGN_JOB_RETRY)


# How long a PVC seen to exist is taken to still exist. A claim deleted within it costs no data:
# the pod then waits unschedulable and the training fails with that reason instead.
PVC_SEEN_TTL = 30.0


async def scene_problem(rt: Runtime, namespace: str, spec: Spec, logger: Any) -> failures.Failure | None:
    """The scene's PVC must exist before the Job is created (else the pod waits unschedulable,
    and the training would fail with a misleading "no GPU node"). Without RBAC to read PVCs
    (403), or from an API that does not serve them, the check is skipped."""
    claim = spec.scene.claim_name
    seen = rt.pvc_seen.get((namespace, claim))
    if seen is not None and time.monotonic() - seen < PVC_SEEN_TTL:
        return None  # a burst of trainings on one scene volume asks the API server once
    try:
        await rt.api().read_pvc(namespace, claim)
        rt.pvc_seen[(namespace, claim)] = time.monotonic()
    except ApiException as exc:
        if failures.is_not_found(exc.status, exc.body):
            return failures.scene_pvc_not_found(namespace, claim, spec.scene.path)
        if exc.status not in (403, 404):
            raise  # kopf retries
        if "pvc-check" not in rt.warned:
            rt.warned.add("pvc-check")
            log.warning("Cannot check that scene PVCs exist (HTTP %s on persistentvolumeclaims %s/%s): "
                        "skipping the check. Grant the operator `get` on persistentvolumeclaims.",
                        exc.status, namespace, claim)
        logger.debug(f"PVC check skipped: HTTP {exc.status}")
    return None


async def follow_suspend(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any],
                         job: Mapping[str, Any], logger: Any) -> None:
    """spec.suspend changed since we last acted on it (or we have not seen this training yet):
    suspend the Job now, or queue it for a slot again (it resumes from its checkpoint)."""
    namespace, name = key
    spec = training.get("spec") or {}
    wanted = bool(spec.get("suspend"))
    if rt.suspend_seen.get(key) == wanted:
        return
    rt.suspend_seen[key] = wanted
    jname = jobs.job_name(name)
    job_suspended = bool((job.get("spec") or {}).get("suspend"))
    if wanted and not job_suspended:
        async with rt.admission_lock:
            rt.admitted.discard(key)
            job = await rt.api().patch_job(namespace, jname, {"spec": {"suspend": True}})
        logger.info(f"Suspended Job {jname}.")
    elif not wanted and job_suspended and not spec.get("queueName"):
        await admit_waiting(rt, idx)  # unsuspends it when a slot is free (Kueue's Jobs: Kueue does)
    else:
        return
    await reconcile(rt, key, idx)
