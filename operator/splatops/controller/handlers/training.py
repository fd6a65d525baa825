"""Handlers of the GaussianSplatTraining itself: its one Job, spec.suspend, forgetting it on deletion.

Level-triggered: every watch event of a training (and the resync timer, which retries what an
event could not finish) makes the cluster match the resource, whatever happened before. No kopf
create/update/field handler is registered for trainings, so kopf keeps no progress or diff-base
annotations on them: no annotation patch and no second processing cycle per creation (a quarter
of the operator's CPU in a burst), and the operator needs no `patch` on the resource itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Mapping, NoReturn

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from splatops import names
from splatops.api import layout
from splatops.api.models import Phase, Spec
from splatops.controller import failures, jobs, queue, status
from splatops.controller.queue import TERMINAL
from splatops.controller.handlers.admission import admit_new, admit_waiting, admitted_metrics, output_writers, place
from splatops.controller.handlers.reconcile import event_body, fail, fail_invalid, reconcile
from splatops.controller.handlers.state import Blocked, Indices, Key, Runtime, snapshot
from splatops.controller.policy import policy_violations
from splatops.controller.settings import Settings


# While a deleted namesake's Job is still being garbage-collected, creation waits: the error says
# so, and the next event or resync-timer tick tries again (kopf does not retry event handlers).
FOREIGN_JOB_RETRY = 10.0
JOB_CREATE_RETRY = 5.0  # seconds before kopf retries a Job creation the API server failed (5xx, 429)
JOB_RECREATED = "JobRecreated"  # the Event reason
# Why a training has no Job yet: the status reason (phase Pending) and the Warning Event's reason.
JOB_NAME_TAKEN = "JobNameTaken"
JOB_CREATE_RETRYING = "JobCreateRetrying"
OUTPUT_BUSY = status.REASON_OUTPUT_BUSY  # also the Event's reason
log = logging.getLogger("splatops.operator")


class JobRejected(Exception):
    """The API server refused the Job as invalid (400/422): retrying cannot help."""


class ForeignJob(Exception):
    """The Job's name is held by a Job this training does not own."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        super().__init__((job.get("metadata") or {}).get("name"))
        self.job = job


async def training_event(rt: Runtime, idx: Indices, *, type: str | None, body: kopf.Body, namespace: str,
                         name: str, logger: Any, **_: Any) -> None:
    key: Key = (namespace, name)
    if type == "DELETED":  # the Job and pods go by garbage collection; the PVC is never touched
        rt.forget(key)
        rt.metrics.forget_training(namespace, name)
        await retry_blocked(rt, idx)  # it may have held (or been first in line for) an output directory
        return
    await sync_training(rt, idx, key, body, logger)


async def sync_training(rt: Runtime, idx: Indices, key: Key, body: Mapping[str, Any], logger: Any) -> None:
    """Make the cluster match the training: its one Job exists (created suspended when it must
    queue) and follows spec.suspend. Idempotent; a failure is retried by the next event or timer."""
    training = idx.training(key) or snapshot(body)
    if rt.current_status(key, training).get("phase") in TERMINAL:
        return  # final, also when the Job is gone (ttlSecondsAfterFinished): never a new Job
    existing = idx.job(key[0], jobs.training_job_name(training))
    if rt.state(key).job_created:
        spec = rt.spec(key, training)
        if existing is None:
            return  # created or adopted: the Job watch has not caught up yet
        if spec is not None:
            await follow_suspend(rt, idx, key, training, spec, existing, logger)
            return
    await ensure_job(rt, idx, key, training, logger)


