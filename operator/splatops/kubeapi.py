"""The one wrapper over kubernetes_asyncio, shared by the operator and the clients (CLI, gateway,
`splatops local`): the API calls they make, as plain dicts, and how an error response reads.

It sits below both sides: the operator (`splatops.controller`) and the clients
(`splatops.client`) each import it, never each other. How to log in differs (the operator as kopf
does, in `controller.kube`; a user as kubectl does, in `client.kube`), and so do the errors: here a
failed call raises the client library's ApiException; `client.kube.ClientKube` turns those into
errors a user can act on, through the `_calling` hook.

Every call passes `_preload_content=False` (plain dicts instead of the client's models), with which
kubernetes_asyncio returns error responses instead of raising: `raise_for_status` raises for them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from splatops import names
from splatops.api.pods import trainer_selector

MERGE_PATCH = "application/merge-patch+json"
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


async def raise_for_status(resp: Any) -> Any:
    """Raise ApiException for an error status, as the client does with preloaded content: with
    `_preload_content=False` kubernetes_asyncio returns every response, errors included (a 409,
    404 or 422 would otherwise read as a successful result)."""
    if not 200 <= resp.status <= 299:
        raise ApiException(http_resp=RESTResponse(resp, await resp.read()))
    return resp


def api_status(body: Any) -> Mapping[str, Any]:
    """The Kubernetes Status object of an API error response body ({} if it is not one)."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    return body if isinstance(body, Mapping) and body.get("kind") == "Status" else {}


def status_message(body: Any) -> str | None:
    """What the API server said in an error response (its Status message; None without one)."""
    return str(api_status(body).get("message") or "").strip() or None


def is_not_found(code: int | None, body: Any) -> bool:
    """The API server's definitive "no such object" (404 with a Status of reason NotFound).

    Any other 404 (an API that does not serve the resource at all, e.g. an emulator without
    PersistentVolumeClaims) says nothing about the object, and callers treat it as unknown.
    """
    return code == 404 and api_status(body).get("reason") == "NotFound"


async def _json(resp: Any) -> Any:
    return json.loads(await (await raise_for_status(resp)).read())


class Kube:
    """A connected API client; `namespace` is the one the namespace-less calls use."""

    def __init__(self, api: client.ApiClient, namespace: str = "default") -> None:
        self.api = api
        self.namespace = namespace
        self.configuration = api.configuration
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def in_namespace(self, namespace: str) -> Kube:
        """The same connection for another namespace."""
        return self if namespace == self.namespace else type(self)(self.api, namespace)

    async def close(self) -> None:
        await self.api.close()

    @contextlib.asynccontextmanager
    async def _calling(self, what: str) -> AsyncIterator[None]:
        """Around each call a user makes: a subclass maps errors to its own (`what` names the object)."""
        yield

    # -- the operator's calls: Jobs, their pods and events, Kueue, the training's status ----------

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        return await _json(await self.batch.create_namespaced_job(namespace, job, _preload_content=False))

    async def read_job(self, namespace: str, name: str) -> dict[str, Any]:
        return await _json(await self.batch.read_namespaced_job(name, namespace, _preload_content=False))

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any]:
        return await _json(await self.core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False))

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await _json(await self.batch.patch_namespaced_job(
            name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False))

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job, its pods first (Foreground: the Job stays, marked deleting, until they are
        gone, so a replacement never shares the output directory with an old pod). Gone already: fine."""
        try:
            await raise_for_status(await self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Foreground", _preload_content=False))
        except ApiException as exc:
            if not is_not_found(exc.status, exc.body):
                raise

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge `status` into the training's status; False when the training is gone (deleted
        after the index showed it: its DELETED event forgets it, nothing is left to write)."""
        try:
            await raise_for_status(await self.custom.patch_namespaced_custom_object_status(
                names.GROUP, names.VERSION, namespace, names.PLURAL, name, {"status": status},
                _content_type=MERGE_PATCH, _preload_content=False,
            ))
        except ApiException as exc:
            if is_not_found(exc.status, exc.body):
                return False
            raise
        return True

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = await _json(await self.core.list_namespaced_pod(namespace, label_selector=label_selector,
                                                                _preload_content=False))
        return list(found.get("items") or [])

    async def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        return await self.list_pods(namespace, f"batch.kubernetes.io/job-name={job_name}")

    async def events_about(self, namespace: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events about one object (of `kind`, if given), e.g. Karpenter's Nominated on a pod."""
        selector = f"involvedObject.name={name}" if kind is None else f"involvedObject.kind={kind},involvedObject.name={name}"
        found = await _json(await self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False))
        return [e for e in found.get("items") or [] if (e.get("involvedObject") or {}).get("name") == name]

    async def pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        return await self.events_about(namespace, pod, "Pod")

    async def kueue_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads for a Job (Kueue labels each with the Job's uid)."""
        found = await _json(await self.custom.list_namespaced_custom_object(
            KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
            label_selector=f"{KUEUE_JOB_UID_LABEL}={job_uid}", _preload_content=False,
        ))
        return list(found.get("items") or [])

    async def log_tail(self, namespace: str, pod: str, lines: int) -> str:
        resp = await raise_for_status(await self.core.read_namespaced_pod_log(
            pod, namespace, container=names.TRAINER_CONTAINER, tail_lines=lines, _preload_content=False
        ))
        return await resp.text()

    # -- a user's calls, in `self.namespace`: trainings, their pods and logs, claims --------------

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

    async def training_pods(self, training: dict[str, Any]) -> list[dict[str, Any]]:
        """The trainer pods of a training (not other pods labelled with it), oldest first."""
        meta = training["metadata"]
        async with self._calling(f"pods of {meta['name']!r}"):
            pods = await self.list_pods(self.namespace, trainer_selector(meta["uid"]))
        return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", int(p["metadata"].get("resourceVersion") or 0)))

    async def events(self, name: str) -> list[dict[str, Any]]:
        """Events about the object `name` (any kind) in the namespace."""
        async with self._calling(f"events of {name!r}"):
            return await self.events_about(self.namespace, name)

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
            return await _json(await self.core.create_namespaced_pod(self.namespace, body, _preload_content=False))

    async def get_pod(self, name: str) -> dict[str, Any]:
        async with self._calling(f"pod {name!r}"):
            return await _json(await self.core.read_namespaced_pod(name, self.namespace, _preload_content=False))

    async def delete_pod(self, name: str) -> None:
        async with self._calling(f"pod {name!r}"):
            await self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)

    async def get_claim(self, name: str) -> dict[str, Any]:
        """A PersistentVolumeClaim of the namespace."""
        async with self._calling(f"PersistentVolumeClaim {name!r} in namespace {self.namespace!r}"):
            return await self.read_pvc(self.namespace, name)
