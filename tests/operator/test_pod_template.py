"""spec.podTemplate and the operator's default template (chart value trainer.podTemplate): merged
into the Job, valid Kubernetes, never replacing the trainer's own security context, command,
resources, scene mount, env or labels; collisions refused by the CRD's CEL rules and, naming the
field, by the operator's models (-> InvalidSpec)."""

from __future__ import annotations

import json
from typing import Any

import celpy
import kubernetes_validate
import pytest
from op_fixtures import job_for, training
from pydantic import ValidationError

from splatops import names
from splatops.api import crd
from splatops.api.models import PodTemplate, Volume, VolumeMount, parse_spec, pod_template_problems
from splatops.controller import failures
from splatops.controller.settings import Settings

DO_NOT_DISRUPT = {"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}}
CHART = Settings(pod_template=json.dumps({
    **DO_NOT_DISRUPT,
    "imagePullSecrets": [{"name": "registry"}],
    "env": [{"name": "AWS_REGION", "value": "us-east-1"}, {"name": "LOG_LEVEL", "value": "info"}],
    "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
}))


def pod_of(spec: dict[str, Any], settings: Settings = CHART) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    job = job_for(training(**spec), settings)
    kubernetes_validate.validate(job, "1.30", strict=True)
    template = job["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template["metadata"], template["spec"], container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


IRSA = {"podTemplate": {"serviceAccountName": "splat-s3", "metadata": {"labels": {"team": "vision"}}}}
SECRET_ENV = {"podTemplate": {"env": [{"name": "LOG_LEVEL", "value": "debug"},
                                      {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}]}}
CACHE = {"podTemplate": {"volumes": [{"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": {
    "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}}}}},
    {"name": "cfg", "configMap": {"name": "splat-cfg"}}],
    "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "cfg", "mountPath": "/etc/splat", "readOnly": True}]}}
MORE = {"podTemplate": {"imagePullSecrets": [{"name": "registry"}, {"name": "team"}],
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                        "metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "false", "owner": "ana"}}}}

# (spec, what the pod must show)
CASES = [
    ({}, {"annotations": {"karpenter.sh/do-not-disrupt": "true"}, "sa": None, "pull": ["registry"],
          "env": {"AWS_REGION": "us-east-1", "LOG_LEVEL": "info"}, "extra_tolerations": ["spot"]}),
    (IRSA, {"sa": "splat-s3", "labels": {"team": "vision"}}),
    (SECRET_ENV, {"env": {"AWS_REGION": "us-east-1", "LOG_LEVEL": "debug",
                          "TOKEN": {"secretKeyRef": {"name": "t", "key": "k"}}}}),
    (CACHE, {"mounts": {"/cache": "cache", "/etc/splat": "cfg"}, "volumes": ["cache", "cfg"]}),
    (MORE, {"pull": ["registry", "team"], "annotations": {"karpenter.sh/do-not-disrupt": "false", "owner": "ana"},
            "extra_tolerations": ["spot", "dedicated"]}),
]


@pytest.mark.parametrize(("spec", "want"), CASES)
def test_pod_template_merged_into_a_valid_job(spec: dict[str, Any], want: dict[str, Any]) -> None:
    meta, pod, container = pod_of(spec)
    base_meta, base_pod, base_container = pod_of({}, Settings())
    if "annotations" in want:
        assert meta["annotations"] == want["annotations"]
    if "labels" in want:
        assert want["labels"].items() <= meta["labels"].items()
    assert base_meta["labels"].items() <= meta["labels"].items()  # the operator's labels stay
    if "sa" in want:
        assert pod.get("serviceAccountName") == want["sa"]
    if "pull" in want:
        assert [s["name"] for s in pod["imagePullSecrets"]] == want["pull"]
    if "env" in want:
        assert {k: v for k, v in env_of(container).items() if k in want["env"]} == want["env"]
    assert env_of(base_container).items() <= env_of(container).items()  # the trainer's env untouched
    if "mounts" in want:
        assert {m["mountPath"]: m["name"] for m in container["volumeMounts"][3:]} == want["mounts"]
        assert [v["name"] for v in pod["volumes"][3:]] == want["volumes"]
    assert container["volumeMounts"][:3] == base_container["volumeMounts"] and pod["volumes"][:3] == base_pod["volumes"]
    if "extra_tolerations" in want:
        assert [t["key"] for t in pod["tolerations"][len(base_pod["tolerations"]):]] == want["extra_tolerations"]
    # What makes it the trainer never changes.
    for key in ("securityContext", "command", "args", "resources", "image", "name"):
        assert container.get(key) == base_container.get(key)
    for key in ("securityContext", "automountServiceAccountToken", "restartPolicy"):
        assert pod[key] == base_pod[key]


COLLISIONS = [
    ({"volumes": [{"name": "scene", "emptyDir": {}}]}, "spec.podTemplate.volumes[0].name: 'scene' is reserved"),
    ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "spec.podTemplate.volumes[0].name: 'tmp' is reserved"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/data"}]},
     "spec.podTemplate.volumeMounts[0].mountPath: '/data' overlaps the trainer's /data"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/data/fox/images"}]},
     "volumeMounts[0].mountPath: '/data/fox/images' overlaps the trainer's /data"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/dev"}]},
     "volumeMounts[0].mountPath: '/dev' overlaps the trainer's /dev/shm"),
    ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "volumeMounts[0].name: no volume 'nope'"),
    ({"env": [{"name": "SPLATOPS_SCENE_DIR", "value": "/elsewhere"}]}, "spec.podTemplate.env[0].name: 'SPLATOPS_SCENE_DIR' is set by the operator"),
    ({"env": [{"name": "HOME", "value": "/root"}]}, "env[0].name: 'HOME' is set by the operator"),
    ({"metadata": {"labels": {names.LABEL_TRAINING: "other"}}}, "metadata.labels: 'splatops.dev/training' is the operator's own label"),
    ({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "hostPath"),
    ({"volumes": [{"name": "two", "emptyDir": {}, "secret": {"secretName": "s"}}]}, "needs exactly one of"),
    ({"securityContext": {"runAsUser": 0}}, "securityContext"),
    ({"command": ["sh"]}, "command"),
]


@pytest.mark.parametrize(("template", "needle"), COLLISIONS)
def test_collisions_are_refused_naming_the_field(template: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec({"scene": {"claimName": "s", "path": "fox"}, "podTemplate": template})
    assert needle in str(err.value)


def test_chart_defaults_are_checked_at_startup() -> None:
    with pytest.raises(ValidationError, match="'scene' is reserved"):
        Settings(pod_template=json.dumps({"volumes": [{"name": "scene", "emptyDir": {}}]}))
    assert Settings(pod_template="").pod_template is None


# --- the same refusals in the CRD, at kubectl apply -----------------------------------------------

ENV = celpy.Environment()
ITEMS = crd.spec_schema()["properties"]["podTemplate"]["properties"]


def cel_ok(field: str, item: dict[str, Any]) -> bool:
    (rule,) = ITEMS[field]["items"]["x-kubernetes-validations"]
    return bool(ENV.program(ENV.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(item)}))


@pytest.mark.parametrize(("field", "item", "ok"), [
    ("volumes", {"name": "cache"}, True), ("volumes", {"name": "scene"}, False), ("volumes", {"name": "dshm"}, False),
    ("env", {"name": "AWS_REGION"}, True), ("env", {"name": "SPLATOPS_MAX_STEPS"}, False), ("env", {"name": "HOME"}, False),
    ("volumeMounts", {"mountPath": "/cache"}, True), ("volumeMounts", {"mountPath": "/database"}, True),
    ("volumeMounts", {"mountPath": "/data"}, False), ("volumeMounts", {"mountPath": "/data/x"}, False),
    ("volumeMounts", {"mountPath": "/dev/"}, False), ("volumeMounts", {"mountPath": "/"}, False),
    ("volumeMounts", {"mountPath": "/dev/termination-log"}, False), ("volumeMounts", {"mountPath": "/tmp"}, False),
])
def test_crd_cel_rules_refuse_the_same(field: str, item: dict[str, Any], ok: bool) -> None:
    assert cel_ok(field, item) is ok
    if field == "volumeMounts":  # the operator's check agrees
        template = {"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", **item}]}
        assert not pod_template_problems(PodTemplate.model_construct(
            volumes=[Volume(name="x", emptyDir={})], volume_mounts=[VolumeMount(name="x", **item)])) is ok, template


def test_image_pull_failure_points_at_the_pod_templates_pull_secrets() -> None:
    assert "spec.podTemplate.imagePullSecrets" in failures.MESSAGES[failures.R.IMAGE_PULL.value]
