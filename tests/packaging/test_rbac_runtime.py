"""The chart's RBAC against what the real operator does: every API call it makes through a training's
life (recorded by the emulator it runs against, with the settings the chart gives it) is granted by
the rendered (Cluster)Roles, and every granted rule is one it uses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import kmock
import pytest
from testkit import training

import splatops.controller.main  # noqa: F401  (a broken operator fails collection, never a skip)
from helm_env import one
from splatops import contract, names
from splatops.local import cluster as c
from splatops.local.kubelet import SimCluster

pytestmark = pytest.mark.timeout(120)

PVC_RESOURCE = "v1/persistentvolumeclaims"
Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
Call = tuple[str | None, str, str, str]  # (namespace or None for cluster-scoped/all, *Rule)

# Granted, but not exercised by this scenario (each with why it is needed).
NOT_EXERCISED: dict[Rule, str] = {
    # Checked by the OwnerReferencesPermissionEnforcement admission plugin when a Job with
    # blockOwnerDeletion is created: no API call of its own.
    (names.GROUP, f"{names.PLURAL}/finalizers", "update"): "admission",
    # kube.read_job: only when creating the Job finds one there already (a Job kopf's index has
    # not seen yet), a race this scenario does not provoke.
    ("batch", "jobs", "get"): "create conflict",
    # kube.kueue_workloads: only for trainings with spec.queueName, which this scenario has not
    # (test_operator.py::test_kueue_pending_reason_in_the_status_message covers it).
    ("kueue.x-k8s.io", "workloads", "list"): "Kueue",
    # kube.delete_job: only when a training under spec.oom.policy Downscale ran out of GPU memory
    # (test_operator.py::test_oom_downscale_trains_again_at_twice_the_factor_up_to_8 covers it).
    ("batch", "jobs", "delete"): "OOM downscale",
}


class RecordingEmulator(c.SplatopsEmulator):
    """The local cluster's emulator, recording each API call as the RBAC rule it needs."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: set[Call] = set()
        self.resources[PVC_RESOURCE] = kmock.ResourceInfo(
            kind="PersistentVolumeClaim", singular="persistentvolumeclaim", namespaced=True,
            verbs={"get", "list", "watch", "create", "delete"},
        )

    # kmock private API (KubernetesScaffold._handle override): pinned kmock==0.8 in pyproject.toml
    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.resource.plural:  # not discovery (/apis/...)
            self.calls.add((request.namespace, *rule_of(request)))
        return await super()._handle(request)


def rule_of(request: kmock.Request) -> Rule:
    res = request.resource
    plural = "namespaces" if res.plural == c._NS_ALIAS else res.plural
    method = str(getattr(request.method, "value", request.method)).upper()
    if method == "GET":
        verb = {kmock.action.LIST: "list", kmock.action.WATCH: "watch"}.get(request.action, "get")
        if request.name is None and verb == "get":
            verb = "list"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method)
        verb = verb or ("delete" if request.name is not None else "deletecollection")
    resource = f"{plural}/{request.subresource}" if request.subresource else plural
    return (res.group, resource, verb)


def _rules(role: dict[str, Any]) -> set[Rule]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }


def granted(objects: list[dict[str, Any]]) -> dict[str | None, set[Rule]]:
    """namespace -> the rules the operator has there (None: cluster-wide, from ClusterRoles)."""
    operator_roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and o["metadata"]["name"].endswith(("-operator", "-discovery"))]
    cluster = set().union(*(_rules(r) for r in operator_roles if r["kind"] == "ClusterRole"))
    out: dict[str | None, set[Rule]] = {None: cluster}
    for role in operator_roles:
        if role["kind"] == "Role":
            out[role["metadata"]["namespace"]] = cluster | _rules(role)
    return out


def chart_settings(objects: list[dict[str, Any]], **overrides: Any) -> Any:
    """The operator's Settings from the env the chart's StatefulSet gives it (replica 1)."""
    from splatops.controller.settings import Settings

    env = {e["name"]: e.get("value") for e in one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]}
    env["SPLATOPS_OPERATOR_PRIORITY"] = "1"  # the fieldRef, as the kubelet resolves it
    fields = {k.removeprefix("SPLATOPS_OPERATOR_").lower(): v for k, v in env.items()}
    return Settings.from_env(**{**fields, **overrides})