async def ensure_job(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], logger: Any) -> None:
    """Validate, then create the one Job (suspended when it must queue), or adopt ours.
    Called by sync_training for a training that is not terminal."""
    spec = await valid_spec(rt, key, training)
    if spec is None:
        return
    existing = await own_job(rt, idx, key, training)
    if rt.retired(key, existing):
        return  # an OOM retry's old Job, still going: its DELETED event and the timer bring us back
    if existing is not None:  # ours from before (an operator restart): adopt it, never a second one
        job_taken(rt, key)
        await follow_suspend(rt, idx, key, training, spec, existing, logger)
        return
    if not await may_create(rt, idx, key, training, spec, logger):
        return
    location = rt.location(key, training) or layout.output_location(spec, key[1])
    # Creating the Job takes the output directory: decided under its lock, so two trainings of
    # one directory never both see it free.
    async with rt.outputs.lock(location.key(key[0])):
        if await output_busy(rt, idx, key, training, location):
            return
        created = await create_job(rt, idx, key, training, spec, logger)
    if created is not None:
        job, queued, others = created
        if others:
            await admit_waiting(rt, idx)
        await reconcile(rt, key, idx, job=job, queued=queued)


async def own_job(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The training's Job in the index; one it does not own blocks it (kopf retries)."""
    jname = jobs.training_job_name(training)
    existing = idx.job(key[0], jname)
    if existing is not None and not jobs.owned_by(existing, training["metadata"]["uid"]):
        await job_blocked(rt, idx, key, training, JOB_NAME_TAKEN, foreign_job_message(jname, training, existing),
                          FOREIGN_JOB_RETRY)
    return existing


async def may_create(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], spec: Spec,
                     logger: Any) -> bool:
    """The checks before a new Job (an adopted one was created under the policy of its day): the
    operator's policy, and the scene's PVC. False after failing the training."""
    violations = policy_violations(spec, rt.settings.policy)
    if violations:
        await fail_invalid(rt, key, training, "; ".join(violations))
        return False
    try:
        problem = await scene_problem(rt, key[0], spec, logger)
    except ApiException as exc:  # 5xx, 429 on the PVC: the Job waits for the check, say so
        detail = failures.api_error_message(exc.status, exc.reason, exc.body)
        await job_blocked(rt, idx, key, training, JOB_CREATE_RETRYING,
                          f"Checking the scene PVC {spec.scene.claim_name} failed: {detail}; retrying.", JOB_CREATE_RETRY)
    if problem is not None:
        await fail(rt, key, training, problem.reason, problem.message)
        return False
    return True


async def create_job(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], spec: Spec,
                     logger: Any) -> tuple[dict[str, Any], bool, list[queue.Waiting]] | None:
    """admit_and_create, with the API server's refusals turned into status: None after failing
    the training as InvalidSpec (retrying cannot help); else a Pending reason while kopf retries."""
    jname = jobs.training_job_name(training)
    try:
        return await admit_and_create(rt, idx, key, training, spec, logger)
    except JobRejected as exc:
        await fail_invalid(rt, key, training, str(exc))
        return None
    except ForeignJob as exc:
        await job_blocked(rt, idx, key, training, JOB_NAME_TAKEN, foreign_job_message(jname, training, exc.job),
                          FOREIGN_JOB_RETRY)
    except ApiException as exc:  # 5xx, 429, ...: the API server may take it next time
        detail = failures.api_error_message(exc.status, exc.reason, exc.body)
        await job_blocked(rt, idx, key, training, JOB_CREATE_RETRYING,
                          f"Creating Job {jname} failed: {detail}; retrying.", JOB_CREATE_RETRY)


async def valid_spec(rt: Runtime, key: Key, training: Mapping[str, Any]) -> Spec | None:
    """The parsed spec, or None after failing the training as InvalidSpec: the schema let it
    through but the operator cannot run it."""
    parsed = rt.parsed(key, training)
    if parsed.spec is None:
        await fail_invalid(rt, key, training, parsed.problem or "")
    return parsed.spec


def job_taken(rt: Runtime, key: Key) -> None:
    """We created or adopted the training's Job: nothing blocks it any more."""
    st = rt.state(key)
    st.job_created, st.job_blocked = True, None
    rt.outputs.blocked.pop(key, None)


