"""The chart's ValidatingAdmissionPolicy: rendered by real Helm where the API server serves it
(.Capabilities), valid against the Kubernetes schema, and its CEL evaluated (cel-python) on the
same table of trainings as the operator's own check (tests/operator/policy_cases.py)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import celpy
import helm_env
import kubernetes_validate
import pytest
import testkit
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from policy_cases import CASES, POLICY_VALUES  # noqa: E402

from splatops import names  # noqa: E402

CHART = helm_env.CHART
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
HELM = helm_env.HELM_BIN  # `helm template` with --api-versions: the real binary only, no helm-sdkpy fallback
pytestmark = pytest.mark.skipif(not HELM.exists(), reason=helm_env.UNAVAILABLE)
ENV = celpy.Environment()


def render(tmp_path: pathlib.Path, values: dict[str, Any], *api_versions: str) -> list[dict[str, Any]]:
    """`helm template`, as for an API server that serves `api_versions` besides Helm's defaults."""
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    args = [str(HELM), "template", "t", str(CHART), "-n", "splatops-system", "--kube-version", "1.31.0", "-f", str(path)]
    for api in api_versions:
        args += ["--api-versions", api]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    objects = render(tmp_path_factory.mktemp("vap"), {"policy": POLICY_VALUES}, VAP_API)
    (vap,) = of_kind(objects, "ValidatingAdmissionPolicy")
    return vap


def evaluate(vap: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """The messages of the validations `obj` fails, as the API server computes them."""
    variables: dict[str, Any] = {}

    def run(expression: str) -> Any:
        activation = {"object": celpy.json_to_cel(obj), "variables": celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})}
        result = ENV.program(ENV.compile(expression)).evaluate(activation)
        if isinstance(result, celpy.CELEvalError):  # the API server would deny with an error (failurePolicy Fail)
            raise AssertionError(f"CEL error {result} in {expression}")
        return result

    for var in vap["spec"]["variables"]:
        variables[var["name"]] = run(var["expression"])
    failed = []
    for rule in vap["spec"]["validations"]:
        if not bool(run(rule["expression"])):
            failed.append(str(run(rule["messageExpression"])) if "messageExpression" in rule else rule["message"])
    return failed


def training(**spec: Any) -> dict[str, Any]:
    return testkit.training("t", **spec)


@pytest.mark.parametrize(("extra", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_cel_agrees_with_the_operator(policy: dict[str, Any], extra: dict[str, Any], expected: list[str]) -> None:
    messages = evaluate(policy, training(**extra))
    assert {re.match(r"policy (\w+):", m).group(1) for m in messages} == set(expected), messages  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "value"), [
    ({"image": "docker.io/evil/miner:1"}, "spec.image docker.io/evil/miner:1 is not allowed"),
    ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName system-node-critical"),
    ({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}, "key node.kubernetes.io/not-ready"),
    ({"nodeSelector": {"node-role.kubernetes.io/master": ""}}, "node label node-role.kubernetes.io/master in spec.nodeSelector"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "Exists"},
                              {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}]}}}},
     "node label node-role.kubernetes.io/control-plane in spec.affinity"),
])
def test_cel_message_names_the_value(policy: dict[str, Any], extra: dict[str, Any], value: str) -> None:
    (message,) = evaluate(policy, training(**extra))
    assert value in message, message


def test_cel_survives_a_match_expression_without_key(policy: dict[str, Any]) -> None:
    """The CRD keeps spec.affinity free-form (the operator checks its shape later): a malformed
    term must not make the CEL fail (failurePolicy Fail would deny with an evaluation error)."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"operator": "Exists"}, {"key": "node-role.kubernetes.io/master", "operator": "Exists"}]}]}}}
    (message,) = evaluate(policy, training(affinity=affinity))
    assert "node label node-role.kubernetes.io/master in spec.affinity" in message
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"].pop()
    assert evaluate(policy, training(affinity=affinity)) == []


def test_default_allows_only_the_trainer_repository(tmp_path: pathlib.Path) -> None:
    objects = render(tmp_path, {"trainer": {"image": {"repository": "registry.example/splatops/trainer"}}}, VAP_API)
    (vap,) = of_kind(objects, "ValidatingAdmissionPolicy")
    assert evaluate(vap, training(image="registry.example/splatops/trainer:2")) == []
    assert [m.split(":")[0] for m in evaluate(vap, training(image="ghcr.io/splatops/trainer:0.1.0"))] == [
        "policy allowedImagePrefixes"]
    (sts,) = of_kind(objects, "StatefulSet")
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPLATOPS_OPERATOR_POLICY_ALLOWED_IMAGE_PREFIXES"] == "registry.example/splatops/trainer"
    assert env["SPLATOPS_OPERATOR_POLICY_ALLOWED_PRIORITY_CLASSES"] == ""
    assert env["SPLATOPS_OPERATOR_POLICY_DENIED_TOLERATION_KEYS"].startswith("node.kubernetes.io/*,")


def test_manifests_valid_and_binding_scoped_to_watched_namespaces(tmp_path: pathlib.Path) -> None:
    objects = render(tmp_path, {"watch": {"namespaces": ["team-a", "team-b"]}}, VAP_API)
    (vap,) = of_kind(objects, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    for obj in (vap, binding):
        kubernetes_validate.validate(obj, "1.30", strict=True)
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (expr,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    assert vap["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == [names.PLURAL]


def test_installed_by_helm_where_the_api_server_serves_it(tmp_path: pathlib.Path) -> None:
    """`helm install` against an API server whose discovery has v1 ValidatingAdmissionPolicy
    (the emulator's: Kubernetes 1.30+) installs both objects by default."""
    objects = helm_env.render(tmp_path)
    vap = helm_env.one(objects, "ValidatingAdmissionPolicy")
    assert helm_env.one(objects, "ValidatingAdmissionPolicyBinding")["spec"]["policyName"] == vap["metadata"]["name"]


@pytest.mark.parametrize(("values", "apis"), [
    ({}, ()),  # helm template's default API versions lack v1 ValidatingAdmissionPolicy (as before Kubernetes 1.30)
    ({"policy": {"validatingAdmissionPolicy": {"enabled": False}}}, (VAP_API,)),
], ids=["api-missing", "disabled"])
def test_not_rendered_without_the_api_or_when_disabled(tmp_path: pathlib.Path, values: dict[str, Any], apis: tuple[str, ...]) -> None:
    objects = render(tmp_path, values, *apis)
    assert not of_kind(objects, "ValidatingAdmissionPolicy") and not of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert of_kind(objects, "StatefulSet")  # the operator still enforces the policy


def test_log_values_reach_the_operator(tmp_path: pathlib.Path) -> None:
    """operator.logFormat/logLevel (not policy, but rendered the same way): the operator's env."""
    (sts,) = of_kind(render(tmp_path, {"operator": {"logFormat": "json", "logLevel": "DEBUG"}}), "StatefulSet")
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPLATOPS_OPERATOR_LOG_FORMAT"] == "json" and env["SPLATOPS_OPERATOR_LOG_LEVEL"] == "DEBUG"
    from splatops.controller.settings import Settings

    settings = Settings(**{k.removeprefix("SPLATOPS_OPERATOR_").lower(): v for k, v in env.items()
                           if k.startswith("SPLATOPS_OPERATOR_") and v is not None})
    assert settings.log_format == "json" and settings.policy.allowed_image_prefixes == ("ghcr.io/splatops/trainer",)
