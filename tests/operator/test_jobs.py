"""The Job builder: valid against the Kubernetes schema, and every property the issue asks for."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from op_fixtures import training

from splatops import contract, names
from splatops.controller import jobs
from splatops.controller.settings import Settings

SETTINGS = Settings()

SPECS: list[dict[str, Any]] = [
    {},
    {"dataFactor": 4, "maxSteps": 7000, "strategy": "mcmc", "evalEvery": 1000, "checkpointEvery": 500, "seed": 7},
    {"resources": {"gpus": 2, "memory": "48Gi", "cpu": "8"}, "priorityClassName": "high"},
    {"queueName": "team-a", "ttlSecondsAfterFinished": 3600},
    {"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.xlarge"]}]}]}}}},
    {"suspend": True, "image": "registry.example/trainer:2", "imagePullPolicy": "Always"},
]


@pytest.mark.parametrize("spec", SPECS)
def test_job_validates_against_kubernetes_schema(spec: dict[str, Any]) -> None:
    job = jobs.build_job(training(**spec), SETTINGS)
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_job_properties() -> None:
    job = jobs.build_job(training(), SETTINGS)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["name"] == "gst-fox"
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": names.API_VERSION, "kind": names.KIND, "name": "fox", "uid": "uid-fox",
        "controller": True, "blockOwnerDeletion": True}]
    assert spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 86400 and spec["suspend"] is False
    assert spec["ttlSecondsAfterFinished"] == 604800  # the operator's defaults: 3 retries, 24 h, 7 days
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and sc["allowPrivilegeEscalation"] is False
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[names.SCENE_MOUNT]]["persistentVolumeClaim"] == {"claimName": "scenes"}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[contract.ENV_SCENE_DIR] == "/data/scenes/fox"
    assert env[contract.ENV_MAX_STEPS] == "30000" and env[contract.ENV_DATA_FACTOR] == "1"
    assert env[contract.ENV_FORMATS] == "ply,spz"  # spec.outputs.formats' default
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A10G"]}]


def test_formats_reach_the_trainer() -> None:
    job = jobs.build_job(training(outputs={"formats": ["ply", "spz", "splat"]}), SETTINGS)
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_FORMATS] == "ply,spz,splat"


def test_pod_failure_policy() -> None:
    rules = jobs.build_job(training(), SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_never_copies_argocd_labels_or_annotations() -> None:
    job = jobs.build_job(training(), SETTINGS)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert not any("argocd" in k or k == "app.kubernetes.io/instance" for k in meta.get("labels", {}))
        assert "annotations" not in meta
    assert job["metadata"]["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY


@pytest.mark.parametrize(
    ("spec", "suspend", "kueue"),
    [({}, False, None), ({"suspend": True}, True, None), ({"queueName": "q"}, True, "q")],
)
def test_suspend_and_kueue(spec: dict[str, Any], suspend: bool, kueue: str | None) -> None:
    job = jobs.build_job(training(**spec), SETTINGS)
    assert job["spec"]["suspend"] is suspend
    assert job["metadata"]["labels"].get(names.KUEUE_QUEUE_LABEL) == kueue


def test_queued_by_operator_creates_suspended() -> None:
    assert jobs.build_job(training(), SETTINGS, suspend=True)["spec"]["suspend"] is True


@pytest.mark.parametrize(
    ("settings", "spec", "expected"),
    [
        (Settings(gpu_node_label_key="node.kubernetes.io/instance-type", gpu_node_label_values=["g5.xlarge", "g5.2xlarge"]), {},
         {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g5.xlarge", "g5.2xlarge"]}),
        (Settings(gpu_node_label_key=""), {}, None),
        (SETTINGS, {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}, "override"),
    ],
)
def test_affinity_overrides(settings: Settings, spec: dict[str, Any], expected: Any) -> None:
    pod = jobs.build_job(training(**spec), settings)["spec"]["template"]["spec"]
    if expected is None:
        assert "affinity" not in pod
    elif expected == "override":
        assert pod["affinity"] == spec["affinity"]
    else:
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchExpressions"] == [expected]


def test_gpu_resource_name_configurable() -> None:
    settings = Settings(gpu_resource_name="amd.com/gpu", tolerations="[]")
    job = jobs.build_job(training(resources={"gpus": 2}), settings)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "2"
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("name", ["fox", "a" * 59, "a" * 60, "b" * 200, "x." * 100 + "y"])
def test_job_name_deterministic_and_short(name: str) -> None:
    first, second = jobs.job_name(name), jobs.job_name(name)
    assert first == second and len(first) <= 63
    assert first.startswith("gst-") and first[-1].isalnum()
    if len(name) <= 59:
        assert first == f"gst-{name}"


def test_long_names_do_not_collide() -> None:
    assert jobs.job_name("c" * 100 + "1") != jobs.job_name("c" * 100 + "2")


@pytest.mark.parametrize(("path", "model"), [("fox", "fox/gsplat/results.ply"), (".", "gsplat/results.ply"), ("a/b/", "a/b/gsplat/results.ply")])
def test_model_path(path: str, model: str) -> None:
    from splatops.api.models import parse_spec

    assert jobs.model_path(parse_spec({"scene": {"claimName": "c", "path": path}})) == model


LIFETIME = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


@pytest.mark.parametrize(
    ("settings", "spec", "expected"),
    [
        (SETTINGS, {}, (3, 86400, 604800)),
        (Settings(default_backoff_limit=5, default_active_deadline_seconds=3600, default_ttl_seconds_after_finished=60), {},
         (5, 3600, 60)),
        # 0 = none: no retries, no deadline, finished Jobs kept
        (Settings(default_backoff_limit=0, default_active_deadline_seconds=0, default_ttl_seconds_after_finished=0), {},
         (0, None, None)),
        # the spec's values win, also a TTL of 0 (delete at once) and over a default of none
        (Settings(default_active_deadline_seconds=0, default_ttl_seconds_after_finished=0),
         {"backoffLimit": 1, "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 0}, (1, 7200, 0)),
        (SETTINGS, {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600}, (0, 86400, 3600)),
    ],
)
def test_job_lifetime_defaults_from_settings(settings: Settings, spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    job = jobs.build_job(training(**spec), settings)
    assert tuple(job["spec"].get(k) for k in LIFETIME) == expected
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_owned_by() -> None:
    job = jobs.build_job(training(), SETTINGS)
    assert jobs.owned_by(job, "uid-fox") and not jobs.owned_by(job, "uid-of-a-deleted-namesake")
    assert not jobs.owned_by({"metadata": {}}, "uid-fox")
