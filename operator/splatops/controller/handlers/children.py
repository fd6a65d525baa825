"""The operator's view of the cluster: kopf indices of trainings, their Jobs and pods, and the
watch events of the children that move a training's status."""

from __future__ import annotations

from typing import Any, Mapping

import kopf

from splatops import names
from splatops.controller import jobs
from splatops.controller.handlers import training
from splatops.controller.handlers.admission import admit_waiting
from splatops.controller.handlers.reconcile import job_finished, reconcile
from splatops.controller.handlers.state import JOB_NAME_LABELS, Indices, Key, Runtime, snapshot


async def gst_index(rt: Runtime, *, namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    """Index a training; note the order it was first seen in (FCFS) and drop the written-status
    cache the body now shows.

    This and the other index functions are async on purpose: kopf runs sync handlers in a thread
    pool (a thread hop per event: ~25 % of the operator's CPU in a burst of creations), and on the
    event loop nothing runs between this and kopf storing the snapshot, so no reconciler races it."""
    key = (namespace, name)
    snap = snapshot(body)
    rt.first_seen(key)
    rt.parsed(key, snap)  # the one parse of its spec (per generation); files it under its output directory
    rt.observed(key, snap.get("status"))
    rt.metrics.set_phase(namespace, name, (snap.get("status") or {}).get("phase"))
    return {key: snap}


async def job_index(rt: Runtime, *, namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == names.KIND:
            rt.job_owner[(namespace, name)] = ref.get("name")
    return {(namespace, name): snapshot(body)}


async def pod_index(rt: Runtime, *, namespace: str, name: str, labels: Mapping[str, str], body: kopf.Body,
                    **_: Any) -> dict[Key, Any]:
    job = _job_of(labels)
    owner = (labels.get(names.LABEL_TRAINING, "?"), job or "")
    rt.outputs.pod((namespace, name), jobs.pod_output(body), owner, _may_run(body))
    return {(namespace, job): snapshot(body)} if job is not None else {}


def _may_run(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's trainer may still write (not Succeeded or Failed yet)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


async def job_event(rt: Runtime, idx: Indices, *, type: str | None, body: kopf.Body, namespace: str, name: str,
                    **_: Any) -> None:
    owner = rt.job_owner.get((namespace, name))
    if owner is not None:
        await reconcile(rt, (namespace, owner), idx)
    if type == "DELETED":
        rt.job_owner.pop((namespace, name), None)
        st = rt.trainings.get((namespace, owner)) if owner is not None else None
        if st is not None:
            st.job_created = False  # an unfinished training gets it back (timer)
    if rt.settings.max_concurrent > 0 and (type == "DELETED" or job_finished(body) or (body.get("spec") or {}).get("suspend")):
        await admit_waiting(rt, idx)  # a slot may have freed
    if type == "DELETED" or job_finished(body):
        await training.retry_blocked(rt, idx)  # an output directory may have freed


async def pod_event(rt: Runtime, idx: Indices, *, type: str | None, labels: Mapping[str, str], namespace: str,
                    name: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        rt.outputs.pod((namespace, name), None, ("", ""), False)
    job = _job_of(labels)
    owner = rt.job_owner.get((namespace, job)) if job else None
    if owner is None:
        owner = labels.get(names.LABEL_TRAINING)
    if owner is not None:
        await reconcile(rt, (namespace, owner), idx)
    if rt.outputs.blocked and (type == "DELETED" or not _may_run(body)):
        await training.retry_blocked(rt, idx)  # its trainer stopped writing an output directory


def _job_of(labels: Mapping[str, str]) -> str | None:
    return next((labels[k] for k in JOB_NAME_LABELS if labels.get(k)), None)
