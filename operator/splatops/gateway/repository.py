"""How the gateway reaches Kubernetes: a small interface with one implementation over the API.

Tests use the same implementation against the embedded emulator, or `InMemoryRepository`.
"""

from __future__ import annotations

import copy
import datetime
import itertools
from typing import Any, Protocol

from splatops.client import original
from splatops.client.kube import ClientKube, Conflict


class TrainingRepository(Protocol):
    async def runs(self, scene_id: str) -> list[dict[str, Any]]:
        """All trainings of a scene (any order)."""

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a training; raise `Conflict` if the name is taken."""

    async def ping(self) -> None:
        """Return when the API answers a read of trainings; raise `ClusterUnavailable` if not."""


def _of_scene(resources: list[dict[str, Any]], scene_id: str) -> list[dict[str, Any]]:
    # The label is a sanitized scene id (two ids may share it); the annotation is exact.
    return [r for r in resources if original.scene_id_of(r) == scene_id]


class KubeRepository:
    def __init__(self, kube: ClientKube) -> None:
        self.kube = kube

    async def runs(self, scene_id: str) -> list[dict[str, Any]]:
        found = await self.kube.list_trainings(f"{original.LABEL_SCENE}={original.dns_label(scene_id)}")
        return _of_scene(found, scene_id)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return await self.kube.create_training(manifest)

    async def ping(self) -> None:
        await self.kube.list_trainings(limit=1)  # what the gateway needs: the API and its RBAC


class InMemoryRepository:
    """A dict of resources; what the API server would return, without an operator."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self._rv = itertools.count(1)

    async def ping(self) -> None:
        return None

    async def runs(self, scene_id: str) -> list[dict[str, Any]]:
        return _of_scene([copy.deepcopy(r) for r in self.items.values()], scene_id)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        if name in self.items:
            raise Conflict(f"training {name!r} already exists")
        obj = copy.deepcopy(manifest)
        obj["metadata"]["creationTimestamp"] = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.items[name] = obj
        return copy.deepcopy(obj)
