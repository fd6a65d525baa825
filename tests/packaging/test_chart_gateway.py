"""The chart's gateway through real Helm: its namespace (with its scene claim), probes,
authentication, rate limits, and the NetworkPolicies of the gateway and the operator."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest

import helm_env
from helm_env import find, one
from splatops.gateway.settings import GatewaySettings

K8S_VERSION = "1.33.0"
GATEWAY_KINDS = ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service")


def _pod(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    return one(objects, kind, suffix)["spec"]["template"]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _settings(container: dict[str, Any]) -> GatewaySettings:
    env = _env(container)
    known = {f"SPLATOPS_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) <= known, f"env the gateway does not read: {set(env) - known}"
    fields = {k.removeprefix("SPLATOPS_GATEWAY_").lower(): v for k, v in env.items()}
    fields.pop("auth_token_file", None)  # a path in the pod: checked at the gateway's start
    return GatewaySettings(**fields)


@pytest.mark.parametrize("scenario, namespace", [("gateway", "splats"), ("gateway-secured", "splats")])
def test_the_gateway_runs_where_its_claim_and_trainings_are(renders, scenario, namespace) -> None:
    """A pod mounts only claims of its own namespace: every gateway object is in the trainings'."""
    objects = renders.objects(scenario)
    for kind in GATEWAY_KINDS:
        assert one(objects, kind, "-gateway")["metadata"]["namespace"] == namespace, kind
    pod = _pod(objects, "Deployment", "-gateway")
    assert _settings(pod["spec"]["containers"][0]).namespace == namespace
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "scenes")["persistentVolumeClaim"]
    assert claim == {"claimName": "scenes", "readOnly": True}
    binding = one(objects, "RoleBinding", "-gateway")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"],
                                      "namespace": namespace}


def test_without_a_training_namespace_the_gateway_is_in_the_release_namespace(renders, tmp_path) -> None:
    objects = helm_env.render(tmp_path, {"gateway": {"enabled": True}})
    assert {one(objects, kind, "-gateway")["metadata"]["namespace"] for kind in GATEWAY_KINDS} == {"splatops-system"}


@pytest.mark.parametrize("values, message", [
    ({"watch": {"namespaces": ["team-a"]}, "gateway": {"enabled": True, "trainingNamespace": "team-b"}},
     'creates trainings in namespace "team-b", which the operator does not watch'),
    ({"watch": {"namespaces": ["team-a"]}, "gateway": {"enabled": True}},
     'creates trainings in namespace "splatops-system", which the operator does not watch'),
    ({"gateway": {"enabled": True, "auth": {"token": "x", "existingSecret": "mine"}}}, "not both"),
    ({"gateway": {"enabled": True, "auth": {"proxyHeader": "X Forwarded User"}}}, "proxyHeader"),
    ({"gateway": {"rateLimit": {"burst": 0}}}, "burst"),
    ({"networkPolicy": {"enabled": True, "egress": {"apiServerPorts": []}}}, "apiServerPorts"),
    ({"networkPolicy": {"gateway": {"allowedNamespaces": ["Not_A_Namespace"]}}}, "allowedNamespaces"),
])
def test_bad_gateway_values_are_refused(renders, tmp_path: pathlib.Path, values, message) -> None:
    with pytest.raises(helm_env.HelmFailed, match=message):
        helm_env.render_manifest(tmp_path, values)


def test_watched_training_namespace_renders(renders, tmp_path) -> None:
    objects = helm_env.render(tmp_path, {"watch": {"namespaces": ["team-a"]},
                                         "gateway": {"enabled": True, "trainingNamespace": "team-a"}})
    assert one(objects, "Deployment", "-gateway")["metadata"]["namespace"] == "team-a"


def test_probes_follow_the_api_connection(renders) -> None:
    container = _pod(renders.objects("gateway"), "Deployment", "-gateway")["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    settings = _settings(container)
    assert (settings.auth_token, settings.auth_proxy_header) == (None, None)  # auth is opt-in
    assert (settings.post_rate_per_minute, settings.post_burst) == (6, 10)


def test_auth_token_secret_is_mounted_where_the_gateway_reads_it(renders) -> None:
    objects = renders.objects("gateway-secured")
    pod = _pod(objects, "Deployment", "-gateway")
    container = pod["spec"]["containers"][0]
    env = _env(container)
    secret = one(objects, "Secret", "-gateway-auth")
    assert secret["metadata"]["namespace"] == "splats" and set(secret["data"]) == {"token"}
    volume = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert env["SPLATOPS_GATEWAY_AUTH_TOKEN_FILE"] == f"{mount['mountPath']}/token"
    settings = _settings(container)
    assert (settings.auth_proxy_header, settings.post_rate_per_minute, settings.post_burst) == ("X-Auth-Request-User", 2, 4)


def test_existing_auth_secret_is_used_not_created(renders, tmp_path) -> None:
    objects = helm_env.render(tmp_path, {"gateway": {"enabled": True, "auth": {"existingSecret": "gw-token", "secretKey": "t"}}})
    assert not find(objects, "Secret")
    pod = _pod(objects, "Deployment", "-gateway")
    volume = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    assert volume["secret"] == {"secretName": "gw-token", "items": [{"key": "t", "path": "t"}]}
    assert _env(pod["spec"]["containers"][0])["SPLATOPS_GATEWAY_AUTH_TOKEN_FILE"].endswith("/t")


def _selects(policy: dict[str, Any], pod_template: dict[str, Any]) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= pod_template["metadata"]["labels"].items()


def test_network_policies(renders) -> None:
    objects = renders.objects("gateway-secured")
    operator, gateway = one(objects, "NetworkPolicy", "-operator"), one(objects, "NetworkPolicy", "-gateway")
    for policy in (operator, gateway):
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        dns, api = policy["spec"]["egress"]
        assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
        assert api == {"ports": [{"protocol": "TCP", "port": 443}], "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]}
    statefulset = one(objects, "StatefulSet")
    assert _selects(operator, statefulset["spec"]["template"]) and operator["metadata"]["namespace"] == "splatops-system"
    metrics_port = next(p for p in statefulset["spec"]["template"]["spec"]["containers"][0]["ports"] if p["name"] == "metrics")
    assert operator["spec"]["ingress"] == [{
        "ports": [{"protocol": "TCP", "port": metrics_port["containerPort"]}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    }]
    deployment = _pod(objects, "Deployment", "-gateway")
    assert _selects(gateway, deployment) and gateway["metadata"]["namespace"] == "splats"
    assert gateway["spec"]["ingress"] == [{
        "ports": [{"protocol": "TCP", "port": deployment["spec"]["containers"][0]["ports"][0]["containerPort"]}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
                 {"podSelector": {"matchLabels": {"app": "oauth2-proxy"}}}],
    }]
    assert not find(renders.objects("gateway"), "NetworkPolicy")  # off by default


def test_network_policy_defaults_allow_the_own_namespace_and_any_api_address(renders, tmp_path) -> None:
    objects = helm_env.render(tmp_path, {"networkPolicy": {"enabled": True}})
    policy = one(objects, "NetworkPolicy", "-operator")  # no gateway: only the operator's
    assert not find(objects, "NetworkPolicy", "-gateway")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    assert policy["spec"]["egress"][1] == {"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]}
    (tmp_path / "b").mkdir()
    no_egress = helm_env.render(tmp_path / "b", {"networkPolicy": {"enabled": True, "egress": {"enabled": False}}})
    assert one(no_egress, "NetworkPolicy", "-operator")["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in one(no_egress, "NetworkPolicy", "-operator")["spec"]
