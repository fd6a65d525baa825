"""An embedded Kubernetes API for tests and `splatops local`: kmock's emulator, made real enough.

kmock's `KubernetesEmulator` stores objects and streams watch events, but treats every write as a
plain dict merge. The operator (and kopf) rely on more of the API server's behaviour, so this
subclass adds, and only adds: uid/resourceVersion/creationTimestamp/generation, the status
subresource, `generateName`, labelSelector filtering, 409 on duplicates and stale resourceVersions,
finalizers, ownerReference garbage collection, CRD defaulting, and pod logs (`pods/log`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import datetime
import functools
import itertools
import os
import pathlib
import re
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch  # kmock's own dependency, for its JSON-patch errors
import kmock
import yaml

from splatops import names

# --- Resources served -----------------------------------------------------------------------------

CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
TRAINING_RESOURCE = f"{names.GROUP}/{names.VERSION}/{names.PLURAL}"
JOB_RESOURCE = "batch/v1/jobs"
POD_RESOURCE = "v1/pods"
NAMESPACE_RESOURCE = "v1/namespaces"
EVENT_RESOURCE = "v1/events"
KUEUE_WORKLOAD_RESOURCE = "kueue.x-k8s.io/v1beta1/workloads"

_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces(/[^/]+)?/?$")
_EXEC_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")
EXEC_PROTOCOL = "v4.channel.k8s.io"
_NS_ALIAS = "splatops-namespaces-alias"
_DIRECT_READS = frozenset({kmock.action.LIST, kmock.action.FETCH})
_VERBS = ("list", "watch", "get", "create", "patch", "update", "delete")
RESOURCES: dict[str, dict[str, Any]] = {
    TRAINING_RESOURCE: dict(
        kind=names.KIND, singular=names.SINGULAR, namespaced=True, subresources={"status"},
        shortnames=set(names.SHORT_NAMES), categories=set(names.CATEGORIES),
    ),
    JOB_RESOURCE: dict(kind="Job", singular="job", namespaced=True, subresources={"status"}),
    POD_RESOURCE: dict(kind="Pod", singular="pod", namespaced=True, subresources={"status", "log"}),
    NAMESPACE_RESOURCE: dict(kind="Namespace", singular="namespace", namespaced=False),
    EVENT_RESOURCE: dict(kind="Event", singular="event", namespaced=True),
    "events.k8s.io/v1/events": dict(kind="Event", singular="event", namespaced=True),
    CRD_RESOURCE: dict(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False,
        subresources={"status"},
    ),
    "coordination.k8s.io/v1/leases": dict(kind="Lease", singular="lease", namespaced=True),
    # Kueue's Workloads, for the status of trainings waiting for its admission.
    KUEUE_WORKLOAD_RESOURCE: dict(kind="Workload", singular="workload", namespaced=True, subresources={"status"}),
    # kopf's peering (two replicas); harmless when the operator runs standalone.
    "kopf.dev/v1/kopfpeerings": dict(kind="KopfPeering", singular="kopfpeering", namespaced=True),
    "kopf.dev/v1/clusterkopfpeerings": dict(
        kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False,
    ),
}

# Top-level keys that never count as a spec change (generation bump), as in the API server.
_NON_SPEC_KEYS = frozenset({"metadata", "status", "apiVersion", "kind"})
_RV_KEY = "resourceVersion"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Pure helpers (tested on their own) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One term of a label selector: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`."""

    key: str
    op: str  # "in" | "notin" | "exists" | "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # notin: absent keys match, as in k8s


_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """Parse the `labelSelector` query parameter (the string form kubectl and clients send)."""
    if not selector:
        return []
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(selector):  # split on commas outside parentheses
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    result: list[Requirement] = []
    for term in (t.strip() for t in terms):
        if not term:
            continue
        if m := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            result.append(Requirement(m.group(1), m.group(2), values))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            result.append(Requirement(key.strip(), "notin", frozenset({value.strip()})))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            result.append(Requirement(key.strip(), "in", frozenset({value.strip()})))
        elif term.startswith("!"):
            result.append(Requirement(term[1:].strip(), "!exists"))
        else:
            result.append(Requirement(term, "exists"))
    return result


