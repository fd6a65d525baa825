"""Handlers of the GaussianSplatTraining itself: create its one Job, follow spec.suspend, forget it on deletion."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from splatops.api.models import parse_spec
from splatops.controller import jobs, metrics, queue
from splatops.controller.handlers.admission import admit_waiting, admitted_metrics, slots
from splatops.controller.handlers.reconcile import fail_invalid, reconcile
from splatops.controller.handlers.state import TERMINAL, Indices, Key, Runtime, snapshot
from splatops.controller.timeutil import format_time


async def ensure_job(rt: Runtime, idx: Indices, *, body: kopf.Body, namespace: str, name: str, logger: Any,
                     **_: Any) -> None:
    """Validate, then create the one Job (suspended when it must queue); idempotent."""
    key: Key = (namespace, name)
    training = idx.training(key) or snapshot(body)
    if rt.current_status(key, training).get("phase") in TERMINAL:
        return
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        await fail_invalid(rt, key, training, detail)
        return
    jname = jobs.job_name(name)
    existing = idx.job(namespace, jname)
    queued = False
    if existing is None:
        max_concurrent = rt.settings.max_concurrent
        capped = max_concurrent > 0 and not (spec.suspend or spec.queue_name)
        others: list[queue.Waiting] = []
        # Only admission under a cap needs serialising; uncapped creates run concurrently.
        async with rt.admission_lock if capped else contextlib.nullcontext():
            suspend = bool(spec.suspend or spec.queue_name)
            if capped:
                running, waiting = slots(rt, idx)
                me = queue.Waiting(str(body["metadata"].get("creationTimestamp") or format_time(time.time())), namespace, name)
                admitted = queue.admit(running, [w for w in waiting if (w.namespace, w.name) != key] + [me], max_concurrent)
                suspend = queued = me not in admitted
                others = [w for w in admitted if w != me]
            manifest = jobs.build_job(body, rt.settings, suspend=suspend)
            existing = await create_or_adopt(rt, namespace, manifest, body["metadata"]["uid"], logger)
            if not (existing.get("spec") or {}).get("suspend"):
                rt.admitted.add(key)
                admitted_metrics(training)
                logger.info(f"Created Job {jname}.")
            else:
                why = "Kueue" if spec.queue_name else "suspend" if spec.suspend else "queued"
                logger.info(f"Created Job {jname} suspended ({why}).")
        if others:
            await admit_waiting(rt, idx)
    await reconcile(rt, key, idx, job=existing, queued=queued)


async def create_or_adopt(rt: Runtime, namespace: str, manifest: dict[str, Any], uid: str, logger: Any) -> dict[str, Any]:
    """Create the Job; a 409 means it exists: use it if it is ours, never make a second one."""
    jname = manifest["metadata"]["name"]
    try:
        return await rt.api().create_job(namespace, manifest)
    except ApiException as exc:
        if exc.status != 409:
            if exc.status in (400, 422):
                raise kopf.PermanentError(f"The API server rejected Job {jname}: {exc.reason} {exc.body}") from exc
            raise
    existing = await rt.api().read_job(namespace, jname)
    owners = [r.get("uid") for r in existing.get("metadata", {}).get("ownerReferences") or []]
    if uid not in owners:
        # A Job of a deleted namesake is still being garbage-collected: wait for it to go.
        raise kopf.TemporaryError(f"Job {jname} exists but belongs to another owner {owners}; waiting for its deletion.", delay=10)
    logger.info(f"Job {jname} already exists; adopting it (no second Job).")
    return existing


async def suspend_changed(rt: Runtime, idx: Indices, *, old: Any, new: Any, namespace: str, name: str, logger: Any,
                          **_: Any) -> None:
    """spec.suspend flipped: suspend the Job now, or queue it for a slot again (it resumes from its checkpoint)."""
    key: Key = (namespace, name)
    jname = jobs.job_name(name)
    job = idx.job(namespace, jname)
    training = idx.training(key)
    if old is None or job is None or training is None or rt.current_status(key, training).get("phase") in TERMINAL:
        return  # creation: ensure_job builds the Job with the right suspend already
    if new:
        async with rt.admission_lock:
            rt.admitted.discard(key)
            job = await rt.api().patch_job(namespace, jname, {"spec": {"suspend": True}})
        logger.info(f"Suspended Job {jname}.")
    elif not (training.get("spec") or {}).get("queueName"):
        await admit_waiting(rt, idx)
        job = None
    await reconcile(rt, key, idx, job=job)


def training_event(rt: Runtime, *, type: str | None, namespace: str, name: str, **_: Any) -> None:
    if type == "DELETED":  # the Job and pods go by garbage collection; the PVC is never touched
        rt.forget((namespace, name))
        metrics.forget_training(namespace, name)
