"""Cluster access for the CLI, the gateway and `splatops local`: kubeconfig loading as kubectl
does, and the shared API wrapper (`splatops.kubeapi.Kube`) with errors a user can act on.

`ClusterUnavailable` (no kubeconfig, connection refused, unauthorized; `Forbidden` for a 403),
`NotFound` (a resource that does not exist) and `Conflict` (it exists already).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.config_exception import ConfigException

from splatops.kubeapi import Kube, status_message

IN_CLUSTER_NAMESPACE_FILE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ClusterUnavailable(RuntimeError):
    """No cluster to talk to (no kubeconfig, unreachable, unauthorized)."""


class Forbidden(ClusterUnavailable):
    """403: RBAC (or an admission policy such as Pod Security) refused the request."""


class NotFound(LookupError):
    """A named object does not exist."""


class Conflict(RuntimeError):
    """The object already exists (or changed under us)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Which cluster and namespace: kubectl's --kubeconfig, --context and -n/--namespace."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def kubeconfig_path(target: Target) -> str | None:
    """The kubeconfig file kubectl would use (first of $KUBECONFIG's list), or None if none exists."""
    if target.kubeconfig:
        path = pathlib.Path(target.kubeconfig).expanduser()
        return str(path) if path.is_file() else None
    env = os.environ.get("KUBECONFIG")
    candidates = [p for p in env.split(os.pathsep) if p] if env else [str(pathlib.Path.home() / ".kube" / "config")]
    for path in candidates:
        if pathlib.Path(path).expanduser().is_file():
            return str(pathlib.Path(path).expanduser())
    return None


def context_namespace(contexts: list[dict[str, Any]], active: dict[str, Any] | None, wanted: str | None) -> str | None:
    """The namespace of the chosen context (kubectl's default namespace), None if it sets none."""
    chosen = active
    if wanted:
        chosen = next((c for c in contexts if c.get("name") == wanted), None)
        if chosen is None:
            raise ClusterUnavailable(
                f"context {wanted!r} not found in kubeconfig (have: {', '.join(c.get('name', '?') for c in contexts) or 'none'})"
            )
    return ((chosen or {}).get("context") or {}).get("namespace")


async def load(target: Target) -> tuple[client.Configuration, str]:
    """Load the client configuration and the namespace to use, as kubectl would."""
    cfg = client.Configuration()
    path = kubeconfig_path(target)
    if path is None:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
            ns = target.namespace
            if not ns and IN_CLUSTER_NAMESPACE_FILE.is_file():
                ns = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
            return cfg, ns or "default"
        raise ClusterUnavailable(
            "no Kubernetes cluster configured: no kubeconfig at "
            f"{target.kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}. Point --kubeconfig or "
            "KUBECONFIG at one, or run everything on this machine with `splatops local`."
        )
    try:
        contexts, active = kube_config.list_kube_config_contexts(config_file=path)
        namespace = target.namespace or context_namespace(contexts, active, target.context) or "default"
        await config.load_kube_config(config_file=path, context=target.context, client_configuration=cfg)
    except ConfigException as exc:
        raise ClusterUnavailable(f"invalid kubeconfig {path}: {exc}") from None
    return cfg, namespace


def _api_error(exc: ApiException, what: str) -> Exception:
    if exc.status == 404:
        return NotFound(f"{what} not found")
    if exc.status == 409:
        return Conflict(f"{what} already exists")
    detail = status_message(exc.body)
    if exc.status == 403:
        return Forbidden(f"not allowed to access {what} (403 {exc.reason}{': ' + detail if detail else ''}); "
                         "check your credentials and RBAC")
    if exc.status == 401:
        return ClusterUnavailable(f"not allowed to access {what} (401 {exc.reason}); check your credentials")
    body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    return RuntimeError(f"Kubernetes API error on {what}: {exc.status} {exc.reason}: {detail or body}")


class ClientKube(Kube):
    """The shared API wrapper, its calls' errors turned into the ones above."""

    @contextlib.asynccontextmanager
    async def _calling(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except ApiException as exc:
            raise _api_error(exc, what) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise ClusterUnavailable(
                f"cannot reach the Kubernetes API at {self.configuration.host}: {exc}. "
                "Is the cluster running? (`kubectl cluster-info`; for `splatops local` keep it running with --keep-running)"
            ) from None


@contextlib.asynccontextmanager
async def connect(target: Target) -> AsyncIterator[ClientKube]:
    cfg, namespace = await load(target)
    async with client.ApiClient(configuration=cfg) as api:
        yield ClientKube(api, namespace)