async def admit_and_create(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], spec: Spec,
                           logger: Any) -> tuple[dict[str, Any], bool, list[queue.Waiting]]:
    """Decide whether the new Job must queue under the operator's cap, then create it.
    Returns (the Job, whether it is queued, other admitted trainings to unsuspend)."""
    held = bool(spec.suspend or spec.queue_name)  # the user's or Kueue's, never the operator's cap
    capped = rt.settings.max_concurrent > 0 and not held
    current = rt.current_status(key, training)
    # Only admission under a cap needs serialising; uncapped creates run concurrently.
    async with rt.admission_lock if capped else contextlib.nullcontext():
        queued, others = admit_new(rt, idx, key, training) if capped else (False, [])
        manifest = new_job(training, current, spec, rt.settings, suspend=held or queued)
        job, created = await create_or_adopt(rt, key[0], manifest, training["metadata"]["uid"], logger)
        job_taken(rt, key)
        rt.state(key).suspend_seen = spec.suspend
        job_made(rt, key, training, spec, current, job, created, logger)
    return job, queued, others


def new_job(training: Mapping[str, Any], current: Mapping[str, Any], spec: Spec, settings: Settings, *,
            suspend: bool) -> dict[str, Any]:
    """The Job to create. One made again after its predecessor was lost carries the pods that one
    ran (status.attempts); built from the status we wrote: an OOM retry's dataFactor may not be
    indexed yet."""
    before = int(current.get("attempts") or 0) if current.get("jobName") else 0
    return jobs.build_job({**training, "status": current}, spec, settings, suspend=suspend, attempts_before=before)


def job_made(rt: Runtime, key: Key, training: Mapping[str, Any], spec: Spec, current: Mapping[str, Any],
             job: Mapping[str, Any], created: bool, logger: Any) -> None:
    """Record and tell what create_or_adopt did: a Warning for a lost Job made again, the admission
    of a running one (and its metrics, once), a log line."""
    jname = job["metadata"]["name"]
    if created and current.get("jobName") and current.get("reason") != status.REASON_DOWNSCALED:
        job_recreated(training, jname)
    if not (job.get("spec") or {}).get("suspend"):
        rt.state(key).admitted = True
        if created:  # an adopted Job was counted by whoever created it
            admitted_metrics(training)
        logger.info(f"Created Job {jname}." if created else f"Adopted Job {jname}.")
    else:
        why = "Kueue" if spec.queue_name else "suspend" if spec.suspend else "queued"
        logger.info(f"Created Job {jname} suspended ({why}).")


async def job_blocked(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], reason: str,
                      message: str, delay: float) -> NoReturn:
    """The Job cannot be created now. Say why, in the status (Pending, `reason`) and in a Warning
    Event (once per distinct message, not per retry), then let kopf retry: the training's next
    event or the resync timer tries again."""
    st = rt.state(key)
    if st.job_blocked != (reason, message):
        st.job_blocked = (reason, message)
        meta = training["metadata"]
        log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        kopf.event(event_body(training), type="Warning", reason=reason, message=message)
    await reconcile(rt, key, idx)
    raise kopf.TemporaryError(message, delay=delay)


def foreign_job_message(jname: str, training: Mapping[str, Any], job: Mapping[str, Any]) -> str:
    """Who holds the Job name: a deleted namesake (its Job goes by garbage collection) or
    anyone else (it stays until someone deletes it)."""
    refs = (job.get("metadata") or {}).get("ownerReferences") or []
    name = training["metadata"]["name"]
    if any(r.get("kind") == names.KIND and r.get("name") == name for r in refs):
        uids = ", ".join(str(r.get("uid")) for r in refs)
        return (f"Job {jname} still belongs to a deleted {names.KIND} {name} (uid {uids}); waiting for its "
                "garbage collection, then this training creates its own Job.")
    owners = ", ".join(f"{r.get('kind')} {r.get('name')} (uid {r.get('uid')})" for r in refs) or "no owner"
    return (f"Job {jname} already exists and belongs to {owners}, not to this training; waiting: delete that "
            "Job (or re-create this training under another name) to let it start.")


