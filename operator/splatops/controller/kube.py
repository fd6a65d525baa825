"""kubernetes_asyncio access for the handlers: configured the way kopf logs in (in-cluster, else KUBECONFIG)."""

from __future__ import annotations

import json

import dataclasses
import os
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse
from kubernetes_asyncio.config.config_exception import ConfigException

from splatops import names
from splatops.controller import failures

MERGE_PATCH = "application/merge-patch+json"


async def raise_for_status(resp: Any) -> Any:
    """Raise ApiException for an error status, as the client does with preloaded content: with
    `_preload_content=False` kubernetes_asyncio returns every response, errors included (a 409,
    404 or 422 would otherwise read as a successful result). Shared by the CLI's client."""
    if not 200 <= resp.status <= 299:
        raise ApiException(http_resp=RESTResponse(resp, await resp.read()))
    return resp


KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


@dataclasses.dataclass
class Kube:
    api: client.ApiClient
    batch: client.BatchV1Api
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    async def close(self) -> None:
        await self.api.close()

    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        created = await raise_for_status(await self.batch.create_namespaced_job(namespace, job, _preload_content=False))
        return await created.json()

    async def read_job(self, namespace: str, name: str) -> dict[str, Any]:
        resp = await raise_for_status(await self.batch.read_namespaced_job(name, namespace, _preload_content=False))
        return await resp.json()

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any]:
        resp = await raise_for_status(await self.core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False))
        return await resp.json()

    async def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        resp = await raise_for_status(await self.batch.patch_namespaced_job(
            name, namespace, patch, _content_type=MERGE_PATCH, _preload_content=False))
        return await resp.json()

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job, its pods first (Foreground: the Job stays, marked deleting, until they are
        gone, so a replacement never shares the output directory with an old pod). Gone already: fine."""
        try:
            await raise_for_status(await self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Foreground", _preload_content=False))
        except ApiException as exc:
            if not failures.is_not_found(exc.status, exc.body):
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
            if failures.is_not_found(exc.status, exc.body):
                return False
            raise
        return True

    async def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        resp = await raise_for_status(await self.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}", _preload_content=False
        ))
        return list((await resp.json()).get("items") or [])

    async def pod_events(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        """Core v1 Events about one pod (Karpenter's Nominated among them)."""
        resp = await raise_for_status(await self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}", _preload_content=False
        ))
        items = json.loads(await resp.read()).get("items") or []
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == pod]

    async def kueue_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads for a Job (Kueue labels each with the Job's uid)."""
        resp = await raise_for_status(await self.custom.list_namespaced_custom_object(
            KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads",
            label_selector=f"{KUEUE_JOB_UID_LABEL}={job_uid}", _preload_content=False,
        ))
        return list(json.loads(await resp.read()).get("items") or [])

    async def log_tail(self, namespace: str, pod: str, lines: int) -> str:
        resp = await raise_for_status(await self.core.read_namespaced_pod_log(
            pod, namespace, container=names.TRAINER_CONTAINER, tail_lines=lines, _preload_content=False
        ))
        return await resp.text()


async def connect() -> Kube:
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except ConfigException:  # not in a pod: KUBECONFIG or ~/.kube/config, as kopf does
        # Read KUBECONFIG now: kubernetes_asyncio captures its default path at import time.
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    api = client.ApiClient(configuration=cfg)
    _without_env_lookups(api)
    return Kube(api=api, batch=client.BatchV1Api(api), core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api))


def _without_env_lookups(api: client.ApiClient) -> None:
    """Use the client's connection pool in a session that does not consult the environment.

    kubernetes_asyncio opens its aiohttp session with trust_env=True: aiohttp then reads ~/.netrc
    and the *_PROXY variables in a worker thread on every request (two thread round trips per
    call; measurable at hundreds of calls per second). kopf's own session does neither (its
    `settings.networking.trust_env` is off by default), and a proxy from the kubeconfig is still
    passed per request by kubernetes_asyncio (`configuration.proxy`).
    """
    rest = api.rest_client
    old = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=old.connector, trust_env=False, read_bufsize=2**21,  # as kubernetes_asyncio sets it
    )
    old.detach()  # the new session owns the connector now; the old one must not close it
