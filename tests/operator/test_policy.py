"""The operator's policy check (controller/policy.py): table-driven, the same table as the chart's
ValidatingAdmissionPolicy test, so the operator and the API server enforce the same rules."""

from __future__ import annotations

import re
from typing import Any

import pytest
from op_fixtures import training
from policy_cases import CASES, POLICY

from splatops.api.models import parse_spec
from splatops.controller import policy as pol
from splatops.controller.settings import Settings


def rules(messages: list[str]) -> list[str]:
    return [re.match(r"policy (\w+):", m).group(1) for m in messages]  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_policy_violations(extra: dict[str, Any], expected: list[str]) -> None:
    spec = parse_spec(training(**extra)["spec"])
    assert rules(pol.policy_violations(spec, POLICY)) == expected


@pytest.mark.parametrize(("extra", "value"), [
    ({"image": "docker.io/evil/miner:1"}, "'docker.io/evil/miner:1'"),
    ({"priorityClassName": "system-node-critical"}, "'system-node-critical'"),
    ({"tolerations": [{"key": "spot", "operator": "Exists"}, {"operator": "Exists"}]}, "spec.tolerations[1]"),
    ({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}, "'node.kubernetes.io/not-ready'"),
    ({"nodeSelector": {"node-role.kubernetes.io/master": ""}}, "'node-role.kubernetes.io/master'"),
])
def test_message_names_the_value(extra: dict[str, Any], value: str) -> None:
    (message,) = pol.policy_violations(parse_spec(training(**extra)["spec"]), POLICY)
    assert value in message, message


@pytest.mark.parametrize(("image", "repository"), [
    ("ghcr.io/splatops/trainer:0.1.0", "ghcr.io/splatops/trainer"),
    ("localhost:5000/trainer", "localhost:5000/trainer"),
    ("localhost:5000/trainer:1@sha256:" + "0" * 64, "localhost:5000/trainer"),
    ("trainer", "trainer"),
])
def test_image_repository(image: str, repository: str) -> None:
    assert pol.image_repository(image) == repository


def test_settings_default_allows_only_the_trainer_repository() -> None:
    policy = Settings(trainer_image="registry.example/splatops/trainer:7").policy
    assert policy.allowed_image_prefixes == ("registry.example/splatops/trainer",)
    assert policy.allowed_priority_classes == ()
    assert "node.kubernetes.io/*" in policy.denied_toleration_keys


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLATOPS_OPERATOR_POLICY_ALLOWED_IMAGE_PREFIXES", "*")
    monkeypatch.setenv("SPLATOPS_OPERATOR_POLICY_ALLOWED_PRIORITY_CLASSES", "a, b")
    monkeypatch.setenv("SPLATOPS_OPERATOR_POLICY_DENIED_TOLERATION_KEYS", "")
    policy = Settings.from_env().policy
    assert policy.allowed_priority_classes == ("a", "b") and policy.denied_toleration_keys == ()
    spec = parse_spec(training(image="anything/at:all", tolerations=[{"key": "node.kubernetes.io/x", "operator": "Exists"}])["spec"])
    assert pol.policy_violations(spec, policy) == []
