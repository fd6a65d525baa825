"""The Helm chart, rendered by real Helm (helm-sdkpy) with default and non-default values."""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import custom_kinds
import helm_env
from helm_env import SCENARIOS, find, one
from splatops import names
from splatops.api.models import parse_spec
from splatops.controller.settings import Settings
from splatops.gateway.settings import GatewaySettings

K8S_VERSION = "1.33.0"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_rendered_object_is_valid(renders, scenario: str) -> None:
    """Built-in kinds against Kubernetes' schemas (kubernetes-validate, strict); the kopf and
    Prometheus Operator kinds against their CRD's schema or the fields we use (custom_kinds)."""
    objects = renders.objects(scenario)
    assert objects, "the chart rendered nothing"
    for obj in objects:
        if custom_kinds.is_custom(obj):
            custom_kinds.validate(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(honorlabels=True)),  # a typo
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval="30 seconds")),
        ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0]["relabelings"][0].update(action="rename")),
        ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0]["relabelings"][0].update(sourceLabels=["a.b"])),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].pop("expr")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "5 min"})),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(record="x")),  # alert and record
        ("PrometheusRule", lambda o: o["metadata"].update(lables={"a": "b"})),  # ObjectMeta, strict
        ("ClusterKopfPeering", lambda o: o.update(spec={"name": "x"})),  # the CRD has no spec: pruned
        ("ClusterKopfPeering", lambda o: o["metadata"].update(namespace="x")),  # cluster-scoped
        ("ClusterKopfPeering", lambda o: o.update(status="up")),
    ],
)
def test_custom_kind_validation_rejects_mistakes(renders, kind: str, change: Any) -> None:
    import copy

    obj = copy.deepcopy(one(renders.objects("monitoring"), kind))
    custom_kinds.validate(obj)  # the rendered one is valid
    change(obj)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError, AssertionError)):
        custom_kinds.validate(obj)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_renders_are_byte_identical(renders, tmp_path: pathlib.Path, scenario: str) -> None:
    """Every scenario rendered twice, each on a fresh cluster, gives the same bytes (no random
    values, no timestamps, no lookups): Argo CD never shows drift."""
    again = helm_env.render_manifest(tmp_path, SCENARIOS[scenario])
    assert again == renders.text(scenario)


def test_lint_is_clean() -> None:
    if not helm_env.helm_available():
        pytest.skip(helm_env.UNAVAILABLE)
    assert helm_env.lint_problems() == []


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
        ("eks", "node.kubernetes.io/instance-type", ["g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge", "g5.12xlarge",
                                                     "g5.16xlarge", "g5.24xlarge", "g5.48xlarge"], "nvidia.com/gpu"),
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
    assert settings.gpu_node_label_key == "node.kubernetes.io/instance-type"  # no GPU Feature Discovery needed
    assert (settings.default_cpu, settings.default_memory, settings.shm_size) == (defaults.default_cpu, defaults.default_memory, defaults.shm_size)
    assert (settings.unschedulable_grace, settings.provisioning_grace) == (defaults.unschedulable_grace, defaults.provisioning_grace)
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