async def eventually(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def progress(step: int) -> str:
    return contract.Progress(step=step, max_steps=300, loss=0.0234, num_gaussians=1000, steps_per_sec=50.0).to_json()


def complete() -> str:
    return contract.Result(status="complete", model_path="/data/scenes/a/gsplat/results.ply", model_size_mb=12.5,
                           num_gaussians=1000, psnr=28.5, steps=300, config={"scene_id": "a", "max_steps": 300}).to_json()


async def run_a_training_life(settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> set[Call]:
    """Trainings in the first watched namespace (or "splats" cluster-wide): created, one queued
    (maxConcurrent 1), waiting for a node Karpenter launches, progress, an operator restart, success, the queued one admitted,
    suspended, deleted. Returns the calls the operator made."""
    from splatops.controller import main

    NS = settings.namespaces[0] if settings.namespaces else "splats"
    monkeypatch.setattr(c, "SplatopsEmulator", RecordingEmulator)
    async with c.running_cluster(tmp_path / "kubeconfig", namespace=NS) as cluster:
        emu: RecordingEmulator = cluster.emulator  # type: ignore[assignment]
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        await emu.create(PVC_RESOURCE, {"metadata": {"name": "scenes", "namespace": NS}, "spec": {}})
        if settings.namespaces:  # the chart's KopfPeering in each watched namespace
            for ns in settings.namespaces[1:]:
                await emu.create(c.NAMESPACE_RESOURCE, {"metadata": {"name": ns}})
            for ns in settings.namespaces:
                await emu.create("kopf.dev/v1/kopfpeerings", {"metadata": {"name": settings.peering_name, "namespace": ns}})
        else:
            await emu.create("kopf.dev/v1/clusterkopfpeerings", {"metadata": {"name": settings.peering_name}})
        sim = SimCluster(emu, NS)

        def status(name: str) -> dict[str, Any]:
            return (emu.read(c.TRAINING_RESOURCE, NS, name) or {}).get("status") or {}

        def jobs_of(name: str) -> list[dict[str, Any]]:
            return sim.jobs(name)

        stops: list[tuple[threading.Thread, threading.Event]] = []

        async def start() -> None:
            ready, stop = threading.Event(), threading.Event()
            thread = threading.Thread(target=main.run, args=(settings,), kwargs={"ready_flag": ready, "stop_flag": stop}, daemon=True)
            thread.start()
            stops.append((thread, stop))
            await eventually(ready.is_set, "the operator ready", 20)

        async def stop_all() -> None:
            while stops:
                thread, stop = stops.pop()
                stop.set()
                await asyncio.to_thread(thread.join, 20)

        try:
            await start()
            await emu.create(c.TRAINING_RESOURCE, training("a", namespace=NS, maxSteps=300))
            await emu.create(c.TRAINING_RESOURCE, training("b", namespace=NS, maxSteps=300))  # maxConcurrent 1: waits Queued
            await eventually(lambda: len(jobs_of("a")) == 1, "a's Job")
            job_a = jobs_of("a")[0]["metadata"]["name"]
            pod = await sim.start(job_a)
            # Unschedulable past the grace (0 here) while Karpenter launches a node: the operator
            # lists the pod's Events, sees Nominated, and waits.
            await sim.karpenter_nominates(pod)
            await sim.unschedulable(pod)
            await eventually(lambda: status("a").get("reason") == "NodeProvisioning", "a waiting for Karpenter's node")
            await sim.run(pod, progress(100))
            await eventually(lambda: status("a").get("progress", {}).get("step") == 100, "a's progress")
            # A restart: the operator adopts the existing Job (reads it) instead of creating one.
            await stop_all()
            await start()
            await sim.log(pod, progress(300), complete())
            await sim.terminate(pod, 0, complete())
            await eventually(lambda: status("a").get("phase") == "Succeeded", "a Succeeded")
            await eventually(lambda: len(jobs_of("b")) == 1 and not jobs_of("b")[0]["spec"].get("suspend"), "b admitted")
            await emu.patch(c.TRAINING_RESOURCE, NS, "b", {"spec": {"suspend": True}})
            await eventually(lambda: status("b").get("phase") == "Suspended", "b Suspended")
            await emu.delete(c.TRAINING_RESOURCE, NS, "b")
            await eventually(lambda: emu.read(c.TRAINING_RESOURCE, NS, "b") is None, "b deleted")
        finally:
            await stop_all()
        return set(emu.calls)


@pytest.mark.parametrize("scenario", ["default", "namespaced"])  # ClusterRole / a Role per namespace
async def test_the_chart_grants_exactly_what_the_operator_calls(renders, tmp_path, monkeypatch, scenario: str) -> None:
    objects = renders.objects(scenario)
    settings = chart_settings(objects, metrics_port=0, liveness_port=0, progress_interval=0.2, status_min_interval=0, max_concurrent=1,
                              unschedulable_grace=0)
    assert not settings.standalone and settings.peering_mandatory
    assert {p["metadata"]["name"] for p in objects if p["apiVersion"].startswith("kopf.dev/")} == {settings.peering_name}
    calls = await run_a_training_life(settings, tmp_path, monkeypatch)
    rules = granted(objects)
    missing = {call for call in calls if call[1:] not in rules.get(call[0], rules[None])}
    if settings.namespaces:
        outside = {call for call in calls if call[0] is not None and call[0] not in settings.namespaces}
        assert not outside, f"calls outside the watched namespaces: {sorted(outside)}"
    assert not missing, f"the operator makes calls the chart does not grant: {sorted(missing, key=str)}"
    used = {call[1:] for call in calls}
    for ns, have in rules.items():
        unused = have - used - set(NOT_EXERCISED)
        assert not unused, f"the chart grants rules the operator never used ({ns or 'cluster-wide'}): {sorted(unused)}"
