"""Builders of Kubernetes objects for the operator's unit tests (plain dicts, as the API returns)."""

from __future__ import annotations

import json
from typing import Any

import testkit

from splatops import contract, names

T0 = "2026-01-01T00:00:00Z"
T0_EPOCH = 1767225600.0


def training(name: str = "fox", **spec: Any) -> dict[str, Any]:
    """testkit's manifest as stored, applied by Argo CD (its labels and tracking annotation, which
    the Job must not copy). The scene path stays scenes/fox whatever the name."""
    body = testkit.stored(testkit.training(name, path="scenes/fox", **spec), created=T0)
    body["metadata"]["labels"] = {"app.kubernetes.io/instance": "argo-app", "argocd.argoproj.io/instance": "app"}
    body["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "app:splatops.dev/GaussianSplatTraining:default/fox"}
    return body


def job(*conditions: tuple[str, str], suspend: bool = False, active: int = 0, failed: int = 0,
        succeeded: int = 0, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "gst-fox", "namespace": "default", "labels": labels or {}},
        "spec": {"suspend": suspend},
        "status": {
            "active": active, "failed": failed, "succeeded": succeeded, "startTime": T0,
            "conditions": [{"type": t, "status": "True", "reason": r, "message": f"{t} because {r}"} for t, r in conditions],
        },
    }


def pod(phase: str = "Pending", *, running: bool = False, terminated: dict[str, Any] | None = None,
        waiting: tuple[str, str] | None = None, conditions: list[dict[str, Any]] | None = None,
        name: str = "gst-fox-abcde", created: str = T0) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if running:
        state = {"running": {"startedAt": created}}
    elif terminated is not None:
        state = {"terminated": terminated}
    elif waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    return {
        "metadata": {"name": name, "uid": name, "creationTimestamp": created},
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [{"name": names.TRAINER_CONTAINER, "state": state}] if state else [],
        },
    }


def terminated(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    return {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"), "message": message}


def result_msg(**fields: Any) -> str:
    return contract.Result(**fields).to_json()


def failed_msg(reason: contract.Reason, error: str) -> str:
    return json.dumps({"status": "failed", "reason": reason.value, "error": error})


def job_for(resource: dict[str, Any], settings: Any, **kwargs: Any) -> dict[str, Any]:
    """jobs.build_job of a whole resource: its spec parsed as the operator's handler parses it."""
    from splatops.api.models import parse_spec
    from splatops.controller import jobs

    return jobs.build_job(resource, parse_spec(resource["spec"]), settings, **kwargs)
