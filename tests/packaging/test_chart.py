"""The Helm chart, rendered by real Helm (helm-sdkpy) with default and non-default values."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

import helm_env
from helm_env import SCENARIOS, find, one
from splatops import names
from splatops.controller.settings import Settings
from splatops.gateway.settings import GatewaySettings

K8S_VERSION = "1.33.0"
# Kinds with no schema in kubernetes-validate: checked structurally below instead.
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/", "splatops.dev/")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_is_valid_kubernetes(renders, scenario: str) -> None:
    objects = renders.objects(scenario)
    assert objects, "the chart rendered nothing"
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            assert obj["metadata"]["name"] and isinstance(obj.get("spec", {}), dict)
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_renders_are_byte_identical(renders, tmp_path: pathlib.Path) -> None:
    again = helm_env.render_manifest(tmp_path, SCENARIOS["monitoring"])
    assert again == renders.text("monitoring")
    assert "randAlpha" not in again and "now" not in json.dumps(SCENARIOS)


def test_lint_is_clean() -> None:
    if not helm_env.HELM_PYTHON.exists():
        pytest.skip("no .venv-helm")
    result = helm_env.lint()
    serious = [m for m in result["Messages"] if m["Severity"] >= 2]  # 2 warning, 3 error
    assert result["Errors"] in (None, []) and not serious, result


def _env(sts: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}


def _settings(sts: dict[str, Any], ordinal: int = 1) -> Settings:
    """The operator's real settings, parsed from the env the chart gives it (names must match)."""
    env = _env(sts)
    known = {f"SPLATOPS_OPERATOR_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, f"env the operator does not read: {set(env) - known}"
    assert env["SPLATOPS_OPERATOR_PRIORITY"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    env["SPLATOPS_OPERATOR_PRIORITY"] = str(ordinal)  # what the kubelet resolves it to
    return Settings.from_env(**{k.removeprefix("SPLATOPS_OPERATOR_").lower(): v for k, v in env.items()})


@pytest.mark.parametrize(
    ("preset", "key", "values", "taint_key"),
    [
        ("gfd", "nvidia.com/gpu.product", ["NVIDIA-A10G"], "nvidia.com/gpu"),
        ("eks-managed", "node.kubernetes.io/instance-type", ["g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge", "g5.16xlarge"], "nvidia.com/gpu"),
        ("karpenter", "karpenter.k8s.aws/instance-gpu-name", ["a10g"], "nvidia.com/gpu"),
        ("eks-auto", "eks.amazonaws.com/instance-gpu-name", ["a10g"], "nvidia.com/gpu"),
        ("gke-l4", "cloud.google.com/gke-accelerator", ["nvidia-l4"], "nvidia.com/gpu"),
        ("aks-a10", "node.kubernetes.io/instance-type", ["Standard_NV36ads_A10_v5"], "sku"),
    ],
)
def test_gpu_presets_reach_the_operator_settings(renders, preset, key, values, taint_key) -> None:
    settings = _settings(one(renders.objects(f"preset-{preset}"), "StatefulSet"))
    assert settings.gpu_node_label_key == key
    assert settings.gpu_node_label_values == values
    assert taint_key in {t["key"] for t in settings.tolerations}
    assert all(t["effect"] == "NoSchedule" for t in settings.tolerations)


def test_default_preset_is_the_operators_default(renders) -> None:
    settings = _settings(one(renders.objects("default"), "StatefulSet"))
    defaults = Settings()
    assert (settings.gpu_node_label_key, settings.gpu_node_label_values) == (defaults.gpu_node_label_key, defaults.gpu_node_label_values)
    assert settings.tolerations == defaults.tolerations
    assert settings.trainer_image == "ghcr.io/splatops/trainer:0.1.0"
    assert settings.namespaces == [] and not settings.standalone  # cluster-wide: kopf uses ClusterKopfPeering


def test_operator_pods_are_safe_to_run_twice(renders) -> None:
    objects = renders.objects("default")
    sts = one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = _settings(sts)
    assert sts["spec"]["replicas"] == 2 and settings.peering_mandatory
    assert {_settings(sts, i).priority for i in (0, 1)} == {0, 1}  # distinct kopf priorities
    peering = one(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == settings.peering_name
    # Probes on kopf's liveness endpoint, at the port and path the operator serves it.
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == get["port"])
        assert (port, get["path"]) == (settings.liveness_port, settings.liveness_path)
    # Restricted pod security.
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(sts).items()
    service = one(objects, "Service", "-metrics")
    assert service["spec"]["selector"].items() <= pod_labels(sts).items()
    assert service["spec"]["ports"][0]["port"] == settings.metrics_port


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


OPERATOR_NEEDS = {
    (names.GROUP, names.PLURAL, "watch"),
    (names.GROUP, names.PLURAL, "patch"),
    (names.GROUP, f"{names.PLURAL}/status", "patch"),
    (names.GROUP, f"{names.PLURAL}/finalizers", "update"),  # blockOwnerDeletion on the Job's ownerReference
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("", "pods", "list"),
    ("", "pods/log", "get"),
    ("", "events", "create"),
}


def test_cluster_wide_rbac_is_least_privilege(renders) -> None:
    objects = renders.objects("default")
    assert not find(objects, "Role")
    operator = _rules(one(objects, "ClusterRole", "-operator"))
    discovery = _rules(one(objects, "ClusterRole", "-discovery"))
    assert OPERATOR_NEEDS <= operator
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in discovery
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in discovery
    everything = operator | discovery
    assert not {r for r in everything if "*" in r}, "no wildcards"
    assert not {r for r in everything if r[1] in ("secrets", "configmaps")}
    assert {v for (_, res, v) in everything if res in ("pods", "pods/log")} == {"get", "list", "watch"}
    assert not {v for (_, res, v) in everything if res == "customresourcedefinitions"} - {"get", "list", "watch"}
    assert {v for (_, res, v) in everything if res == "events"} == {"create"}


def test_namespaced_rbac_has_a_role_per_namespace(renders) -> None:
    objects = renders.objects("namespaced")
    roles = find(objects, "Role", "-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding", "-operator")) == ["team-a", "team-b"]
    for role in roles:
        assert OPERATOR_NEEDS | {("kopf.dev", "kopfpeerings", "patch")} <= _rules(role)
    assert not find(objects, "ClusterRole", "-operator"), "no cluster-wide access to trainings"
    discovery = _rules(one(objects, "ClusterRole", "-discovery"))
    assert {r[1] for r in discovery} == {"customresourcedefinitions", "namespaces"}
    assert sorted(p["metadata"]["namespace"] for p in find(objects, "KopfPeering")) == ["team-a", "team-b"]
    assert not find(objects, "ClusterKopfPeering")
    settings = _settings(one(objects, "StatefulSet"))
    assert settings.namespaces == ["team-a", "team-b"]  # namespaced: kopf uses a KopfPeering in each


def test_single_replica_renders_without_pdb(renders) -> None:
    objects = renders.objects("single-replica")
    assert not find(objects, "PodDisruptionBudget")
    assert one(objects, "StatefulSet")["spec"]["replicas"] == 1
    assert not _settings(one(objects, "StatefulSet")).peering_mandatory


def test_gateway(renders) -> None:
    objects = renders.objects("gateway")
    deployment = one(objects, "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "gateway" and container["ports"][0]["containerPort"] == 8000
    mount = next(m for m in container["volumeMounts"] if m["name"] == "scenes")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "scenes")
    assert volume["persistentVolumeClaim"] == {"claimName": "scenes", "readOnly": True}
    env = {e["name"]: e["value"] for e in container["env"]}
    known = {f"SPLATOPS_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) <= known, f"env the gateway does not read: {set(env) - known}"
    settings = GatewaySettings(**{k.removeprefix("SPLATOPS_GATEWAY_").lower(): v for k, v in env.items()})
    assert (settings.namespace, settings.claim_name, settings.mount_path) == ("splats", "scenes", mount["mountPath"])
    role = one(objects, "Role", "-gateway")
    assert role["metadata"]["namespace"] == "splats"
    assert _rules(role) == {(names.GROUP, names.PLURAL, v) for v in ("create", "get", "list", "watch")}
    binding = one(objects, "RoleBinding", "-gateway")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert one(objects, "Service", "-gateway")["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert not find(renders.objects("default"), "Deployment")


def test_monitoring_objects(renders) -> None:
    objects = renders.objects("monitoring")
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objects, "Service", "-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        names.LABEL_COMPONENT: names.COMPONENT_TRAINER,
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"  # the trainer container's port name
    training_label = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", names.LABEL_TRAINING)
    assert {"sourceLabels": [training_label], "targetLabel": "name"} in endpoint["relabelings"]
    rule = one(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"SplatopsTrainingFailed", "SplatopsTrainingNoProgress", "SplatopsTrainingQueuedTooLong", "SplatopsOperatorDown"} <= set(alerts)
    assert "> 1200" in alerts["SplatopsTrainingNoProgress"]["expr"]  # noProgressMinutes: 20
    dashboard = one(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["splatops.json"]) == json.loads((helm_env.CHART / "files" / "dashboard.json").read_text())
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert not find(renders.objects("default"), kind)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpu": {"preset": "tpu"}}, 'gpu.preset "tpu" is not one of'),
        ({"operator": {"replicas": "two"}}, "replicas"),
        ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),
        ({"trainer": {"metricsPort": 70000}}, "metricsPort"),
        ({"unknownKey": 1}, "unknownKey"),
    ],
)
def test_bad_values_are_refused(renders, tmp_path: pathlib.Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_env.HelmFailed, match=message):
        helm_env.render_manifest(tmp_path, values)


