"""The per-training progress timer: status.progress from the running trainer pod's log.

At most one progress write per training per `status_min_interval`, and none when the step has
not moved, so a thousand running trainings never flood the API server. (Creation retries,
admission and the catch-up reconcile are the `resync` timer's: training.resync.)
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from splatops import contract
from splatops.api.models import Phase
from splatops.controller import jobs, metrics, status
from splatops.controller.queue import TERMINAL
from splatops.controller.handlers.reconcile import event_body, reconcile
from splatops.controller.handlers.state import Indices, Key, Runtime


def active(status: Mapping[str, Any], **_: Any) -> bool:
    """The timers' filter: only trainings that can still change."""
    return status.get("phase") not in TERMINAL


async def poll(rt: Runtime, idx: Indices, *, body: kopf.Body, namespace: str, name: str, logger: Any,
               **_: Any) -> None:
    key: Key = (namespace, name)
    training = idx.training(key)
    if training is None:
        return
    current = rt.current_status(key, training)
    if current.get("phase") != Phase.RUNNING.value:
        return
    pod = status.running_pod(idx.job_pods(namespace, jobs.training_job_name(training)))
    now = time.time()
    if pod is None or not status.should_write_status(rt.state(key).last_progress_write, now, rt.settings.status_min_interval):
        return
    text = await log_tail(rt, namespace, pod["metadata"]["name"], logger)
    if text is None:
        return
    await tell_gpu_memory(rt, key, training, current, contract.last_memory_check(text))  # even when no step moved
    report = contract.last_report(text)
    marker = report.step if isinstance(report, contract.Progress) else report.message if report is not None else None
    if report is None or rt.state(key).last_progress_step == marker:
        return
    fields = status.report_status(report, now)
    # A merge patch merges objects: drop what the other kind of report set (a stage's `stage`, training's loss).
    previous = current.get("progress") or {}
    fields = {**{k: None for k in previous if k not in fields}, **fields}
    if not await rt.api().patch_status(namespace, name, {"progress": fields}):
        return  # deleted meanwhile
    rt.remember(key, {"progress": fields})
    st = rt.state(key)
    st.last_progress_write, st.last_progress_step = now, marker
    metrics.STATUS_WRITES.labels("progress").inc()
    staged = isinstance(report, contract.StageReport)
    if not staged:  # the training gauges count training steps, not a stage's images
        rt.metrics.record_progress(namespace, name, fields, now)
    if staged or current.get("reason") == status.REASON_RECONSTRUCTING:
        await reconcile(rt, key, idx)  # reason and message follow the stage now, not a poll later


async def tell_gpu_memory(rt: Runtime, key: Key, training: Mapping[str, Any], current: Mapping[str, Any],
                          check: contract.MemoryCheck | None) -> None:
    """The trainer's memory check says the run will probably not fit: status.gpuMemory and one
    Warning Event (once per check: the status then holds it)."""
    fields = status.gpu_memory_status(check, current.get("gpuMemory"))
    st = rt.state(key)
    if fields is None or fields == st.gpu_memory_told:  # told already; the index may lag behind our write
        return
    if not await rt.api().patch_status(key[0], key[1], {"gpuMemory": fields}):
        return
    rt.remember(key, {"gpuMemory": fields})
    st.gpu_memory_told = fields
    metrics.STATUS_WRITES.labels("progress").inc()
    kopf.event(event_body(training), type="Warning", reason=status.GPU_MEMORY_TIGHT,
               message=status.gpu_memory_warning(fields))


async def log_tail(rt: Runtime, namespace: str, pod: str, logger: Any) -> str | None:
    """The last lines of the trainer pod's log (None while the container has none)."""
    try:
        return await rt.api().log_tail(namespace, pod, rt.settings.log_tail_lines)
    except ApiException as exc:
        if exc.status in (400, 404):  # the container is not up yet or the pod just went away
            logger.debug(f"No log yet for {pod}: {exc.reason}")
            return None
        raise