def test_statefulset_is_governed_by_a_headless_service(renders) -> None:
    objects = renders.objects("default")
    sts = one(objects, "StatefulSet")
    governing = next(s for s in find(objects, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None", "spec.serviceName must name a headless Service"
    assert governing["metadata"]["namespace"] == sts["metadata"]["namespace"]
    assert governing["spec"]["selector"].items() <= pod_labels(sts).items()
    metrics = one(objects, "Service", "-metrics")
    assert metrics is not governing and metrics["spec"].get("clusterIP") != "None"


def test_service_monitor_scrapes_each_replica_once_with_the_trainings_labels(renders) -> None:
    objects = renders.objects("monitoring")
    sm = one(objects, "ServiceMonitor")
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s["metadata"]["name"] for s in find(objects, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert selected == [one(objects, "Service", "-metrics")["metadata"]["name"]], "not the headless Service too"
    # The operator's series carry the training's `namespace`: Prometheus must keep it.
    assert all(e["honorLabels"] is True for e in sm["spec"]["endpoints"])


def test_trainer_job_defaults_reach_the_operator(renders, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.backoffLimit/activeDeadlineSeconds/ttlSecondsAfterFinished -> the operator's env
    -> its Settings, read from a real environment as in the pod."""
    defaults = yaml.safe_load((helm_env.CHART / "values.yaml").read_text())["trainer"]
    assert (defaults["backoffLimit"], defaults["activeDeadlineSeconds"], defaults["ttlSecondsAfterFinished"]) == (3, 86400, 604800)
    for scenario, expected in (("default", (3, 86400, 604800)), ("trainer-defaults", (0, 0, 1000000))):
        env = _env(one(renders.objects(scenario), "StatefulSet"))
        assert (
            env["SPLATOPS_OPERATOR_DEFAULT_BACKOFF_LIMIT"],
            env["SPLATOPS_OPERATOR_DEFAULT_ACTIVE_DEADLINE_SECONDS"],
            env["SPLATOPS_OPERATOR_DEFAULT_TTL_SECONDS_AFTER_FINISHED"],
        ) == tuple(str(v) for v in expected)  # integers, never 1e+06
        for key in [k for k in os.environ if k.startswith("SPLATOPS_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if isinstance(value, str):
                monkeypatch.setenv(key, value)
        settings = Settings.from_env()
        assert (settings.default_backoff_limit, settings.default_active_deadline_seconds, settings.default_ttl_seconds_after_finished) == expected


def test_trainer_job_defaults_shape_the_jobs(renders) -> None:
    from splatops.controller import jobs

    example = yaml.safe_load((helm_env.ROOT / "examples" / "preview.yaml").read_text())
    training = {**example, "metadata": {**example["metadata"], "namespace": "splats", "uid": "0f0e0d0c-0000-4000-8000-000000000000", "generation": 1}}
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        training["spec"].pop(key, None)  # the chart's defaults apply
    spec = parse_spec(training["spec"])
    job = jobs.build_job(training, spec, _settings(one(renders.objects("trainer-defaults"), "StatefulSet")))["spec"]
    assert job["backoffLimit"] == 0 and "activeDeadlineSeconds" not in job and job["ttlSecondsAfterFinished"] == 1000000
    job = jobs.build_job(training, spec, _settings(one(renders.objects("default"), "StatefulSet")))["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"], job["ttlSecondsAfterFinished"]) == (3, 86400, 604800)


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


# Exactly what the operator calls (splatops/kubeapi.py) and what kopf needs, nothing more:
# kopf lists and watches its resources (level-triggered handlers: it writes no annotations or
# finalizers on trainings), PATCHes peering objects, and never GETs
# or PUTs them; it POSTs core v1 Events; the operator never deletes a Job (the garbage collector
# does, through the Job's ownerReference).
OPERATOR_RULES = {
    (names.GROUP, names.PLURAL, "list"),
    (names.GROUP, names.PLURAL, "watch"),
    (names.GROUP, f"{names.PLURAL}/status", "patch"),  # kube.patch_status
    (names.GROUP, f"{names.PLURAL}/finalizers", "update"),  # blockOwnerDeletion on the Job's ownerReference
    ("batch", "jobs", "get"),  # kube.read_job
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),  # kube.create_job
    ("batch", "jobs", "patch"),  # kube.patch_job (suspend, admit)
    ("batch", "jobs", "delete"),  # kube.delete_job (an OOM retry under spec.oom.policy Downscale)
    ("", "pods", "list"),  # kube.job_pods, kopf's pod index
    ("", "pods", "watch"),
    ("", "pods/log", "get"),  # kube.log_tail
    ("", "persistentvolumeclaims", "get"),  # a training's scene PVC exists
    ("", "events", "create"),  # kopf's posted Events
    ("", "events", "list"),  # kube.pod_events: Karpenter's Nominated on a long-Unschedulable pod
    ("kueue.x-k8s.io", "workloads", "list"),  # kube.kueue_workloads: Kueue's pending reason
}
DISCOVERY_RULES = {  # kopf watches CRDs in any mode; namespaces only when not cluster-wide
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
NAMESPACE_RULES = {("", "namespaces", "list"), ("", "namespaces", "watch")}
PEERING_VERBS = {"list", "watch", "patch"}


def test_cluster_wide_rbac_is_least_privilege(renders) -> None:
    objects = renders.objects("default")
    assert not find(objects, "Role")
    operator = _rules(one(objects, "ClusterRole", "-operator"))
    discovery = _rules(one(objects, "ClusterRole", "-discovery"))
    assert operator == OPERATOR_RULES
    assert discovery == DISCOVERY_RULES | {("kopf.dev", "clusterkopfpeerings", v) for v in PEERING_VERBS}
    for binding in ("-operator", "-discovery"):
        crb = one(objects, "ClusterRoleBinding", binding)
        assert crb["roleRef"]["name"].endswith(binding)
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": _service_account(objects), "namespace": "splatops-system"}]


def _service_account(objects: list[dict[str, Any]]) -> str:
    return one(objects, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]


def test_namespaced_rbac_has_a_role_per_namespace(renders) -> None:
    objects = renders.objects("namespaced")
    roles = find(objects, "Role", "-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding", "-operator")) == ["team-a", "team-b"]
    for role in roles:
        assert _rules(role) == OPERATOR_RULES | {("kopf.dev", "kopfpeerings", v) for v in PEERING_VERBS}
    assert not find(objects, "ClusterRole", "-operator"), "no cluster-wide access to trainings"
    assert _rules(one(objects, "ClusterRole", "-discovery")) == DISCOVERY_RULES | NAMESPACE_RULES
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
    assert _rules(role) == {(names.GROUP, names.PLURAL, v) for v in ("create", "get", "list")} | {
        ("", "events", "list"), ("", "pods", "list"), ("", "pods/log", "get"),  # the web page's Events and log lines
    }  # test_gateway_rbac_runtime
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
        ({"trainer": {"backoffLimit": -1}}, "backoffLimit"),
        ({"trainer": {"activeDeadlineSeconds": "1d"}}, "activeDeadlineSeconds"),
        ({"trainer": {"ttlSecondsAfterFinished": 1.5}}, "ttlSecondsAfterFinished"),
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


@pytest.mark.parametrize("preset", ["eks", "gfd", "eks-managed", "karpenter", "eks-auto", "gke-l4", "aks-a10"])
def test_trainer_jobs_built_with_each_preset_are_valid(renders, preset: str) -> None:
    """End to end: chart values -> operator env -> Settings -> the operator's real Job builder."""
    from splatops.controller import jobs

    settings = _settings(one(renders.objects(f"preset-{preset}"), "StatefulSet"))
    example = yaml.safe_load((helm_env.ROOT / "examples" / "production.yaml").read_text())
    training = {**example, "metadata": {**example["metadata"], "namespace": "splats", "uid": "0f0e0d0c-0000-4000-8000-000000000000", "generation": 1}}
    job = jobs.build_job(training, parse_spec(training["spec"]), settings)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": settings.gpu_node_label_key, "operator": "In", "values": settings.gpu_node_label_values} in terms[0]["matchExpressions"]
    assert all(t in pod["tolerations"] for t in settings.tolerations)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[names.LABEL_COMPONENT] == names.COMPONENT_TRAINER and labels[names.LABEL_MANAGED_BY] == names.MANAGED_BY


def test_trainer_pod_template_reaches_the_jobs(renders) -> None:
    """trainer.podTemplate -> the operator's env -> Settings -> the Job: the default
    karpenter.sh/do-not-disrupt annotation kept under user values, a training's own template merged."""
    from splatops.controller import jobs

    example = yaml.safe_load((helm_env.ROOT / "examples" / "production.yaml").read_text())
    training = {**example, "metadata": {**example["metadata"], "namespace": "splats", "uid": "0f0e0d0c-0000-4000-8000-000000000000", "generation": 1}}
    training["spec"] = {**training["spec"], "podTemplate": {"env": [{"name": "AWS_REGION", "value": "eu-west-1"}]}}
    for scenario in ("default", "pod-template"):
        job = jobs.build_job(training, parse_spec(training["spec"]), _settings(one(renders.objects(scenario), "StatefulSet")))
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        pod = job["spec"]["template"]
        assert pod["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
        assert {"name": "AWS_REGION", "value": "eu-west-1"} in pod["spec"]["containers"][0]["env"]
    assert pod["spec"]["serviceAccountName"] == "splat-s3" and pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert {"name": "cache", "mountPath": "/cache"} in pod["spec"]["containers"][0]["volumeMounts"]
    assert [e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "AWS_REGION"] == ["eu-west-1"]


@pytest.mark.parametrize("setup", helm_env.EKS_VALUES)
def test_eks_values_files_give_jobs_that_fit_a_stock_eks_cluster(renders, setup: str) -> None:
    """docs/eks.md's values files, through real Helm, the operator's env and its Job builder: g5
    by instance type (no GFD label), the GPU taint tolerated, requests that fit g5.xlarge, the
    do-not-disrupt annotation, and a NodePool (where one ships) that launches what the Job asks."""
    from splatops.controller import jobs

    settings = _settings(one(renders.objects(f"eks-{setup}"), "StatefulSet"))
    example = yaml.safe_load((helm_env.ROOT / "examples" / "preview.yaml").read_text())
    training = {**example, "metadata": {**example["metadata"], "namespace": "splats", "uid": "0f0e0d0c-0000-4000-8000-000000000000", "generation": 1}}
    training["spec"] = {k: v for k, v in training["spec"].items() if k != "resources"}
    job = jobs.build_job(training, parse_spec(training["spec"]), settings)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]
    (term,) = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expr,) = term["matchExpressions"]
    assert expr["key"] == "node.kubernetes.io/instance-type" and "g5.xlarge" in expr["values"]
    assert all(v.startswith("g5.") for v in expr["values"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    requests = pod["spec"]["containers"][0]["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("3", "12Gi")  # fits g5.xlarge: test_eks_defaults.py
    assert settings.unschedulable_grace >= 900
    nodepool_file = helm_env.ROOT / "examples" / "eks" / f"{setup}-nodepool.yaml"
    if nodepool_file.exists():
        (nodepool,) = [d for d in yaml.safe_load_all(nodepool_file.read_text()) if d["kind"] == "NodePool"]
        template = nodepool["spec"]["template"]["spec"]
        families = {r["key"]: r["values"] for r in template["requirements"] if r["operator"] == "In"}
        assert [f for k, f in families.items() if k.endswith("/instance-family")] == [["g5"]]
        assert all(any(t["key"] == tol["key"] for tol in pod["spec"]["tolerations"]) for t in template["taints"])
        assert settings.provisioning_grace > settings.unschedulable_grace


def test_eks_storage_classes_are_valid() -> None:
    docs = list(yaml.safe_load_all((helm_env.ROOT / "examples" / "eks" / "storage.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    efs = next(d for d in docs if d["provisioner"] == "efs.csi.aws.com")
    assert efs["parameters"]["uid"] == efs["parameters"]["gid"] == str(names.IMAGE_UID)
