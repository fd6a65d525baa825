"""Register every kopf handler for one operator run, bound to its settings and runtime state.

The handlers live in small modules as plain functions of (runtime, indices, kopf's keywords);
this module only says which event calls which, under which id (ids are kopf's progress keys on
the resources: never rename one).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Awaitable, Callable

import kopf

from splatops.controller import metrics
from splatops.controller.handlers import activity, children, lifecycle, progress, training
from splatops.controller.handlers.state import GST, GST_INDEX, JOB_INDEX, MANAGED, POD_INDEX, Indices, Runtime
from splatops.controller.settings import Settings


def _bound(rt: Runtime, handler_id: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """kopf calls handlers with keywords only: pass ours the runtime and the indices too, and count
    their exceptions in splatops_reconcile_errors_total before kopf retries them."""

    metrics.RECONCILE_ERRORS.labels(handler_id)  # a 0 series from the start: rate() sees the first error

    @functools.wraps(fn)  # kopf follows __wrapped__ to see that this is a coroutine function
    async def handler(**kwargs: Any) -> Any:
        try:
            return await fn(rt, Indices.of(kwargs), **kwargs)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(handler_id).inc()
            raise

    return handler


def register(registry: kopf.OperatorRegistry, settings: Settings, rt: Runtime | None = None) -> Runtime:
    """Attach all handlers to `registry`; returns the runtime state they share."""
    rt = rt or Runtime(settings=settings)
    on: dict[str, Any] = dict(registry=registry)

    # Indices first: kopf fills them before any handler runs.
    kopf.index(*GST, id=GST_INDEX, **on)(functools.partial(children.gst_index, rt))
    kopf.index("batch", "v1", "jobs", labels=MANAGED, id=JOB_INDEX, **on)(functools.partial(children.job_index, rt))
    kopf.index("", "v1", "pods", labels=MANAGED, id=POD_INDEX, **on)(functools.partial(children.pod_index, rt))

    kopf.on.login(id="login", **on)(lifecycle.login)
    kopf.on.startup(id="connect", **on)(functools.partial(lifecycle.connect, rt))
    kopf.on.cleanup(id="disconnect", **on)(functools.partial(lifecycle.disconnect, rt))

    # Whether kopf peering lets this replica act (see activity.py): for the metrics only.
    kopf.on.startup(id="activity_start", **on)(functools.partial(activity.started, rt))
    kopf.on.cleanup(id="activity_stop", **on)(functools.partial(activity.stopping, rt))
    plural = activity.peering_plural(settings)
    if plural is not None:
        kopf.daemon(group="kopf.dev", version="v1", plural=plural, id="peering",
                    when=functools.partial(activity.is_ours, settings), **on)(functools.partial(activity.peering_daemon, rt))
        without_finalizer(registry, "peering")

    # Level-triggered (see training.py): no create/resume/field handlers, so no kopf annotations.
    kopf.on.event(*GST, id="training_event", **on)(_bound(rt, "training_event", training.training_event))

    kopf.on.event("batch", "v1", "jobs", labels=MANAGED, id="job_event", **on)(_bound(rt, "job_event", children.job_event))
    kopf.on.event("", "v1", "pods", labels=MANAGED, id="pod_event", **on)(_bound(rt, "pod_event", children.pod_event))

    # Two timers per training, one job each: creation retries, admission and the catch-up
    # reconcile (resync); status.progress from the trainer's log (progress).
    for timer_id, fn in (("resync", training.resync), ("progress", progress.poll)):
        kopf.timer(*GST, interval=settings.progress_interval, initial_delay=settings.progress_interval,
                   when=progress.active, id=timer_id, **on)(_bound(rt, timer_id, fn))
        without_finalizer(registry, timer_id)
    return rt


def without_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """kopf gives every daemon and timer a finalizer, to stop it before the object goes. Ours need
    none: the timers only read and write status, and nothing must be cleaned up on
    deletion (owner references do that), so deleting a training never waits for a running
    operator (Argo CD prunes at once) and creation skips a patch round trip; the peering daemon
    must never block the deletion of kopf's peering object (the chart's hook re-creates it).
    kopf stops either when it sees the deletion event.
    """
    # kopf private API (registry._spawning._handlers): pinned kopf==1.45.2 in pyproject.toml
    handlers = registry._spawning._handlers  # no public API to opt a daemon or timer out of its finalizer
    found = [i for i, handler in enumerate(handlers) if handler.id == handler_id]
    if not found:  # e.g. kopf suffixes the id of a handler with a field filter
        raise LookupError(f"no daemon or timer with id {handler_id!r}: {[h.id for h in handlers]}")
    for i in found:
        handlers[i] = dataclasses.replace(handlers[i], requires_finalizer=False)
