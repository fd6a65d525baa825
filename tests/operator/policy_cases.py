"""The policy cases shared by the operator's check (test_policy.py) and the chart's
ValidatingAdmissionPolicy evaluated in CEL (tests/packaging/test_policy_chart.py): one table,
so the two implementations cannot drift apart."""

from __future__ import annotations

from typing import Any

from splatops.controller import policy as pol

# The policy both sides are configured with (chart values in POLICY_VALUES).
POLICY = pol.Policy(
    allowed_image_prefixes=("registry.example/splatops/trainer", "registry.example/team/"),
    allowed_priority_classes=("gpu-batch",),
)
POLICY_VALUES: dict[str, Any] = {
    "allowedImagePrefixes": list(POLICY.allowed_image_prefixes),
    "allowedPriorityClasses": list(POLICY.allowed_priority_classes),
}

I, P, B, T, N = pol.IMAGES, pol.PRIORITY_CLASSES, pol.BLANKET_TOLERATION, pol.TOLERATION_KEYS, pol.NODE_LABEL_KEYS


def _required(key: str) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": key, "operator": "Exists"}]}]}}}


def _preferred(key: str) -> dict[str, Any]:
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 5, "preference": {"matchExpressions": [{"key": key, "operator": "Exists"}]}}]}}


# (id, extra spec fields, the rules broken in order)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("defaults", {}, []),
    ("image-tag", {"image": "registry.example/splatops/trainer:2"}, []),
    ("image-digest", {"image": "registry.example/splatops/trainer@sha256:" + "a" * 64}, []),
    ("image-under-path", {"image": "registry.example/team/custom:1"}, []),
    ("image-other-registry", {"image": "docker.io/evil/miner:1"}, [I]),
    ("image-lookalike-repo", {"image": "registry.example/splatops/trainer-evil:1"}, [I]),
    ("image-lookalike-path", {"image": "registry.example/teammate/x:1"}, [I]),
    ("priority-allowed", {"priorityClassName": "gpu-batch"}, []),
    ("priority-system", {"priorityClassName": "system-node-critical"}, [P]),
    ("toleration-keyed", {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute"}]}, []),
    ("toleration-blanket", {"tolerations": [{"operator": "Exists"}]}, [B]),
    ("toleration-blanket-effect", {"tolerations": [{"key": "spot", "operator": "Exists"},
                                                   {"operator": "Exists", "effect": "NoSchedule"}]}, [B]),
    ("toleration-node-condition", {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                                    "effect": "NoExecute"}]}, [T]),
    ("toleration-control-plane", {"tolerations": [{"key": "node-role.kubernetes.io/control-plane",
                                                   "operator": "Exists", "effect": "NoSchedule"}]}, [T]),
    ("pod-template-toleration-keyed", {"podTemplate": {"tolerations": [{"key": "dedicated", "operator": "Equal",
                                                                         "value": "ml", "effect": "NoSchedule"}]}}, []),
    ("pod-template-toleration-blanket", {"podTemplate": {"tolerations": [{"operator": "Exists"}]}}, [B]),
    ("pod-template-toleration-control-plane", {"podTemplate": {"tolerations": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}, [T]),
    ("toleration-lookalike", {"tolerations": [{"key": "example.com/node.kubernetes.io", "operator": "Exists"}]}, []),
    ("node-selector", {"nodeSelector": {"zone": "a"}}, []),
    ("node-selector-control-plane", {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, [N]),
    ("affinity-gpu-pool", {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                                     "values": ["g5.xlarge"]}]}]}}}}, []),
    ("affinity-required-control-plane", {"affinity": _required("node-role.kubernetes.io/control-plane")}, [N]),
    ("affinity-preferred-master", {"affinity": _preferred("node-role.kubernetes.io/master")}, [N]),
    ("pod-affinity-only", {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname"}]}}}, []),
    ("several", {"image": "docker.io/evil/miner:1", "priorityClassName": "system-cluster-critical",
                 "tolerations": [{"operator": "Exists"}]}, [I, P, B]),
]