def selector_matches(requirements: Iterable[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


def apply_schema_defaults(schema: Mapping[str, Any] | None, value: Any) -> Any:
    """Fill `default`s of a structural OpenAPI schema into `value`, as the API server does.

    Defaults apply to absent properties of objects that exist; arrays default item by item.
    """
    if not schema or not isinstance(value, (dict, list)):
        return value
    if isinstance(value, list):
        items = schema.get("items")
        return [apply_schema_defaults(items, item) for item in value] if items else value
    result = dict(value)
    for key, prop in (schema.get("properties") or {}).items():
        if key not in result and "default" in prop:
            result[key] = copy.deepcopy(prop["default"])
        if key in result:
            result[key] = apply_schema_defaults(prop, result[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(result) - set(schema.get("properties") or {}):
            result[key] = apply_schema_defaults(extra, result[key])
    return result


def spec_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a write changed anything the API server counts for `metadata.generation`."""
    keys = (set(old) | set(new)) - _NON_SPEC_KEYS
    return any(old.get(k) != new.get(k) for k in keys)


def owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {ref["uid"] for ref in refs if isinstance(ref, dict) and "uid" in ref}


def _patch(base: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """Merge patch (None deletes a key) for dicts, RFC 6902 JSON patch for lists."""
    obj = kmock.Object(copy.deepcopy(dict(base)))
    obj.patch(patch)  # kmock's API-like patch: merge for dicts, RFC 6902 for lists
    return dict(obj.raw)


# --- The emulator ---------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class SplatopsEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server semantics the operator and kopf depend on.

    In-process callers (the simulated kubelet, the local executor) use `create`, `patch`,
    `delete` and `append_log`; they emit the same watch events as HTTP writes.
    """

    # (namespace, pod name) -> log lines (without trailing newlines), served by pods/{name}/log.
    pod_logs: dict[tuple[str, str], list[str]] = attrs.field(
        factory=lambda: collections.defaultdict(list)
    )
    # Counts of served requests by (method, plural, subresource): for benchmarks and tests.
    request_counts: collections.Counter[tuple[str, str, str]] = attrs.field(
        factory=collections.Counter
    )
    # Versions kept per object; kmock keeps every version otherwise (unbounded in long runs).
    history_limit: int | None = 50
    # Requests kept for assertions (kmock keeps all; matching cost grows with them).
    request_limit: int | None = 200
    # In-process observers of every watch event: callback(resource key, event type, object).
    listeners: list[Callable[[str, str, dict[str, Any]], None]] = attrs.field(factory=list)
    # claim -> local directory: serve pods/exec (websocket, v4 channels) for pods mounting one of
    # these claims, running the command as a local process on the directory (podexec). None:
    # no exec endpoint, as before.
    exec_volumes: dict[str, str] | None = None
    _rv: Iterable[int] = attrs.field(factory=lambda: itertools.count(1))
    _builtin_reactions: int = attrs.field(default=0, init=False)
    _log_changed: asyncio.Condition | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(verbs=set(_VERBS), **info)
        # kmock private API (_payloads): pinned kmock==0.8 in pyproject.toml
        self._builtin_reactions = len(self._payloads)

    # -- request routing ---------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if self.exec_volumes is not None and (m := _EXEC_PATH.match(raw_request.path)):
            return await self._serve_exec(raw_request, m.group(1), m.group(2))
        # kmock reads /api/v1/namespaces/{x} as "namespace x" and fails on the namespaces resource
        # itself: route it under an alias plural and restore the real resource in _handle.
        if m := _NAMESPACES_PATH.match(raw_request.path):
            alias = raw_request.rel_url.with_path(f"/api/v1/{_NS_ALIAS}{m.group(1) or ''}")
            raw_request = raw_request.clone(rel_url=alias.with_query(raw_request.rel_url.query))
        return await super().__call__(raw_request)

    # kmock private API (KubernetesScaffold._handle, _requests, _render_error, _serve_*): pinned kmock==0.8 in pyproject.toml
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural == _NS_ALIAS:
            fixed = attrs.evolve(request, resource=kmock.resource(NAMESPACE_RESOURCE))
            # kmock matches reactions by the identity of the recorded request: record the fix.
            self._requests[:] = [fixed if r is request else r for r in self._requests]
            request = fixed
        if self.request_limit and len(self._requests) > self.request_limit:
            # kmock scans every recorded request per reaction: bound it for long runs.
            del self._requests[: len(self._requests) - self.request_limit]
        if request.resource is None:
            return await kmock.KubernetesScaffold._handle(self, request)
        if bad := _non_integer_param(request.params):
            # The API server parses these as Go integers: `timeoutSeconds=300.0` is a 400.
            return await self._render_error(kmock.KubernetesError(
                400, "BadRequest", f'strconv.ParseInt: parsing "{bad}": invalid syntax'))
        res = request.resource
        method = str(getattr(request.method, "value", request.method))
        self.request_counts[(method, res.plural or "", request.subresource or "")] += 1
        try:
            if request.action == kmock.action.CREATE:
                data = dict(request.data or {})
                if request.namespace:
                    data.setdefault("metadata", {})["namespace"] = request.namespace
                obj = await self.create(res, data)
                return aiohttp.web.json_response(obj, status=201)
            if request.name is not None and request.action == kmock.action.UPDATE:
                obj = await self.patch(res, request.namespace, request.name, request.data,
                                       subresource=request.subresource)
                return aiohttp.web.json_response(obj)
            if request.name is not None and method == "PUT":
                obj = await self.replace(res, request.namespace, request.name, request.data or {},
                                         subresource=request.subresource)
                return aiohttp.web.json_response(obj)
            if request.name is not None and request.action == kmock.action.DELETE:
                obj = await self.delete(res, request.namespace, request.name)
                return aiohttp.web.json_response(obj)
            if (len(self._payloads) == self._builtin_reactions and request.action in _DIRECT_READS
                    and res.plural):
                # No reaction added by a test: serve directly. kmock's routing matches every
                # reaction against every recorded request, which costs ~100 ms at a few hundred.
                if request.action == kmock.action.LIST:
                    return aiohttp.web.json_response(await self._serve_list(request))
                if not _query_bool(request.params.get("follow")):
                    payload = await self._serve_fetch(request)
                    if isinstance(payload, bytes):
                        return aiohttp.web.Response(body=payload, content_type="text/plain")
                    return aiohttp.web.json_response(payload)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        # Watches, followed logs and intercepted reads go through kmock's routing.
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _serve_exec(self, request: aiohttp.web.BaseRequest, namespace: str, name: str) -> aiohttp.web.StreamResponse:
        """pods/{name}/exec as a kubelet streams it: stdin from channel 0, then stdout (1), stderr
        (2) and the final metav1.Status (3); the stream closes when the command ends."""
        from splatops.local.podexec import claim_dir, exec_local

        pod = self.read(POD_RESOURCE, namespace, name)
        volume = claim_dir(pod, self.exec_volumes or {}) if pod is not None else None
        if volume is None:
            return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                                               "reason": "NotFound", "message": f'pods "{name}" not found'}, status=404)
        ws = aiohttp.web.WebSocketResponse(protocols=(EXEC_PROTOCOL,))
        await ws.prepare(request)

        async def stdin() -> AsyncIterator[bytes]:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    yield msg.data[1:]

        wants_stdin = _query_bool(request.query.get("stdin"))
        async for frame in exec_local(volume, request.query.getall("command", []), stdin() if wants_stdin else None):
            await ws.send_bytes(frame)
        await ws.close()
        return ws

    # -- in-process API (also used by the HTTP handlers) ---------------------------------------

    def read(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        raw = self._peek(resource, namespace, name)
        return copy.deepcopy(raw) if raw is not None else None

    def _peek(self, resource: Any, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        """The stored object itself, not a copy: for reads that never let it out or change it."""
        key = (self._res(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def list_objects(self, resource: Any, namespace: str | None = None,
                     label_selector: str | None = None) -> list[dict[str, Any]]:
        res, reqs = self._res(resource), parse_label_selector(label_selector)
        return [
            copy.deepcopy(obj.raw)
            for (r, ns, _), obj in self.objects.items()
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
            and selector_matches(reqs, obj.raw)
        ]

    async def create(self, resource: Any, body: Mapping[str, Any]) -> dict[str, Any]:
        res = self._res(resource)
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise kmock.KubernetesError(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not RESOURCES.get(self._key(res), {}).get("namespaced", True):
            meta.pop("namespace", None)
        key = (res, meta.get("namespace"), meta["name"])
        async with self._lock:
            if key in self.objects and not self.objects[key].deleted:
                raise kmock.KubernetesError(
                    409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": res.plural},
                )
            if "status" in obj and self._has_status(res):
                del obj["status"]  # the status subresource ignores status on create
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            meta[_RV_KEY] = str(next(self._rv))
            obj = self._defaulted(res, obj)
            if key in self.objects:
                self.objects[key].create(obj)
            else:
                self.objects[key] = obj
            await self._emit(res, "ADDED", obj)
        return copy.deepcopy(obj)

    async def patch(self, resource: Any, namespace: str | None, name: str, patch: Any,
                    *, subresource: str | None = None) -> dict[str, Any]:
        return await self._write(resource, namespace, name, patch, subresource, replace=False)

    async def replace(self, resource: Any, namespace: str | None, name: str,
                      body: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        return await self._write(resource, namespace, name, body, subresource, replace=True)

    async def delete(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any]:
        res = self._res(resource)
        async with self._lock:
            key, old = self._existing(res, namespace, name)
            meta = old.get("metadata", {})
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    new = _patch(old, {"metadata": {"deletionTimestamp": _now(),
                                                    _RV_KEY: str(next(self._rv))}})
                    self._store(key, new)
                    await self._emit(res, "MODIFIED", new)
                    return new
                return old
            await self._remove(key, old)
        return old

    async def append_log(self, namespace: str, pod: str, *lines: str) -> None:
        """Add lines to a pod's log (what the container printed)."""
        for line in lines:
            self.pod_logs[(namespace, pod)].extend(line.splitlines() or [""])
        async with self._log_condition():
            self._log_condition().notify_all()

    # -- reads: labelSelector, list resourceVersion, pod logs ----------------------------------

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        result = dict(await super()._serve_list(request))  # type: ignore[arg-type]
        reqs = parse_label_selector(request.params.get("labelSelector"))
        result["items"] = [o for o in result["items"] if selector_matches(reqs, o)]
        result["metadata"] = {_RV_KEY: str(self._current_rv())}
        info = RESOURCES.get(self._key(request.resource))
        if info:
            result["kind"] = f"{info['kind']}List"
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        reqs = parse_label_selector(request.params.get("labelSelector"))
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not selector_matches(reqs, event.get("object") or {}):
                continue
            yield event

    # kmock private API (_serve_fetch override): pinned kmock==0.8 in pyproject.toml
    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        if request.subresource == "log" and self._key(request.resource) == POD_RESOURCE:
            if self.read(POD_RESOURCE, request.namespace, request.name or "") is None:
                raise kmock.KubernetesObjectNotFoundError()
            if _query_bool(request.params.get("follow")):
                return self._follow_log(request.namespace or "", request.name or "", request.params)
            return self._log_text(request.namespace or "", request.name or "", request.params)
        return await super()._serve_fetch(request)

    def _log_text(self, namespace: str, pod: str, params: Mapping[str, str]) -> bytes:
        lines = self.pod_logs.get((namespace, pod), [])
        tail = params.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail):] if int(tail) > 0 else []
        return "".join(line + "\n" for line in lines).encode()

    async def _follow_log(self, namespace: str, pod: str,
                          params: Mapping[str, str]) -> AsyncIterator[bytes]:
        yield self._log_text(namespace, pod, params)
        sent = len(self.pod_logs.get((namespace, pod), []))
        while True:
            pod_obj = self.read(POD_RESOURCE, namespace, pod)
            lines = self.pod_logs.get((namespace, pod), [])
            if len(lines) > sent:
                yield "".join(line + "\n" for line in lines[sent:]).encode()
                sent = len(lines)
            elif pod_obj is None or pod_obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            else:
                cond = self._log_condition()
                async with cond:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cond.wait(), timeout=0.5)  # also re-checks the phase

    # -- internals --------------------------------------------------------------------------

    async def _write(self, resource: Any, namespace: str | None, name: str, body: Any,
                     subresource: str | None, *, replace: bool) -> dict[str, Any]:
        res = self._res(resource)
        if subresource not in (None, "status"):
            raise kmock.KubernetesError(405, "MethodNotAllowed", f"cannot write {subresource}")
        async with self._lock:
            key, old = self._existing(res, namespace, name)
            if isinstance(body, dict):
                sent_rv = (body.get("metadata") or {}).get(_RV_KEY)
                if sent_rv is not None and sent_rv != old["metadata"][_RV_KEY]:
                    raise kmock.KubernetesError(
                        409, "Conflict",
                        f'Operation cannot be fulfilled on {res.plural} "{name}": the object has '
                        "been modified; please apply your changes to the latest version",
                    )
            try:
                new = dict(body) if replace else _patch(old, body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError) as exc:
                # As the API server: an inapplicable patch is the client's error (422), not ours.
                raise kmock.KubernetesError(422, "Invalid", f"cannot apply the patch {body!r}: {exc}") from exc
            if subresource == "status":
                # Only status changes through /status.
                new = {**old, "status": new.get("status")} if "status" in new else dict(old)
                if new.get("status") is None:
                    new.pop("status", None)
            elif self._has_status(res):
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = old["status"]
            meta = dict(new.get("metadata") or {})
            for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation",
                          "deletionTimestamp"):
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
                else:
                    meta.pop(fixed, None)
            new["metadata"] = meta
            new = self._defaulted(res, new)
            meta = new["metadata"]  # defaulting copies the object: bump the stored one's metadata
            if spec_changed(old, new):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if new == old:
                return copy.deepcopy(old)  # a no-op write keeps resourceVersion, like the server
            meta[_RV_KEY] = str(next(self._rv))
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                await self._remove(key, new)
                return copy.deepcopy(new)
            self._store(key, new)
            await self._emit(res, "MODIFIED", new)
        return copy.deepcopy(new)

    async def _remove(self, key: Any, last: dict[str, Any]) -> None:
        """Delete an object for good (lock held), then collect its orphaned dependents."""
        res = key[0]
        self.objects[key].delete()
        await self._emit(res, "DELETED", last)
        if self._key(res) == POD_RESOURCE:
            self.pod_logs.pop((key[1], key[2]), None)
        gone = last["metadata"]["uid"]
        for dep_key, dep in list(self.objects.items()):
            if dep.deleted or gone not in owner_uids(dep.raw):
                continue
            alive = {o.raw["metadata"].get("uid") for o in self.objects.values() if not o.deleted}
            if owner_uids(dep.raw) & alive:
                continue  # another owner still holds it
            dep_raw = dep.raw
            if dep_raw["metadata"].get("finalizers"):
                if not dep_raw["metadata"].get("deletionTimestamp"):
                    new = _patch(dep_raw, {"metadata": {"deletionTimestamp": _now(),
                                                        _RV_KEY: str(next(self._rv))}})
                    self._store(dep_key, new)
                    await self._emit(dep_key[0], "MODIFIED", new)
            else:
                await self._remove(dep_key, dep_raw)

    def _store(self, key: Any, new: dict[str, Any]) -> None:
        obj = self.objects[key]
        obj.history.append(new)
        if self.history_limit and len(obj.history) > self.history_limit:
            del obj.history[: len(obj.history) - self.history_limit]

    async def _emit(self, res: Any, kind: str, obj: dict[str, Any]) -> None:
        await self._buses[res].put({"type": kind, "object": copy.deepcopy(obj)})
        for listener in list(self.listeners):
            listener(self._key(res), kind, copy.deepcopy(obj))

    def _existing(self, res: Any, namespace: str | None, name: str) -> tuple[Any, dict[str, Any]]:
        if not RESOURCES.get(self._key(res), {}).get("namespaced", True):
            namespace = None
        key = (res, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesError(404, "NotFound", f'{res.plural} "{name}" not found',
                                        {"name": name, "kind": res.plural})
        return key, copy.deepcopy(self.objects[key].raw)

    def _defaulted(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        """Apply the defaults of a served CRD's schema (when the CRD object is in the cluster)."""
        # Not `read`: a deep copy of the whole CRD on every write was an eighth of the emulator's CPU.
        crd = self._peek(CRD_RESOURCE, None, f"{res.plural}.{res.group}") if res.group else None
        if not crd:
            return obj
        for version in crd.get("spec", {}).get("versions", []):
            if version.get("name") == res.version:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                return apply_schema_defaults(schema, obj)
        return obj

    def _has_status(self, res: Any) -> bool:
        return "status" in RESOURCES.get(self._key(res), {}).get("subresources", ())

    def _current_rv(self) -> int:
        latest = 0
        for obj in self.objects.values():
            if not obj.deleted:
                latest = max(latest, int(obj.raw.get("metadata", {}).get(_RV_KEY, 0)))
        return latest

    def _log_condition(self) -> asyncio.Condition:
        if self._log_changed is None:
            self._log_changed = asyncio.Condition()
        return self._log_changed

    @staticmethod
    def _res(resource: Any) -> kmock.resource:
        return resource if isinstance(resource, kmock.resource) else kmock.resource(resource)

    @staticmethod
    def _key(res: Any) -> str:
        if res is None:
            return ""
        return f"{res.group}/{res.version}/{res.plural}" if res.group else f"{res.version}/{res.plural}"


# --- Server + kubeconfig -------------------------------------------------------------------------


@dataclasses.dataclass
class LocalCluster:
    """A running emulator: its URL and the kubeconfig that points at it."""

    emulator: SplatopsEmulator
    url: str
    kubeconfig: pathlib.Path
    namespace: str


def kubeconfig_dict(url: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "splatops-local", "cluster": {"server": url}}],
        "users": [{"name": "splatops-local", "user": {"token": "splatops-local"}}],
        "contexts": [{"name": "splatops-local", "context": {
            "cluster": "splatops-local", "user": "splatops-local", "namespace": namespace}}],
        "current-context": "splatops-local",
    }


def write_kubeconfig(path: pathlib.Path, url: str, namespace: str = "default") -> pathlib.Path:
    """Write a kubeconfig atomically (temp file + rename), readable only by the user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(kubeconfig_dict(url, namespace), fh, sort_keys=False)
    os.replace(tmp, path)
    return path


def load_crd(path: pathlib.Path | None = None) -> dict[str, Any] | None:
    """The CRD manifest from `crds/` (None if it has not been generated yet)."""
    if path is None:
        root = pathlib.Path(__file__).resolve().parents[3]
        path = root / "crds" / f"{names.CRD_NAME}.yaml"
    if not path.is_file():
        return None
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            return doc
    return None


@contextlib.asynccontextmanager
async def running_cluster(
    kubeconfig: pathlib.Path | None = None,
    *,
    namespace: str = "default",
    crd: Mapping[str, Any] | None | Callable[[], Mapping[str, Any] | None] = load_crd,
    port: int | None = None,
) -> AsyncIterator[LocalCluster]:
    """Serve a fresh emulator on 127.0.0.1 (a free port unless given) and write a kubeconfig.

    The namespace exists and our CRD is installed (so its defaults apply) when it is available.
    """
    emulator = SplatopsEmulator()
    with contextlib.ExitStack() as stack:
        if kubeconfig is None:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="splatops-kube-"))
            kubeconfig = pathlib.Path(tmpdir) / "kubeconfig"
        # Cancel a request's handler when its client goes away: watch streams otherwise live on
        # (waiting for the next event) and an in-process kopf waits for them when it stops.
        server_cls = functools.partial(aiohttp.test_utils.RawTestServer, handler_cancellation=True)
        async with emulator, kmock.Server(emulator, port=port, server_cls=server_cls) as server:
            url = str(server.url).rstrip("/")
            await emulator.create(NAMESPACE_RESOURCE, {"metadata": {"name": namespace}})
            crd_obj = crd() if callable(crd) else crd
            if crd_obj:
                await emulator.create(CRD_RESOURCE, crd_obj)
            write_kubeconfig(kubeconfig, url, namespace)
            yield LocalCluster(emulator, url, kubeconfig, namespace)



# Query parameters the API server decodes as integers (a float such as "300.0" is rejected).
_INTEGER_PARAMS = ("timeoutSeconds", "limit", "tailLines", "limitBytes", "sinceSeconds", "gracePeriodSeconds")


def _non_integer_param(params: Mapping[str, str]) -> str | None:
    for key in _INTEGER_PARAMS:
        value = params.get(key)
        if value is not None and not re.fullmatch(r"-?\d+", str(value)):
            return str(value)
    return None


def _query_bool(value: str | None) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")
