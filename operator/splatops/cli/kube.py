"""Cluster access for the CLI and the gateway: kubeconfig loading as kubectl does, and the few
API calls the user workflow needs (trainings, their pods and logs, the scene's claim).

Errors become exception types with messages a user can act on: `ClusterUnavailable` (no
kubeconfig, connection refused, unauthorized; `Forbidden` for a 403) and `NotFound` (a resource
that does not exist).

Calls made with `_preload_content=False` (plain dicts instead of the client's models) do not raise
on an error status in kubernetes_asyncio: the operator's `raise_for_status` turns such a response
into the client's ApiException, and from there into the same errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.config_exception import ConfigException

from splatops import names
from splatops.controller.kube import raise_for_status

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


def _status_message(body: Any) -> str | None:
    """The `message` of a Kubernetes Status body (None if the body is not one)."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        data = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return None
    message = data.get("message") if isinstance(data, dict) else None
    return str(message) if message else None


def _api_error(exc: ApiException, what: str) -> Exception:
    if exc.status == 404:
        return NotFound(f"{what} not found")
    if exc.status == 409:
        return Conflict(f"{what} already exists")
    detail = _status_message(exc.body)
    if exc.status == 403:
        return Forbidden(f"not allowed to access {what} (403 {exc.reason}{': ' + detail if detail else ''}); "
                         "check your credentials and RBAC")
    if exc.status == 401:
        return ClusterUnavailable(f"not allowed to access {what} (401 {exc.reason}); check your credentials")
    body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
    return RuntimeError(f"Kubernetes API error on {what}: {exc.status} {exc.reason}: {detail or body}")


def training_selector(uid: str) -> str:
    """Label selector of a training's trainer pods: by its uid, which no other training (a
    namesake, or one whose name hashes alike) shares (controller.jobs.child_labels)."""
    return f"{names.LABEL_TRAINING_UID}={uid},{names.LABEL_COMPONENT}={names.COMPONENT_TRAINER}"


class Kube:
    """A connected client for one namespace. Use `async with connect(target) as kube:`."""

    def __init__(self, api: client.ApiClient, namespace: str, cfg: client.Configuration) -> None:
        self.api = api
        self.namespace = namespace
        self.configuration = cfg
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

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

    # -- trainings -------------------------------------------------------------------------------

    def _gst(self) -> dict[str, str]:
        return {"group": names.GROUP, "version": names.VERSION, "namespace": self.namespace, "plural": names.PLURAL}

    async def create_training(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._calling(f"{names.KIND} {body['metadata']['name']!r}"):
            return await self.custom.create_namespaced_custom_object(body=body, **self._gst())

    async def get_training(self, name: str) -> dict[str, Any]:
        async with self._calling(f"{names.KIND} {name!r} in namespace {self.namespace!r}"):
            return await self.custom.get_namespaced_custom_object(name=name, **self._gst())

    async def list_trainings(self, label_selector: str | None = None, limit: int | None = None, *,
                             all_namespaces: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        if limit:
            kwargs["limit"] = limit
        if all_namespaces:
            async with self._calling(f"{names.PLURAL} in all namespaces"):
                result = await self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PLURAL, **kwargs)
        else:
            async with self._calling(f"{names.PLURAL} in namespace {self.namespace!r}"):
                result = await self.custom.list_namespaced_custom_object(**self._gst(), **kwargs)
        return list(result.get("items") or [])

    # -- pods and logs ---------------------------------------------------------------------------

    async def training_pods(self, training: dict[str, Any]) -> list[dict[str, Any]]:
        """The trainer pods of a training (not other pods labelled with it), oldest first."""
        meta = training["metadata"]
        async with self._calling(f"pods of {meta['name']!r}"):
            resp = await raise_for_status(await self.core.list_namespaced_pod(
                self.namespace, label_selector=training_selector(meta["uid"]), _preload_content=False
            ))
            pods = list((await resp.json()).get("items") or [])
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", int(p["metadata"].get("resourceVersion") or 0)))

    async def pod_log(self, pod: str, *, container: str | None = names.TRAINER_CONTAINER) -> str:
        async with self._calling(f"log of pod {pod!r}"):
            kwargs = {"container": container} if container else {}
            resp = await raise_for_status(
                await self.core.read_namespaced_pod_log(pod, self.namespace, _preload_content=False, **kwargs)
            )
            return await resp.text()

    async def follow_pod_log(self, pod: str, *, container: str | None = names.TRAINER_CONTAINER) -> AsyncIterator[bytes]:
        async with self._calling(f"log of pod {pod!r}"):
            kwargs = {"container": container} if container else {}
            # "true" as kubectl sends it: the client would send "True", which the API server
            # accepts but the embedded emulator of `splatops local` reads as not following.
            resp = await raise_for_status(await self.core.read_namespaced_pod_log(
                pod, self.namespace, follow="true", _preload_content=False, **kwargs
            ))
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

    async def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._calling(f"pod {body['metadata'].get('name') or body['metadata'].get('generateName')!r}"):
            resp = await raise_for_status(await self.core.create_namespaced_pod(self.namespace, body, _preload_content=False))
            return await resp.json()

    async def get_pod(self, name: str) -> dict[str, Any]:
        async with self._calling(f"pod {name!r}"):
            resp = await raise_for_status(await self.core.read_namespaced_pod(name, self.namespace, _preload_content=False))
            return await resp.json()

    async def delete_pod(self, name: str) -> None:
        async with self._calling(f"pod {name!r}"):
            await self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)

    # -- claims ----------------------------------------------------------------------------------

    async def get_claim(self, name: str) -> dict[str, Any]:
        """A PersistentVolumeClaim of the namespace (NotFound, Forbidden without RBAC to read it)."""
        async with self._calling(f"PersistentVolumeClaim {name!r} in namespace {self.namespace!r}"):
            resp = await raise_for_status(await self.core.read_namespaced_persistent_volume_claim(
                name, self.namespace, _preload_content=False
            ))
            return await resp.json()


@contextlib.asynccontextmanager
async def connect(target: Target) -> AsyncIterator[Kube]:
    cfg, namespace = await load(target)
    async with client.ApiClient(configuration=cfg) as api:
        yield Kube(api, namespace, cfg)