def test_values_are_documented_one_by_one() -> None:
    """Every leaf value in values.yaml has a comment above it (or above its parent block)."""
    lines = (helm_env.CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        above = lines[i - 1].strip() if i else ""
        is_block = stripped.endswith(":")
        indent = len(line) - len(line.lstrip())
        if not above.startswith("#") and not is_block and indent <= 4 and not _inside_documented_map(lines, i):
            undocumented.append(stripped)
    assert not undocumented, undocumented


def _inside_documented_map(lines: list[str], i: int) -> bool:
    """Entries of a map value (resources, labels, presets...) are documented by the map's comment."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    for j in range(i - 1, -1, -1):
        line = lines[j]
        if line.strip() and not line.strip().startswith("#") and len(line) - len(line.lstrip()) < indent:
            return j > 0 and lines[j - 1].strip().startswith("#")
    return False


def test_schema_accepts_the_default_values() -> None:
    import jsonschema

    schema = json.loads((helm_env.CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((helm_env.CHART / "values.yaml").read_text()), schema)
    assert set(schema["properties"]["gpu"]["properties"]) == {"preset", "presets"}


@pytest.mark.parametrize("preset", ["gfd", "eks-managed", "karpenter", "eks-auto", "gke-l4", "aks-a10"])
def test_trainer_jobs_built_with_each_preset_are_valid(renders, preset: str) -> None:
    """End to end: chart values -> operator env -> Settings -> the operator's real Job builder."""
    from splatops.controller import jobs

    settings = _settings(one(renders.objects(f"preset-{preset}"), "StatefulSet"))
    example = yaml.safe_load((helm_env.ROOT / "examples" / "production.yaml").read_text())
    training = {**example, "metadata": {**example["metadata"], "namespace": "splats", "uid": "0f0e0d0c-0000-4000-8000-000000000000", "generation": 1}}
    job = jobs.build_job(training, settings)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": settings.gpu_node_label_key, "operator": "In", "values": settings.gpu_node_label_values} in terms[0]["matchExpressions"]
    assert all(t in pod["tolerations"] for t in settings.tolerations)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[names.LABEL_COMPONENT] == names.COMPONENT_TRAINER and labels[names.LABEL_MANAGED_BY] == names.MANAGED_BY
