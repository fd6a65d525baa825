"""Cluster policy on what a training may ask of its pod: a pure check of the spec.

Creating a GaussianSplatTraining must not be "run any pod": its image, priority class,
tolerations, node selector and node affinity pass to the Job. The chart's `policy` values (the
operator's SPLATOPS_OPERATOR_POLICY_* settings) bound them. The operator fails a training that
breaks a rule as InvalidSpec; the chart's ValidatingAdmissionPolicy
(charts/splatops/templates/admissionpolicy.yaml) implements the same rules in CEL, so the API
server refuses it at `kubectl apply` where it can. Keep the two in step: tests/packaging/
test_policy_chart.py evaluates the CEL on the same cases as tests/operator/test_policy.py.

Each message starts with `policy <rule>:`, the chart value to change, and names the value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

from splatops.api.models import Spec

# Rule names: the chart's `policy.<rule>` values (the blanket rule has no value: always on).
IMAGES = "allowedImagePrefixes"
PRIORITY_CLASSES = "allowedPriorityClasses"
BLANKET_TOLERATION = "blanketTolerations"
TOLERATION_KEYS = "deniedTolerationKeys"
NODE_LABEL_KEYS = "deniedNodeLabelKeys"
ANY = "*"  # in allowedImagePrefixes: any image

DEFAULT_DENIED_TOLERATION_KEYS = (
    "node.kubernetes.io/*",  # node conditions: not-ready, unreachable, disk-pressure, unschedulable, ...
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "CriticalAddonsOnly",  # system node pools (EKS, AKS)
)
DEFAULT_DENIED_NODE_LABEL_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


@dataclasses.dataclass(frozen=True)
class Policy:
    """What specs may ask for. Key patterns are exact keys or prefixes ending in `*`."""

    allowed_image_prefixes: tuple[str, ...] = (ANY,)
    allowed_priority_classes: tuple[str, ...] = ()
    denied_toleration_keys: tuple[str, ...] = DEFAULT_DENIED_TOLERATION_KEYS
    denied_node_label_keys: tuple[str, ...] = DEFAULT_DENIED_NODE_LABEL_KEYS


def image_repository(image: str) -> str:
    """`registry/path/name` of an image reference (without its tag or digest)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_allowed(image: str, prefixes: Iterable[str]) -> bool:
    """A prefix ending in `/` allows every image under that path; any other prefix is a
    repository and allows it at any tag or digest (and the repositories nested under it), never
    a longer name that merely starts alike (`.../trainer` does not allow `.../trainer-evil`)."""
    for prefix in prefixes:
        if prefix == ANY:
            return True
        if prefix.endswith("/"):
            if image.startswith(prefix):
                return True
        elif image == prefix or any(image.startswith(prefix + sep) for sep in (":", "@", "/")):
            return True
    return False


def key_denied(key: str, patterns: Iterable[str]) -> bool:
    return any(key.startswith(p[:-1]) if p.endswith("*") else key == p for p in patterns)


def node_affinity_keys(affinity: dict[str, Any] | None) -> Iterator[str]:
    """The node label keys of a core/v1 Affinity's node affinity (required and preferred terms)."""
    node = (affinity or {}).get("nodeAffinity") or {}
    required = (node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    preferred = [p.get("preference") or {} for p in node.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    for term in [*required, *preferred]:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key"):
                yield str(expr["key"])


def policy_violations(spec: Spec, policy: Policy) -> list[str]:
    """Every rule `spec` breaks, one message each (empty: allowed). The operator's own defaults
    (its trainer image, its tolerations and GPU-pool affinity) are not the user's to check."""
    out: list[str] = []
    if spec.image is not None and not image_allowed(spec.image, policy.allowed_image_prefixes):
        out.append(f"policy {IMAGES}: spec.image {spec.image!r} is not allowed; "
                   f"allowed: {', '.join(policy.allowed_image_prefixes) or '(none)'}")
    if spec.priority_class_name is not None and spec.priority_class_name not in policy.allowed_priority_classes:
        out.append(f"policy {PRIORITY_CLASSES}: spec.priorityClassName {spec.priority_class_name!r} is not allowed; "
                   f"allowed: {', '.join(policy.allowed_priority_classes) or '(none: leave it unset)'}")
    # spec.podTemplate's tolerations are added to the Job's too: the same rules hold for them.
    extra = spec.pod_template.tolerations if spec.pod_template is not None else None
    for field, tolerations in (("spec.tolerations", spec.tolerations), ("spec.podTemplate.tolerations", extra)):
        for i, tol in enumerate(tolerations or []):
            if not tol.key:
                out.append(f"policy {BLANKET_TOLERATION}: {field}[{i}] has no key, so it tolerates every "
                           "taint (operator Exists); name the taint's key")
            elif key_denied(tol.key, policy.denied_toleration_keys):
                out.append(f"policy {TOLERATION_KEYS}: {field}[{i}] key {tol.key!r} is denied "
                           f"({', '.join(policy.denied_toleration_keys)})")
    for key in [*(spec.node_selector or {}), *node_affinity_keys(spec.affinity)]:
        if key_denied(key, policy.denied_node_label_keys):
            out.append(f"policy {NODE_LABEL_KEYS}: node label {key!r} in spec.nodeSelector or spec.affinity is "
                       f"denied ({', '.join(policy.denied_node_label_keys)})")
    return out