async def output_busy(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any],
                      location: layout.OutputLocation) -> bool:
    """Whether another training writes this one's output directory (or is ahead in line for it).
    If so the training waits in Queued (OutputBusy) without a Job, with one Event per holder;
    `retry_blocked` tries again when a writer ends."""
    namespace, name = key
    holder = output_holder(rt, idx, key, training, location)
    if holder is None:
        return False
    message = (f"Waiting for training {holder.name}, which writes the same output directory "
               f"{location.directory} on claim {location.claim}; starts when it ends "
               "(Succeeded, Failed or deleted).")
    previous = rt.outputs.blocked.get(key)
    rt.outputs.blocked[key] = Blocked(holder.name, message)
    shown = rt.current_status(key, training).get("message") == message  # e.g. before an operator restart
    if (previous is None and not shown) or (previous is not None and previous.holder != holder.name):
        log.info("%s/%s: %s", namespace, name, message)
        kopf.event(event_body(training), type="Normal", reason=OUTPUT_BUSY, message=message)
    await reconcile(rt, key, idx)
    if rt.settings.max_concurrent > 0:
        await admit_waiting(rt, idx)  # a slot it may have been counted for goes to the next in line
    return True


def output_holder(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any],
                  location: layout.OutputLocation) -> queue.Writer | None:
    return queue.output_holder(place(rt, key, training), output_writers(rt, idx, key, location.key(key[0])))


async def retry_blocked(rt: Runtime, idx: Indices) -> None:
    """A writer ended (its Job finished or went, its pod stopped, it was deleted): let the
    trainings waiting for an output directory try again, oldest first."""
    if not rt.outputs.blocked:
        return
    waiting = []
    for key, blocked in list(rt.outputs.blocked.items()):
        training = idx.training(key)
        if training is None:
            rt.outputs.blocked.pop(key, None)
            continue
        location = rt.location(key, training)
        holder = output_holder(rt, idx, key, training, location) if location is not None else None
        if holder is not None and holder.name == blocked.holder:
            continue  # still the same writer: nothing to do (no API call, no Event)
        waiting.append((str(training["metadata"].get("creationTimestamp") or ""), rt.first_seen(key), key, training))
    for *_, key, training in sorted(waiting, key=lambda w: w[:3]):
        try:
            await sync_training(rt, idx, key, training, log)
        except Exception as exc:  # noqa: BLE001 - one training's trouble must not stall the others; its timer retries
            log.warning("%s/%s: could not start it yet: %s", key[0], key[1], exc)


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
        raise ForeignJob(existing)
    logger.info(f"Job {jname} already exists; adopting it (no second Job).")
    return existing, False


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


async def follow_suspend(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any], spec: Spec,
                         job: Mapping[str, Any], logger: Any) -> None:
    """spec.suspend changed since we last acted on it (or we have not seen this training yet):
    suspend the Job now, or queue it for a slot again (it resumes from its checkpoint)."""
    st = rt.state(key)
    if st.suspend_seen == spec.suspend:
        return
    st.suspend_seen = spec.suspend
    jname = jobs.training_job_name(training)
    job_suspended = bool((job.get("spec") or {}).get("suspend"))
    if spec.suspend and not job_suspended:
        async with rt.admission_lock:
            st.admitted = False
            job = await rt.api().patch_job(key[0], jname, {"spec": {"suspend": True}})
        logger.info(f"Suspended Job {jname}.")
    elif not spec.suspend and job_suspended and not spec.queue_name:
        await admit_waiting(rt, idx)  # unsuspends it when a slot is free (Kueue's Jobs: Kueue does)
    else:
        return
    await reconcile(rt, key, idx)


async def resync(rt: Runtime, idx: Indices, *, body: kopf.Body, namespace: str, name: str, logger: Any,
                 **_: Any) -> None:
    """The per-training timer for what no event may come back for: a Job creation an event could
    not finish (kopf does not retry event handlers), admission of a queued training while slots
    are free, and a catch-up reconcile (verdicts that come with time: an unschedulable pod past
    its grace, Kueue's words)."""
    key: Key = (namespace, name)
    training = idx.training(key)
    if training is None:
        return
    if idx.job(namespace, jobs.training_job_name(training)) is None:
        await sync_training(rt, idx, key, body, logger)
        return
    if rt.settings.max_concurrent > 0 and rt.current_status(key, training).get("phase") == Phase.QUEUED.value:
        await admit_waiting(rt, idx)
    await reconcile(rt, key, idx)
