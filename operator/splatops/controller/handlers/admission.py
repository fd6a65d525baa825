"""The operator's own queue: at most `max_concurrent` trainings run, the rest wait suspended.

Kueue-managed Jobs (queueName) are Kueue's to admit and never count here.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping

from splatops import names
from splatops.api.layout import OutputKey
from splatops.controller import jobs, metrics, queue
from splatops.controller.queue import TERMINAL
from splatops.controller.handlers.reconcile import job_finished, reconcile
from splatops.controller.handlers.state import Indices, Key, Runtime, latest
from splatops.controller.timeutil import format_time, parse_time


def slots(rt: Runtime, idx: Indices) -> queue.Slots:
    """queue.slots over kopf's indices (reads only: the caller settles what it reports)."""
    return queue.slots(slot_jobs(rt, idx), candidates(rt, idx), rt.admitted())


def slot_jobs(rt: Runtime, idx: Indices) -> Iterator[queue.SlotJob]:
    for job_key, store in idx.jobs.items():
        job = latest(store)
        owner = rt.job_owner.get(job_key)
        if job is None or owner is None:
            continue
        yield queue.SlotJob(
            (job_key[0], owner), suspended=bool((job.get("spec") or {}).get("suspend")), finished=job_finished(job),
            kueue=names.KUEUE_QUEUE_LABEL in ((job.get("metadata") or {}).get("labels") or {}),
        )


def candidates(rt: Runtime, idx: Indices) -> Iterator[queue.Candidate]:
    for key, store in idx.gsts.items():
        training = latest(store)
        if training is None:
            continue
        spec = rt.spec(key, training)
        job = idx.job(key[0], jobs.training_job_name(training))
        if job is not None and not jobs.owned_by(job, training["metadata"].get("uid")):
            job = None
        created = str(training.get("metadata", {}).get("creationTimestamp") or "")
        yield queue.Candidate(
            queue.Waiting(created, rt.first_seen(key), *key), phase=rt.current_status(key, training).get("phase"),
            held=spec is None or bool(spec.suspend or spec.queue_name),
            job_suspended=bool((job.get("spec") or {}).get("suspend")) if job is not None else None,
        )


def admit_new(rt: Runtime, idx: Indices, key: Key, training: Mapping[str, Any]) -> tuple[bool, list[queue.Waiting]]:
    """Whether the training's new Job must queue under the operator's cap, and the trainings with
    a Job admitted along with it (to unsuspend). Called under the admission lock."""
    counted = slots(rt, idx)
    rt.settle(counted.settled)
    me = place(rt, key, training)
    others = [w for w in counted.waiting if (w.namespace, w.name) != key]
    admitted = queue.admit(counted.running, others + [me], rt.settings.max_concurrent)
    return me not in admitted, [w for w in admitted if w != me and w.has_job]


def place(rt: Runtime, key: Key, training: Mapping[str, Any]) -> queue.Waiting:
    """The training's place in line: its creation time, then the order the operator saw it in."""
    created = str(training["metadata"].get("creationTimestamp") or format_time(time.time()))
    return queue.Waiting(created, rt.first_seen(key), *key)


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
        counted = slots(rt, idx)
        rt.settle(counted.settled)
        for item in queue.admit(counted.running, counted.waiting, rt.settings.max_concurrent):
            if not item.has_job:
                continue  # its slot is reserved: its own ensure_job creates its Job unsuspended
            key = (item.namespace, item.name)
            training = idx.training(key)
            jname = jobs.training_job_name(training) if training is not None else jobs.job_name(item.name)
            await rt.api().patch_job(item.namespace, jname, {"spec": {"suspend": False}})
            rt.state(key).admitted = True
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
        spec = rt.spec(other, training)  # valid: only a valid spec files a training under a directory
        if rt.state(other).job_created or (job is not None and jobs.owned_by(job, training["metadata"].get("uid"))):
            found.append(queue.Writer(other[1], holds=True))
        elif spec is not None and not spec.suspend:
            created = str(training["metadata"].get("creationTimestamp") or "")
            found.append(queue.Writer(other[1], holds=False, waiting=queue.Waiting(created, rt.first_seen(other), *other)))
    for (ns, pod), (owner, job) in sorted(rt.outputs.pods.get(output, {}).items()):
        if not any((p.get("metadata") or {}).get("name") == pod for p in idx.job_pods(ns, job)):
            continue  # gone from kopf's index (a deletion this process did not see): not a writer
        found.append(queue.Writer(f"{owner} (its pod {pod} is still running)", holds=True))
    return found
