"""Run the operator: `splatops operator` calls `run()`.

Settings come from SPLATOPS_OPERATOR_* (validated before anything starts). kopf logs in from the
in-cluster service account or KUBECONFIG; the kubernetes_asyncio client used by the handlers is
configured from the same source (controller/kube.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from typing import Any

import kopf

from splatops import names
from splatops.controller import metrics
from splatops.controller.handlers import register
from splatops.controller.handlers.state import Runtime
from splatops.controller.settings import Settings, SettingsError

PERSISTENCE_PREFIX = "splatops.dev"
log = logging.getLogger("splatops.operator")
# Run every due handler of a cause in one processing cycle. kopf's default (`asap`) runs one
# handler per cycle and persists the progress of the rest in annotations. The training handler is
# level-triggered (an event handler: no lifecycle, no annotations), so this only matters for
# create/update/field handlers, should one ever be added.
LIFECYCLE = kopf.lifecycles.all_at_once
# Python's GC for the operator process: generation 0 collected every this many net allocations
# (Python's default: 700). See tune_gc().
GC_THRESHOLDS = (10_000, 10, 10)


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings derived from ours (pure; unit-tested)."""
    ks = kopf.OperatorSettings()
    ks.peering.name = settings.peering_name
    ks.peering.standalone = settings.standalone
    ks.peering.priority = settings.priority
    ks.peering.mandatory = settings.peering_mandatory
    ks.peering.lifetime = settings.peering_lifetime
    # Never go silent: the server ends each watch, the client gives up a bit later, and a watch
    # with no event at all for inactivity_timeout is restarted.
    ks.watching.server_timeout = settings.watch_server_timeout
    ks.watching.client_timeout = settings.watch_client_timeout
    ks.watching.connect_timeout = settings.watch_connect_timeout
    ks.watching.inactivity_timeout = settings.watch_inactivity_timeout
    ks.posting.level = logging.getLevelName(settings.event_level)
    # Server-side filtering: every handler and index of Jobs and pods wants only ours
    # (labels=MANAGED). Without a selector kopf lists and watches every Job and pod it can see
    # and drops the others itself, one event at a time. A future handler of other Jobs or pods
    # must widen these.
    managed = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
    ks.watching.label_selectors["batch", "v1", "jobs"] = managed
    ks.watching.label_selectors["", "v1", "pods"] = managed
    # Handler progress and the diff base live in our own annotations: status has a strict schema.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PERSISTENCE_PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PERSISTENCE_PREFIX, key="last-handled-configuration"
    )
    ks.persistence.finalizer = f"{PERSISTENCE_PREFIX}/finalizer"
    return ks


def namespaces_kwargs(settings: Settings) -> dict[str, Any]:
    if settings.namespaces:
        return {"namespaces": list(settings.namespaces), "clusterwide": False}
    return {"clusterwide": True}


async def operator(settings: Settings, *, ready_flag: Any = None, stop_flag: Any = None,
                   view: metrics.OperatorMetrics | None = None) -> None:
    """Run the operator in the current event loop until stop_flag (or a signal). `view` gets its
    per-training series (run() serves it on /metrics)."""
    registry = kopf.OperatorRegistry()
    register(registry, settings, Runtime(settings=settings, metrics=view or metrics.OperatorMetrics()))
    await kopf.operator(
        registry=registry,
        settings=kopf_settings(settings),
        lifecycle=LIFECYCLE,
        liveness_endpoint=settings.liveness_endpoint,
        ready_flag=ready_flag,
        stop_flag=stop_flag,
        **namespaces_kwargs(settings),
    )


def tune_gc(enabled: bool) -> bool:
    """Make the cyclic GC cheap for a process that holds thousands of resources' state.

    With Python's defaults, a burst of 500 creations triggered ~500 generation-0, ~50
    generation-1 and ~5 full collections (each full one ~130 ms, walking every import and every
    resource) in the operator: about a fifth of its CPU. Freezing what exists at startup
    (modules, classes: never garbage) takes it out of every collection, and the higher
    thresholds collect less often; the burst then spends ~0.35 s in the GC instead of ~1.2 s,
    for the same peak RSS. Only when run() owns the process (its main thread): an operator
    embedded in a test or another program leaves that process's GC alone.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


def run(settings: Settings | None = None, *, ready_flag: Any = None, stop_flag: Any = None) -> None:
    """Validate settings, serve metrics, run kopf until stopped. Blocks."""
    settings = settings or Settings.from_env()
    tune_gc(settings.gc_tuning)
    view = metrics.OperatorMetrics()
    # Per run, not per process: /metrics shows this run's trainings (run() may be called again,
    # or twice at once, in one test process), and the port is free again once it returns.
    server = metrics.serve(settings.metrics_port, view)
    log.info("splatops operator starting: %s", settings.model_dump())
    coro = operator(settings, ready_flag=ready_flag, stop_flag=stop_flag, view=view)
    try:
        asyncio.run(coro)
    except asyncio.CancelledError:
        pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


# In JSON lines, the key of the object a line is about ({"apiVersion", "kind", "name", "namespace", "uid"}).
LOG_REFKEY = "object"


def configure_logging(settings: Settings) -> None:
    """Print log lines as `kopf run` does, with kopf's own handler and formatters: the operator's
    INFO lines and kopf's per-object ones ("Handler 'training_event' failed temporarily: ...").
    Without it a process that never configured logging prints only WARNING and above, bare."""
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=settings.log_level == "DEBUG", quiet=settings.log_level == "WARNING",
                   log_format=log_format, log_prefix=settings.log_format != "json", log_refkey=LOG_REFKEY)


def main() -> int:
    """The process entry point (`splatops operator`, `python -m splatops.controller`): settings,
    logging, then the operator until SIGTERM. Invalid settings exit 2 naming each variable."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(settings)
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
