"""Helpers shared by every test directory (tests/conftest.py puts this folder on sys.path).

`training()`: the one builder of GaussianSplatTraining manifests; `stored()`: the fields the API
server adds to one. `JobCreationKube`: what the operator's Job-creation path calls on its Kube
client, the Protocol that test fakes implement (tests/operator/test_handlers.py checks that the
real client's methods have the same signatures, so a fake cannot drift from it).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from splatops import names

NAMESPACE = "default"
CLAIM = "scenes"


def training(name: str = "fox", *, namespace: str | None = NAMESPACE, claim: str = CLAIM, path: str | None = None,
             **spec: Any) -> dict[str, Any]:
    """A GaussianSplatTraining as a user applies it: the scene on claim `claim` at `path` (default
    `scenes/<name>`), then any other spec fields by their API names (`maxSteps=300`).
    `namespace=None` leaves metadata.namespace out (the client's or kubectl's default applies)."""
    metadata: dict[str, Any] = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    scene = {"claimName": claim, "path": f"scenes/{name}" if path is None else path}
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": metadata,
            "spec": {"scene": scene, **copy.deepcopy(spec)}}


def stored(body: dict[str, Any], *, created: str = "2026-01-01T00:00:00Z", generation: int = 1) -> dict[str, Any]:
    """`body` as the API server returns it: with a uid, a generation and a creationTimestamp."""
    out = copy.deepcopy(body)
    out["metadata"].update(uid=f"uid-{out['metadata']['name']}", generation=generation, creationTimestamp=created)
    return out


class JobCreationKube(Protocol):
    """The Kube client calls of the operator's Job-creation path (scene check, create, adopt on 409)."""

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any]: ...

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]: ...

    async def read_job(self, namespace: str, name: str) -> dict[str, Any]: ...
