"""The per-training timer: catch-up reconcile, queue admission, and progress from the pod log.

At most one progress write per training per `status_min_interval`, and none when the step has
not moved, so a thousand running trainings never flood the API server.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from splatops import contract
from splatops.api.models import Phase
from splatops.controller import jobs, metrics, status
from splatops.controller.handlers.admission import admit_waiting
from splatops.controller.handlers.reconcile import reconcile
from splatops.controller.handlers.state import TERMINAL, Indices, Key, Runtime
from splatops.controller.handlers.training import sync_training


def active(status: Mapping[str, Any], **_: Any) -> bool:
    """The timer's filter: only trainings that can still change."""
    return status.get("phase") not in TERMINAL


async def poll(rt: Runtime, idx: Indices, *, body: kopf.Body, namespace: str, name: str, logger: Any,
               **_: Any) -> None:
    key: Key = (namespace, name)
    training = idx.training(key)
    if training is None:
        return
    jname = jobs.training_job_name(training)
    if idx.job(namespace, jname) is None:
        await sync_training(rt, idx, key, body, logger)  # retries a creation an event could not finish
        return
    settings = rt.settings
    if settings.max_concurrent > 0 and rt.current_status(key, training).get("phase") == Phase.QUEUED.value:
        await admit_waiting(rt, idx)
    desired = await reconcile(rt, key, idx)
    if not desired or desired.get("phase") != Phase.RUNNING.value:
        return
    pod = status.running_pod(idx.job_pods(namespace, jname))
    if pod is None:
        return
    now = time.time()
    if not status.should_write_status(rt.last_progress_write.get(key), now, settings.status_min_interval):
        return
    try:
        text = await rt.api().log_tail(namespace, pod["metadata"]["name"], settings.log_tail_lines)
    except ApiException as exc:
        if exc.status in (400, 404):  # the container is not up yet or the pod just went away
            logger.debug(f"No log yet for {pod['metadata']['name']}: {exc.reason}")
            return
        raise
    progress = contract.last_progress(text)
    if progress is None or rt.last_progress_step.get(key) == progress.step:
        return
    fields = status.progress_status(progress, now)
    if not await rt.api().patch_status(namespace, name, {"progress": fields}):
        return  # deleted meanwhile
    rt.remember(key, {"progress": fields})
    rt.last_progress_write[key] = now
    rt.last_progress_step[key] = progress.step
    metrics.STATUS_WRITES.labels("progress").inc()
    rt.metrics.record_progress(namespace, name, fields, now)

