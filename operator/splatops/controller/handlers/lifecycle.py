"""Operator start and stop: credentials for kopf, and our own API client's lifetime."""

from __future__ import annotations

from typing import Any

import kopf

from splatops.controller import kube
from splatops.controller.handlers.state import Runtime


def login(**kwargs: Any) -> Any:
    """In-cluster service account first, else KUBECONFIG / ~/.kube/config (a fresh registry has no default)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def connect(rt: Runtime, **_: Any) -> None:
    if rt.kube is None:
        rt.kube = await kube.connect()


async def disconnect(rt: Runtime, **_: Any) -> None:
    if rt.kube is not None:
        await rt.kube.close()
        rt.kube = None
