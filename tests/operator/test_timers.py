"""The two per-training timers, one job each: `resync` retries the Job creation (and admission,
and the catch-up reconcile); `progress` only reads the trainer's log into status.progress."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest
from op_fixtures import training

from splatops.controller.handlers import progress, register
from splatops.controller.handlers import training as training_handlers
from splatops.controller.handlers.state import Indices, Runtime
from splatops.controller.settings import Settings

KEY = ("default", "fox")
LOG = logging.getLogger("test")


class CreatingKube:
    """The calls of a Job creation: the scene PVC exists, the Job is created, the status written."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patched: list[dict[str, Any]] = []

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace}}

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        self.created.append(job)
        return job

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        self.patched.append(patch)
        return True


def without_job() -> tuple[Runtime, Indices, CreatingKube, dict[str, Any]]:
    rt = Runtime(settings=Settings())
    kube = rt.kube = CreatingKube()  # type: ignore[assignment]
    body = training()
    idx = Indices(gsts={KEY: [body]}, jobs={}, pods={})  # type: ignore[arg-type]
    return rt, idx, kube, body  # type: ignore[return-value]


async def test_the_progress_timer_never_creates_a_job() -> None:
    rt, idx, kube, body = without_job()
    await progress.poll(rt, idx, body=kopf.Body(body), namespace=KEY[0], name=KEY[1], logger=LOG)
    assert kube.created == [] and kube.patched == []


async def test_the_resync_timer_creates_the_missing_job(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []  # kopf posts Events only inside a running operator
    monkeypatch.setattr(kopf, "event", lambda *_, reason, **__: events.append(reason))
    rt, idx, kube, body = without_job()
    await training_handlers.resync(rt, idx, body=kopf.Body(body), namespace=KEY[0], name=KEY[1], logger=LOG)
    assert [j["metadata"]["name"] for j in kube.created] == ["gst-fox"]
    assert kube.patched[-1]["phase"] == "Pending" and events == ["Pending"] and rt.trainings[KEY].job_created


def test_both_timers_are_registered_without_a_finalizer() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, Settings(standalone=True))
    timers = {h.id: h for h in registry._spawning.get_all_handlers() if h.id in ("resync", "progress")}
    assert sorted(timers) == ["progress", "resync"]
    assert all(h.requires_finalizer is False for h in timers.values())
