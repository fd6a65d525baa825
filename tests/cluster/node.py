"""A fake GPU node for the real control plane: scheduler and kubelet for one namespace.

The kubelet part acts as the node itself (client certificate `system:node:gpu-a10g-0` in
`system:nodes`), so the API server's Node authorizer decides what it may do; binding is done
with the admin's identity, as the scheduler's.

It registers a Node (`nvidia.com/gpu` capacity, the A10G labels and taint), binds the namespace's
pending pods that fit it through `pods/binding`, runs each bound pod's trainer container as a
local process with the project's executor mapping (`splatops.local.executor.process_spec`: env,
the PVC mount mapped to a directory, the termination-message file), and writes the pod's status
through `pods/status` as a kubelet does. Deleting a pod (suspend, eviction, garbage collection)
stops its process (SIGTERM, then SIGKILL after the grace period), records the exit and confirms
the deletion. Pod logs are served on the kubelet port (`/containerLogs/...`), which the API
server proxies for `kubectl logs` and the operator's progress reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import signal
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import aiohttp.web

from splatops.local import executor as x

NODE = "gpu-a10g-0"
NODE_LABELS = {
    "kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
    "node.kubernetes.io/instance-type": "g5.xlarge", "nvidia.com/gpu.product": "NVIDIA-A10G",
    "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "23028",
}
NODE_TAINTS = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1", "ephemeral-storage": "100Gi"}
MERGE = {"Content-Type": "application/merge-patch+json"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_manifest(kubelet_port: int) -> dict[str, Any]:
    t = now()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": dict(NODE_LABELS)},
        "spec": {"taints": NODE_TAINTS},
        "status": {
            "capacity": CAPACITY, "allocatable": CAPACITY,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "fake kubelet (tests/cluster/node.py)",
                            "lastHeartbeatTime": t, "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],  # never a name to resolve
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        },
    }


def _expression_holds(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise ValueError(f"node affinity operator {op} is not supported by the fake scheduler")


def unfit_reason(pod: Mapping[str, Any]) -> str | None:
    """Why the node cannot take the pod (nodeSelector, required node affinity, taints), or None."""
    spec = pod["spec"]
    if any(NODE_LABELS.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(all(_expression_holds(e, NODE_LABELS) for e in t.get("matchExpressions") or [])
                         for t in terms):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    for taint in NODE_TAINTS:
        if not any(t.get("key") == taint["key"] and t.get("operator") == "Exists"
                   or t.get("key") == taint["key"] and t.get("value") == taint["value"]
                   for t in spec.get("tolerations") or []):
            return f"0/1 nodes are available: 1 node(s) had untolerated taint {{{taint['key']}: {taint['value']}}}."
    return None


@dataclasses.dataclass
class _Proc:
    process: asyncio.subprocess.Process
    task: asyncio.Task[None]
    started: str
    stopping: bool = False


class FakeNode:
    """Scheduler + kubelet for `namespace`. `images` maps a container image to the argv that
    stands for it (anything else runs the trainer's entrypoint from this environment)."""

    def __init__(self, api_url: str, ssl_ctx: ssl.SSLContext, scheduler_ssl: ssl.SSLContext,
                 serving: tuple[pathlib.Path, pathlib.Path],
                 namespace: str, claims: Mapping[str, pathlib.Path], workdir: pathlib.Path, *,
                 env_overrides: Mapping[str, str] | None = None, images: Mapping[str, list[str]] | None = None,
                 grace_period: float = 20.0) -> None:
        self.url, self.ssl, self.scheduler_ssl, self.serving = api_url, ssl_ctx, scheduler_ssl, serving
        self.namespace, self.claims, self.workdir = namespace, dict(claims), workdir
        self.env_overrides = dict(env_overrides or {})
        self.images = dict(images or {})
        self.grace_period = grace_period
        self.logs: dict[str, list[str]] = {}
        self.procs: dict[str, _Proc] = {}
        self.started: set[str] = set()  # pod uids whose container was started (never twice)
        self.unschedulable: set[str] = set()
        self.errors: list[str] = []
        self._session: aiohttp.ClientSession | None = None  # as the node (the Node authorizer)
        self._scheduler: aiohttp.ClientSession | None = None  # binding is the scheduler's
        self._runner: aiohttp.web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl))
        self._scheduler = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.scheduler_ssl))
        port = await self._serve_kubelet()
        node = node_manifest(port)
        await self.request("POST", "/api/v1/nodes", node)
        await self.request("PATCH", f"/api/v1/nodes/{NODE}/status", {"status": node["status"]}, headers=MERGE)
        self._watch = asyncio.create_task(self._watch_pods(), name="fake-node-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for proc in list(self.procs.values()):
            proc.stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
        await asyncio.gather(*(p.task for p in self.procs.values()), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        for session in (self._session, self._scheduler):
            if session is not None:
                await session.close()

    async def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201),
                      headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
                      session: aiohttp.ClientSession | None = None) -> dict:
        session = session or self._session
        assert session is not None
        async with session.request(method, self.url + path, json=body, headers=headers, params=params) as resp:
            data = await resp.json(content_type=None) if resp.content_length != 0 else {}
            if resp.status not in ok:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data or {}

    # -- the kubelet's log endpoint ----------------------------------------------------------------

    async def _serve_kubelet(self) -> int:
        app = aiohttp.web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._container_logs)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.serving[0]), str(self.serving[1]))
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _container_logs(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        pod = request.match_info["pod"]
        lines = self.logs.get(pod)
        if lines is None:
            return aiohttp.web.Response(status=404, text=f"container of pod {pod} is not running here")
        tail = request.query.get("tailLines")
        chosen = lines[-int(tail):] if tail else list(lines)
        if tail == "0":
            chosen = []
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for line in chosen:
            await resp.write(f"{line}\n".encode())
        if request.query.get("follow") in ("true", "1"):
            sent = len(lines)
            while pod in self.procs or sent < len(lines):
                for line in lines[sent:]:
                    await resp.write(f"{line}\n".encode())
                sent = len(lines)
                await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp

    # -- watching pods -----------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        # One watch of the namespace's pods, as the scheduler (a node may only read its own).
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        assert self._scheduler is not None
        while True:
            try:
                listing = await self.request("GET", path, session=self._scheduler)
                for pod in listing.get("items") or []:
                    await self._on_pod("ADDED", pod)
                params = {"watch": "1", "resourceVersion": listing["metadata"]["resourceVersion"]}
                async with self._scheduler.get(self.url + path, params=params,
                                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                    async for raw in resp.content:
                        event = json.loads(raw)
                        if event["type"] == "ERROR":
                            break  # e.g. 410 Gone: list again
                        await self._on_pod(event["type"], event["object"])
            except Exception as exc:  # noqa: BLE001 - recorded (tests show node errors), then retried
                self.errors.append(f"watch: {exc!r}")
                await asyncio.sleep(0.5)

    async def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        name, uid = meta["name"], meta["uid"]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        try:
            if kind == "DELETED":
                if name in self.procs and not self.procs[name].stopping:
                    asyncio.create_task(self._stop(name))
                return
            if meta.get("deletionTimestamp"):
                if name in self.procs:
                    if not self.procs[name].stopping:
                        asyncio.create_task(self._stop(name))
                elif spec.get("nodeName") == NODE:
                    await self._confirm_deletion(name, phase, uid)
                return
            if not spec.get("nodeName"):
                await self._schedule(pod)
            elif spec["nodeName"] == NODE and phase == "Pending" and uid not in self.started:
                self.started.add(uid)
                await self._run(pod)
        except Exception as exc:  # noqa: BLE001 - one pod's trouble must not stop the node
            self.errors.append(f"{name}: {exc!r}")

    async def _schedule(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        reason = unfit_reason(pod)
        if reason is None:
            await self.request("POST", f"/api/v1/namespaces/{self.namespace}/pods/{name}/binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}, session=self._scheduler)
        elif pod["metadata"]["uid"] not in self.unschedulable:
            self.unschedulable.add(pod["metadata"]["uid"])
            await self._patch_status(name, {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": reason, "lastTransitionTime": now()}]})

    async def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        await self.request("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
                           {"status": status}, headers=MERGE, ok=(200, 404))

    async def _confirm_deletion(self, name: str, phase: str, uid: str) -> None:
        """The kubelet's last word on a deleted pod: its final status, then delete with grace 0."""
        if phase in ("Pending", "Running"):
            await self._patch_status(name, {"phase": "Failed"})
        await self.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                           {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                            "preconditions": {"uid": uid}}, ok=(200, 404, 409))

    # -- running a container -----------------------------------------------------------------------

    async def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        if container.get("image") in self.images and not container.get("command"):
            pod = json.loads(json.dumps(pod))
            pod["spec"]["containers"][0]["command"] = self.images[container["image"]]
        spec = x.process_spec(pod, self.claims, self.workdir, env_overrides=self.env_overrides)
        spec.termination_log.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            *spec.argv, env=spec.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        t = now()
        self.logs[name] = []
        self.procs[name] = _Proc(process, asyncio.create_task(self._supervise(pod, process, spec, t)), t)
        await self._patch_status(name, {
            "phase": "Running", "hostIP": "127.0.0.1", "startTime": t,
            "conditions": self._conditions(True, t),
            "containerStatuses": [self._container_status(container, {"running": {"startedAt": t}}, True)]})

    @staticmethod
    def _conditions(ready: bool, t: str) -> list[dict[str, Any]]:
        status = "True" if ready else "False"
        return [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": t},
                {"type": "Ready", "status": status, "lastTransitionTime": t}]

    @staticmethod
    def _container_status(container: Mapping[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                "ready": ready, "restartCount": 0, "started": "running" in state, "state": state}

    async def _supervise(self, pod: dict[str, Any], process: asyncio.subprocess.Process,
                         spec: x.ProcessSpec, started: str) -> None:
        name = pod["metadata"]["name"]
        assert process.stdout is not None
        while raw := await process.stdout.readline():
            self.logs[name].append(raw.decode(errors="replace").rstrip("\n"))
        code = x.exit_code_of(await process.wait())
        message = x.termination_message(spec.termination_log, code, self.logs[name][-x.FALLBACK_LOG_LINES:])
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": started, "finishedAt": now()}
        if message:
            term["message"] = message
        t = now()
        container = pod["spec"]["containers"][0]
        # Conditions are kept as they are (a merge patch would replace the list, dropping a
        # DisruptionTarget the API server added on eviction): only Ready flips.
        current = await self.request("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}", ok=(200, 404))
        conditions = [c if c["type"] not in ("Ready", "ContainersReady") else {**c, "status": "False",
                      "lastTransitionTime": t} for c in (current.get("status") or {}).get("conditions") or []]
        await self._patch_status(name, {
            "phase": "Succeeded" if code == 0 else "Failed", "conditions": conditions,
            "containerStatuses": [self._container_status(container, {"terminated": term}, False)]})
        proc = self.procs.pop(name, None)
        if proc is not None and proc.stopping and current:
            await self._confirm_deletion(name, "Failed", pod["metadata"]["uid"])

    async def _stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.stopping:
            return
        proc.stopping = True
        await x.stop_process_group(proc.process, proc.task, self.grace_period)
