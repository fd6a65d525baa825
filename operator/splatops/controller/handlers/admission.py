"""The operator's own queue: at most `max_concurrent` trainings run, the rest wait suspended.

Kueue-managed Jobs (queueName) are Kueue's to admit and never count here.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from splatops import names
from splatops.api.layout import OutputKey
from splatops.controller import jobs, metrics, queue
from splatops.controller.handlers.reconcile import job_finished, reconcile
from splatops.controller.handlers.state import TERMINAL, Indices, Key, Runtime, latest
from splatops.controller.timeutil import parse_time


def slots(rt: Runtime, idx: Indices) -> tuple[int, list[queue.Waiting]]:
    """(running Jobs under the cap, trainings waiting for a slot) from the indices.

    The waiting include trainings not handled yet (no Job, no phase; `has_job=False`): kopf
    may run the creation handlers of trainings created together in any order, so the one handled
    first must not take a slot from one created before it. Their slots stay reserved for their
    own ensure_job.
    """
    running = 0
    seen: set[Key] = set()
    for job_key, store in idx.jobs.items():
        job = latest(store)
        owner = rt.job_owner.get(job_key)
        if job is None or owner is None:
            continue
        key = (job_key[0], owner)
        seen.add(key)
        if names.KUEUE_QUEUE_LABEL in (job.get("metadata", {}).get("labels") or {}):
            continue  # Kueue admits these, not us
        if job_finished(job):
            rt.admitted.discard(key)
            continue
        if (job.get("spec") or {}).get("suspend"):
            if key in rt.admitted:
                running += 1  # we just admitted it; the watch has not caught up
            continue
        rt.admitted.discard(key)
        running += 1
    running += len(rt.admitted - seen)  # created unsuspended, not yet seen
    waiting = []
    for key, store in idx.gsts.items():
        training = latest(store)
        if training is None or key in rt.admitted:
            continue
        spec = training.get("spec") or {}
        if spec.get("suspend") or spec.get("queueName"):
            continue
        phase = rt.current_status(key, training).get("phase")
        job = idx.job(key[0], jobs.training_job_name(training))
        if job is not None and not jobs.owned_by(job, training["metadata"].get("uid")):
            job = None
        if phase in TERMINAL or (job is None and phase is not None) or (job is not None and not (job.get("spec") or {}).get("suspend")):
            continue
        created = str(training.get("metadata", {}).get("creationTimestamp") or "")
        waiting.append(queue.Waiting(created, rt.first_seen(key), key[0], key[1], has_job=job is not None))
    return running, waiting


def admitted_metrics(training: Mapping[str, Any]) -> None:
    ns = training["metadata"]["namespace"]
    metrics.STARTED.labels(ns).inc()
    created = parse_time(training["metadata"].get("creationTimestamp"))
    if created is not None:
        metrics.QUEUE_WAIT.observe(max(0.0, time.time() - created))


async def admit_waiting(rt: Runtime, idx: Indices) -> None:
    """Unsuspend the oldest operator-queued Jobs while slots are free."""
    admitted: list[Key] = []
    async with rt.admission_lock:
        running, waiting = slots(rt, idx)
        for item in queue.admit(running, waiting, rt.settings.max_concurrent):
            if not item.has_job:
                continue  # its slot is reserved: its own ensure_job creates its Job unsuspended
            key = (item.namespace, item.name)
            training = idx.training(key)
            jname = jobs.training_job_name(training) if training is not None else jobs.job_name(item.name)
            await rt.api().patch_job(item.namespace, jname, {"spec": {"suspend": False}})
            rt.admitted.add(key)
            if training is not None:
                admitted_metrics(training)
            admitted.append(key)
    for key in admitted:
        await reconcile(rt, key, idx)


def output_writers(rt: Runtime, idx: Indices, key: Key, output: OutputKey) -> list[queue.Writer]:
    """Everyone else known to write `output`: trainings filed under it (holding: they have a Job;
    in line: not terminal, not suspended) and trainer pods that may still run (a training ended
    or deleted while its pod still terminates)."""
    found: list[queue.Writer] = []
    for other in sorted(rt.outputs.trainings.get(output, ()) - {key}):
        training = idx.training(other)
        if training is None or rt.current_status(other, training).get("phase") in TERMINAL:
            continue
        job = idx.job(other[0], jobs.training_job_name(training))
        if other in rt.job_created or (job is not None and jobs.owned_by(job, training["metadata"].get("uid"))):
            found.append(queue.Writer(other[1], holds=True))
        elif not (training.get("spec") or {}).get("suspend"):
            created = str(training["metadata"].get("creationTimestamp") or "")
            found.append(queue.Writer(other[1], holds=False, waiting=queue.Waiting(created, rt.first_seen(other), *other)))
    for (ns, pod), (owner, job) in sorted(rt.outputs.pods.get(output, {}).items()):
        if not any((p.get("metadata") or {}).get("name") == pod for p in idx.job_pods(ns, job)):
            continue  # gone from kopf's index (a deletion this process did not see): not a writer
        found.append(queue.Writer(f"{owner} (its pod {pod} is still running)", holds=True))
    return found
