"""The Job builder: valid against the Kubernetes schema, and every property the issue asks for."""

from __future__ import annotations

import random
import re
from typing import Any

import posixpath

import kubernetes_validate
import pytest
from op_fixtures import job_for, training

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
    job = job_for(training(**spec), SETTINGS)
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_job_properties() -> None:
    job = job_for(training(), SETTINGS)
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
    assert term["matchExpressions"] == [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                         "values": list(SETTINGS.gpu_node_label_values)}]
    assert "g5.xlarge" in term["matchExpressions"][0]["values"]


def test_formats_reach_the_trainer() -> None:
    job = job_for(training(outputs={"formats": ["ply", "spz", "splat"]}), SETTINGS)
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_FORMATS] == "ply,spz,splat"


def test_pod_failure_policy() -> None:
    rules = job_for(training(), SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # The trainer's SIGTERM exit (143) is retried: ignored after a drain, else counted by backoffLimit.
    assert contract.ExitCode.TERMINATED not in rules[0]["onExitCodes"]["values"]


def test_never_copies_argocd_labels_or_annotations() -> None:
    job = job_for(training(), SETTINGS)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert not any("argocd" in k or k == "app.kubernetes.io/instance" for k in meta.get("labels", {}))
        assert "annotations" not in meta
    assert job["metadata"]["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY


@pytest.mark.parametrize(
    ("spec", "suspend", "kueue"),
    [({}, False, None), ({"suspend": True}, True, None), ({"queueName": "q"}, True, "q")],
)
def test_suspend_and_kueue(spec: dict[str, Any], suspend: bool, kueue: str | None) -> None:
    job = job_for(training(**spec), SETTINGS)
    assert job["spec"]["suspend"] is suspend
    assert job["metadata"]["labels"].get(names.KUEUE_QUEUE_LABEL) == kueue


def test_queued_by_operator_creates_suspended() -> None:
    assert job_for(training(), SETTINGS, suspend=True)["spec"]["suspend"] is True


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
    pod = job_for(training(**spec), settings)["spec"]["template"]["spec"]
    if expected is None:
        assert "affinity" not in pod
    elif expected == "override":
        assert pod["affinity"] == spec["affinity"]
    else:
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchExpressions"] == [expected]


def test_gpu_resource_name_configurable() -> None:
    settings = Settings(gpu_resource_name="amd.com/gpu", tolerations="[]")
    job = job_for(training(resources={"gpus": 2}), settings)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "2"
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("name", ["fox", "a" * 59, "a" * 60, "b" * 200, "x." * 100 + "y"])
def test_job_name_deterministic_and_short(name: str) -> None:
    first, second = jobs.job_name(name), jobs.job_name(name)
    assert first == second and len(first) <= 63
    assert first.startswith("gst-") and first[-1].isalnum()
    if len(name) <= 58:
        assert first == f"gst-{name}"


def test_long_names_do_not_collide() -> None:
    assert jobs.job_name("c" * 100 + "1") != jobs.job_name("c" * 100 + "2")


def test_a_name_spelled_like_a_hashed_one_gets_another_job_and_label() -> None:
    """The reported collision: a 67-character training's Job is `gst-<head>-<hash>`; a training
    literally named `<head>-<hash>` must not map to the same Job or pod label."""
    long = "scene-" + "a" * 61
    assert len(long) == 67
    forged = jobs.job_name(long).removeprefix("gst-")
    assert jobs.job_name(forged) != jobs.job_name(long)
    label = jobs.child_labels(long)[names.LABEL_TRAINING]
    assert jobs.child_labels(label)[names.LABEL_TRAINING] != label


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def random_names(rng: random.Random, count: int) -> set[str]:
    """Valid training names (DNS subdomains up to 253 characters), many near the length limits,
    plus, for each long one, the names spelled like its hashed Job name and label."""
    out: set[str] = set()
    for _ in range(count):
        length = rng.choice([rng.randint(1, 253), rng.randint(55, 70)])
        name = "".join(rng.choice("abc.-") for _ in range(length))
        name = re.sub(r"[.-]{2,}", "-", name).strip(".-") or "a"
        name = re.sub(r"\.-|-\.", "-", name)
        if DNS_SUBDOMAIN.match(name):
            out.add(name)
            out.add(jobs.job_name(name).removeprefix("gst-"))
            out.add(jobs.child_labels(name)[names.LABEL_TRAINING])
    return {n for n in out if DNS_SUBDOMAIN.match(n) and len(n) <= 253}


def test_distinct_training_names_give_distinct_job_names_and_labels() -> None:
    """Property: the map from training name to Job name (and to the pod label value) is one to
    one, and its values are valid (DNS subdomain / label value, at most 63 characters)."""
    names_ = random_names(random.Random(11), 3000)
    assert len(names_) > 3000
    job_names = {jobs.job_name(n) for n in names_}
    labels = {jobs.child_labels(n)[names.LABEL_TRAINING] for n in names_}
    assert len(job_names) == len(names_) and len(labels) == len(names_)
    assert all(len(j) <= 63 and DNS_SUBDOMAIN.match(j) for j in job_names)
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels)


def test_pods_carry_the_training_uid() -> None:
    job = job_for(training(), SETTINGS)
    assert job["spec"]["template"]["metadata"]["labels"][names.LABEL_TRAINING_UID] == "uid-fox"
    assert job["metadata"]["labels"][names.LABEL_TRAINING_UID] == "uid-fox"


def test_a_recreated_job_carries_the_earlier_attempts() -> None:
    assert "annotations" not in job_for(training(), SETTINGS)["metadata"]
    job = job_for(training(), SETTINGS, attempts_before=2)
    assert job["metadata"]["annotations"] == {names.ANNOTATION_ATTEMPTS_BEFORE: "2"}
    kubernetes_validate.validate(job, "1.30", strict=True)


@pytest.mark.parametrize(("path", "output", "directory"), [
    ("fox", None, "fox/gsplat/t1"),
    (".", None, "gsplat/t1"),
    ("a/b/", None, "a/b/gsplat/t1"),
    ("fox", "fox/gsplat", "fox/gsplat"),  # the original REST API's seed layout, named explicitly
    ("fox", "runs/./fox-v2/", "runs/fox-v2"),
])
def test_output_location(path: str, output: str | None, directory: str) -> None:
    """One place decides where a training writes: the Job's env, status.modelPath and the CLI agree."""
    from splatops.api import layout
    from splatops.api.models import parse_spec
    from splatops.client import download

    spec: dict[str, Any] = {"scene": {"claimName": "c", "path": path}}
    if output is not None:
        spec["output"] = {"path": output}
    location = layout.output_location(parse_spec(spec), "t1")
    assert (location.claim, location.directory, location.model_path) == ("c", directory, f"{directory}/results.ply")
    resource = {"metadata": {"name": "t1", "namespace": "ns", "uid": "u"}, "spec": spec}
    env = {e["name"]: e["value"] for e in job_for(resource, Settings())["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_OUTPUT_DIR] == posixpath.normpath(f"/data/{directory}")
    assert download.model_path(resource) == location.model_path  # what `splatops download` reads


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
    job = job_for(training(**spec), settings)
    assert tuple(job["spec"].get(k) for k in LIFETIME) == expected
    kubernetes_validate.validate(job, "1.30", strict=True)


def test_owned_by() -> None:
    job = job_for(training(), SETTINGS)
    assert jobs.owned_by(job, "uid-fox") and not jobs.owned_by(job, "uid-of-a-deleted-namesake")
    assert not jobs.owned_by({"metadata": {}}, "uid-fox")


def test_a_training_keeps_the_job_its_status_names() -> None:
    """After an upgrade from the earlier naming (59+ characters: `gst-<54>-<8 hex>`), a running
    training's Job is found under the name its status records, not looked for under a new one."""
    body = training("b" * 60)
    assert jobs.training_job_name(body) == jobs.job_name("b" * 60)
    legacy = "gst-" + "b" * 50 + "-0123abcd"
    body["status"] = {"jobName": legacy}
    assert jobs.training_job_name(body) == legacy
    assert job_for(body, SETTINGS)["metadata"]["name"] == legacy


def test_a_trainer_pod_names_its_output_directory() -> None:
    """The operator knows which output a pod writes even after its training is gone (a pod still
    terminating keeps the directory busy): from the pod's own claim and SPLATOPS_OUTPUT_DIR."""
    from splatops.api import layout
    from splatops.api.models import parse_spec

    resource = {"metadata": {"name": "t1", "namespace": "ns", "uid": "u"},
                "spec": {"scene": {"claimName": "c", "path": "fox"}, "output": {"path": "runs/fox"}}}
    template = job_for(resource, Settings())["spec"]["template"]
    pod = {"metadata": {"name": "gst-t1-abc", "namespace": "ns"}, "spec": template["spec"]}
    assert jobs.pod_output(pod) == layout.output_location(parse_spec(resource["spec"]), "t1").key("ns") == ("ns", "c", "runs/fox")
    assert jobs.pod_output({"metadata": {"namespace": "ns"}, "spec": {"containers": [{"name": "trainer"}]}}) is None
    # A pod built before SPLATOPS_OUTPUT_DIR existed writes the trainer's default, <scene>/gsplat.
    container = template["spec"]["containers"][0]
    old_env = [e for e in container["env"] if e["name"] != contract.ENV_OUTPUT_DIR]
    old_pod = {**pod, "spec": {**pod["spec"], "containers": [{**container, "env": old_env}]}}
    assert jobs.pod_output(old_pod) == ("ns", "c", "fox/gsplat")
