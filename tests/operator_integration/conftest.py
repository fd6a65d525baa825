"""Harness: the real operator (kopf over HTTP, in this event loop) against SplatopsEmulator.

The test plays the Job controller and the kubelet through `SimCluster`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import kmock
import kopf
import pytest
import testkit
import yaml

from splatops import names
from splatops.controller import main as operator_main  # a broken operator fails collection, never a skip
from splatops.local import cluster as c
from splatops.local.kubelet import SimCluster

NS = "default"
PVC_RESOURCE = "v1/persistentvolumeclaims"
SCENE_CLAIM = "scenes"  # exists in every test's namespace (the operator checks it before the Job)
# The Job controller reacts to a pod's change after this many seconds, so the operator sees the
# pod's termination before the Job's Failed condition, as is usual in a cluster.
CONTROLLER_LAG = 0.2

# Short intervals so every test finishes in seconds; no ports (tests run in parallel processes).
BASE_ENV = {
    "SPLATOPS_OPERATOR_PROGRESS_INTERVAL": "0.2",
    "SPLATOPS_OPERATOR_STATUS_MIN_INTERVAL": "0",
    "SPLATOPS_OPERATOR_UNSCHEDULABLE_GRACE": "0",
    "SPLATOPS_OPERATOR_METRICS_PORT": "0",
    "SPLATOPS_OPERATOR_LIVENESS_PORT": "0",
    "SPLATOPS_OPERATOR_STANDALONE": "true",
    "SPLATOPS_OPERATOR_TRAINER_IMAGE": "registry.example/splatops/trainer:test",
    "SPLATOPS_OPERATOR_MAX_CONCURRENT": "0",
}

# Harness.handled's token: an annotation the test writes on a training, and the reason (message:
# the token) of the Event the observer posts once the operator has handled that version.
BARRIER = "test.splatops.dev/barrier"
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


def training(name: str, **spec: Any) -> dict[str, Any]:
    return testkit.training(name, namespace=NS, claim=SCENE_CLAIM, **{"maxSteps": 300, **spec})


def caller(request: kmock.Request) -> str:
    """Who sent a request: the bearer token of its kubeconfig (see Harness.start_operator)."""
    auth = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
    return auth.removeprefix("Bearer ").strip()


class Emulator(c.SplatopsEmulator):
    """The emulator plus what these tests need of the API server: PersistentVolumeClaims served
    as it serves them (a missing one is its `NotFound` Status, not kmock's generic 404), and
    knobs: PVC reads forbidden (RBAC without `get persistentvolumeclaims`), Job creations
    rejected with a 422 (the API server's validation, which the emulator does not do), and
    callers whose writes to kopf's peering objects are lost (a crashed replica's last heartbeat
    stays). `calls` counts requests by (caller, method, resource, subresource)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources[PVC_RESOURCE] = kmock.ResourceInfo(
            kind="PersistentVolumeClaim", singular="persistentvolumeclaim", namespaced=True,
            verbs={"get", "list", "watch", "create", "delete"})
        self.pvc_forbidden = False
        self.reject_jobs: str | None = None  # the 422's message
        self.calls: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self.peering_lost: set[str] = set()  # callers whose peering writes are answered 404, not applied
        # Scripted failures: (method, resource, whether the request names an object) -> the next
        # answers (code, reason, message), one used per matching request, then served normally.
        self.fail_next: dict[tuple[str, str, bool], list[tuple[int, str, str]]] = {}

    # kmock private API (_handle, _render_error, _serve_fetch overrides): pinned kmock==0.8 in pyproject.toml
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        who, key = caller(request), self._key(request.resource)
        method = str(getattr(request.method, "value", request.method))
        self.calls[(who, method, key, request.subresource or "")] += 1
        if who in self.peering_lost and key.startswith("kopf.dev/") and method != "GET":
            return await self._render_error(kmock.KubernetesError(404, "NotFound", f"{key} unreachable"))
        script = self.fail_next.get((method, key, request.name is not None))
        if script and not request.subresource:
            code, reason, message = script.pop(0)
            return await self._render_error(kmock.KubernetesError(code, reason, message))
        return await super()._handle(request)

    def writes(self, who: str, *resources: str) -> dict[tuple[str, str, str], int]:
        """Non-read requests of `who` to `resources`, by (method, resource, subresource)."""
        return {(m, r, sub): n for (w, m, r, sub), n in self.calls.items()
                if w == who and r in resources and m not in ("GET", "HEAD")}

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        if self._key(request.resource) == PVC_RESOURCE and request.name and not request.subresource:
            details = {"name": request.name, "kind": "persistentvolumeclaims"}
            if self.pvc_forbidden:
                raise kmock.KubernetesError(403, "Forbidden", f'persistentvolumeclaims "{request.name}" is forbidden: '
                                            "cannot get resource", details)
            if self.read(PVC_RESOURCE, request.namespace, request.name) is None:
                raise kmock.KubernetesError(404, "NotFound", f'persistentvolumeclaims "{request.name}" not found', details)
        return await super()._serve_fetch(request)

    async def create(self, resource: Any, body: Any) -> dict[str, Any]:
        if self.reject_jobs is not None and self._key(self._res(resource)) == c.JOB_RESOURCE:
            name = body.get("metadata", {}).get("name")
            raise kmock.KubernetesError(422, "Invalid", f'Job.batch "{name}" is invalid: {self.reject_jobs}',
                                        {"name": name, "group": "batch", "kind": "Job"})
        return await super().create(resource, body)


@dataclasses.dataclass
class Harness:
    cluster: c.LocalCluster
    sim: SimCluster
    monkeypatch: pytest.MonkeyPatch
    _operators: list[tuple[threading.Thread, threading.Event]] = dataclasses.field(default_factory=list)
    # (plural, name, event type, barrier token) of each watch event the operators' handlers have handled
    seen: list[tuple[str, str, str, str | None]] = dataclasses.field(default_factory=list)
    _tokens: Any = dataclasses.field(default_factory=itertools.count)

    def register_with_observer(self, register: Callable[..., Any]) -> Callable[..., Any]:
        """The operator's `register`, then an observer: one more kopf event handler per kind, registered
        last. kopf handles one object's events in order, each event's handlers in registration
        order, so an event the observer saw was handled by the operator first, as was every
        earlier event of that object. Seeing a barrier token, it posts an Event: kopf posts one
        object's Events in order, so that Event's arrival means the earlier ones arrived too."""

        async def observe(type: str | None, body: kopf.Body, resource: kopf.Resource, name: str, **_: Any) -> None:
            token = (body.get("metadata", {}).get("annotations") or {}).get(BARRIER)
            self.seen.append((resource.plural, name, str(type), token))
            if token is not None and resource.plural == names.PLURAL and type != "DELETED":
                kopf.event(dict(body), type="Normal", reason="TestBarrier", message=token)

        def register_all(registry: kopf.OperatorRegistry, *args: Any, **kwargs: Any) -> Any:
            runtime = register(registry, *args, **kwargs)
            for group, version, plural, labels in ((names.GROUP, names.VERSION, names.PLURAL, None),
                                                   ("batch", "v1", "jobs", MANAGED), ("", "v1", "pods", MANAGED)):
                kopf.on.event(group, version, plural, labels=labels, id="test_observer", registry=registry)(observe)
            return runtime

        return register_all

    async def handled(self, name: str, *, events: bool = False) -> None:
        """Wait until the operator has handled every watch event of training `name` so far (and,
        with `events`, posted every Event it queued for it): the observable proof that it had its
        chance to act, before a test asserts that it did not."""
        token = await self._barrier(c.TRAINING_RESOURCE, names.PLURAL, name)
        if events:
            await eventually(lambda: any(e.get("reason") == "TestBarrier" and e.get("message") == token
                                         for e in self.emulator.list_objects(c.EVENT_RESOURCE, NS)),
                             f"the Event of barrier {token} for {name}")

    async def settled(self, name: str) -> None:
        """`handled` for the training's Job and pods, then for the training with its Events: whatever
        their events made the operator write has been written."""
        for job in self.sim.jobs(name):
            await self._barrier(c.JOB_RESOURCE, "jobs", job["metadata"]["name"])
            for pod in self.sim.pods(job["metadata"]["name"]):
                await self._barrier(c.POD_RESOURCE, "pods", pod["metadata"]["name"])
        await self.handled(name, events=True)

    async def _barrier(self, resource: str, plural: str, name: str) -> str:
        token = f"b{next(self._tokens)}"
        await self.emulator.patch(resource, NS, name, {"metadata": {"annotations": {BARRIER: token}}})
        await eventually(lambda: (plural, name, token) in {(p, n, t) for p, n, _, t in self.seen},
                         f"the operator to handle {plural} {name}'s watch event carrying {BARRIER}={token}")
        return token

    async def deletion_handled(self, plural: str, name: str) -> None:
        """Wait until the operator has handled the DELETED watch event of `name` (a Job or pod)."""
        await eventually(lambda: (plural, name, "DELETED") in {(p, n, t) for p, n, t, _ in self.seen},
                         f"the operator to handle the deletion of {plural} {name}")

    @property
    def emulator(self) -> Emulator:
        assert isinstance(self.cluster.emulator, Emulator)
        return self.cluster.emulator

    async def start_operator(self, caller: str | None = None, **env: str) -> threading.Event:
        """Run `splatops.controller.main.run()` in a thread with its own event loop, as embedded
        kopf operators run: kopf's shutdown waits for (and cancels) every task of its loop.

        With `caller`, the operator uses its own kubeconfig whose token is `caller` (its requests
        are told apart in `Emulator.calls`). Returns its stop flag."""
        from splatops.controller.settings import Settings

        if caller is not None:
            kubeconfig = self.cluster.kubeconfig.with_name(f"kubeconfig-{caller}")
            config = c.kubeconfig_dict(self.cluster.url, self.cluster.namespace)
            config["users"][0]["user"]["token"] = caller
            kubeconfig.write_text(yaml.safe_dump(config))
            self.monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        for key, value in env.items():
            self.monkeypatch.setenv(f"SPLATOPS_OPERATOR_{key.upper()}", value)
        settings = Settings.from_env()
        ready, stop = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                operator_main.run(settings, ready_flag=ready, stop_flag=stop)
            except BaseException as exc:  # noqa: BLE001 - reported to the test below
                errors.append(exc)

        thread = threading.Thread(target=target, name="splatops-operator", daemon=True)
        thread.start()
        self._operators.append((thread, stop))
        deadline = time.monotonic() + 20
        while not ready.is_set():
            if errors:
                raise AssertionError(f"the operator failed to start: {errors[0]!r}") from errors[0]
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the operator did not become ready in 20 s")
            await asyncio.sleep(0.05)
        if caller is not None:  # kopf logs in (reads KUBECONFIG) after ready: before the next start
            await eventually(lambda: any(key[0] == caller for key in self.emulator.calls),
                             f"a request from {caller}", 20)
        return stop

    async def stop_operator(self, stop: threading.Event) -> None:
        """Stop one operator (gracefully: kopf runs its cleanup) and wait for its thread."""
        thread = next(t for t, s in self._operators if s is stop)
        self._operators.remove((thread, stop))
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        assert not thread.is_alive(), "the operator did not stop within 20 s"

    async def stop_operators(self) -> None:
        while self._operators:
            thread, stop = self._operators.pop()
            stop.set()
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive(), "the operator did not stop within 20 s"

    async def create(self, name: str, **spec: Any) -> dict[str, Any]:
        return await self.emulator.create(c.TRAINING_RESOURCE, training(name, **spec))

    def resource(self, name: str) -> dict[str, Any]:
        obj = self.emulator.read(c.TRAINING_RESOURCE, NS, name)
        assert obj is not None, f"{name} does not exist"
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.resource(name).get("status") or {}

    def job_of(self, name: str) -> dict[str, Any]:
        jobs = self.sim.jobs(name)
        assert len(jobs) == 1, f"expected one Job for {name}, got {[j['metadata']['name'] for j in jobs]}"
        return jobs[0]

    async def wait_job(self, name: str) -> dict[str, Any]:
        await eventually(lambda: len(self.sim.jobs(name)) == 1, f"a Job for {name}")
        return self.job_of(name)

    async def wait_phase(self, name: str, phase: str, timeout: float = 10) -> dict[str, Any]:
        await eventually(lambda: self.status(name).get("phase") == phase,
                         lambda: f"{name} phase {phase}; status is {self.status(name)}", timeout)
        return self.status(name)

    async def running_pod(self, name: str, *lines: str) -> str:
        """Job of `name` created -> its pod started and running with `lines` in the log."""
        job = await self.wait_job(name)
        pod = await self.sim.start(job["metadata"]["name"])
        await self.sim.run(pod, *lines)
        return pod


async def eventually(check: Callable[[], bool], what: str | Callable[[], str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


def sample(name: str, **labels: str) -> float:
    """A value of the operator's Prometheus registry (the operator runs in this process)."""
    from splatops.controller import metrics

    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def kube(tmp_path, monkeypatch) -> AsyncIterator[Harness]:
    monkeypatch.setattr(c, "SplatopsEmulator", Emulator)  # running_cluster builds this one
    async with c.running_cluster(tmp_path / "kubeconfig", namespace=NS) as cluster:
        await cluster.emulator.create(PVC_RESOURCE, {"metadata": {"name": SCENE_CLAIM, "namespace": NS},
                                                     "spec": {"accessModes": ["ReadWriteOnce"]}})
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        for key, value in BASE_ENV.items():
            monkeypatch.setenv(key, value)
        sim = SimCluster(cluster.emulator, NS, controller_lag=CONTROLLER_LAG)
        harness = Harness(cluster, sim, monkeypatch)
        monkeypatch.setattr(operator_main, "register", harness.register_with_observer(operator_main.register))
        try:
            yield harness
        finally:
            await harness.stop_operators()
