"""Run the operator: `splatops operator` calls `run()`.

Settings come from SPLATOPS_OPERATOR_* (validated before anything starts). kopf logs in from the
in-cluster service account or KUBECONFIG; the kubernetes_asyncio client used by the handlers is
configured from the same source (controller/kube.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from splatops.controller import metrics
from splatops.controller.handlers import register
from splatops.controller.settings import Settings

PERSISTENCE_PREFIX = "splatops.dev"
log = logging.getLogger("splatops.operator")


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings derived from ours (pure; unit-tested)."""
    ks = kopf.OperatorSettings()
    ks.peering.name = settings.peering_name
    ks.peering.standalone = settings.standalone
    ks.peering.priority = settings.priority
    ks.peering.mandatory = settings.peering_mandatory
    # Never go silent: the server ends each watch, the client gives up a bit later, and a watch
    # with no event at all for inactivity_timeout is restarted.
    ks.watching.server_timeout = settings.watch_server_timeout
    ks.watching.client_timeout = settings.watch_client_timeout
    ks.watching.connect_timeout = settings.watch_connect_timeout
    ks.watching.inactivity_timeout = settings.watch_inactivity_timeout
    ks.posting.level = logging.getLevelName(settings.event_level)
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


async def operator(settings: Settings, *, ready_flag: Any = None, stop_flag: Any = None) -> None:
    """Run the operator in the current event loop until stop_flag (or a signal)."""
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    await kopf.operator(
        registry=registry,
        settings=kopf_settings(settings),
        liveness_endpoint=settings.liveness_endpoint,
        ready_flag=ready_flag,
        stop_flag=stop_flag,
        **namespaces_kwargs(settings),
    )


_metrics_started = threading.Lock()
_metrics_ports: set[int] = set()


def start_metrics(port: int) -> None:
    """Start the /metrics server once per port per process (run() may be called again in tests)."""
    with _metrics_started:
        if port and port not in _metrics_ports:
            metrics.serve(port)
            _metrics_ports.add(port)


def run(settings: Settings | None = None, *, ready_flag: Any = None, stop_flag: Any = None) -> None:
    """Validate settings, serve metrics, run kopf until stopped. Blocks."""
    settings = settings or Settings.from_env()
    start_metrics(settings.metrics_port)
    log.info("splatops operator starting: %s", settings.model_dump())
    coro = operator(settings, ready_flag=ready_flag, stop_flag=stop_flag)
    try:
        asyncio.run(coro)
    except asyncio.CancelledError:
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run()


if __name__ == "__main__":
    main()
