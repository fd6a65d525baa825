"""Validation of the rendered objects kubernetes-validate has no schema for.

- Kinds whose CRDs the chart ships (kopf.dev peerings, splatops.dev): validated against the CRD's
  own openAPIV3Schema, made strict as the API server's pruning is (a field the schema does not
  declare, outside x-kubernetes-preserve-unknown-fields, is an error here: there it would be
  silently dropped), with the CRD's scope checked.
- The Prometheus Operator's kinds (ServiceMonitor, PodMonitor, PrometheusRule): no schema is
  available offline, so a hand-written JSON schema of the fields the chart uses, with the
  Prometheus Operator's field names, types, enums and duration pattern, and no other field.
- Every object's metadata: Kubernetes' own ObjectMeta schema (through kubernetes-validate).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

import helm_env

K8S_VERSION = "1.33.0"

# --- The Prometheus Operator's kinds (monitoring.coreos.com/v1): the fields the chart uses -------

# The Prometheus Operator's Duration pattern (monitoringv1.Duration).
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
LABELS = {"type": "object", "propertyNames": LABEL_NAME, "additionalProperties": {"type": "string"}}
STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string", "minLength": 1},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": STRINGS},
}
_ACTIONS = ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
            "uppercase", "keepequal", "dropequal"]
RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": LABEL_NAME},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string", "minLength": 1},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        "action": {"enum": _ACTIONS + [a.capitalize() for a in _ACTIONS] + ["HashMod", "LabelMap", "LabelDrop", "LabelKeep", "KeepEqual", "DropEqual"]},
    },
}
_SCRAPE = {
    "port": {"type": "string", "minLength": 1},
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "relabelings": {"type": "array", "items": RELABEL},
    "metricRelabelings": {"type": "array", "items": RELABEL},
}
def _monitor_spec(endpoints: str, endpoint_port: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The spec of a ServiceMonitor or PodMonitor: a selector and at least one scrape endpoint."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", endpoints],
        "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": NAMESPACE_SELECTOR,
            "jobLabel": {"type": "string"},
            "podTargetLabels": STRINGS,
            **extra,
            endpoints: {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "additionalProperties": False, "properties": {**_SCRAPE, **endpoint_port}},
            },
        },
    }


SERVICE_MONITOR_SPEC = _monitor_spec("endpoints", {"targetPort": {"type": ["integer", "string"]}}, targetLabels=STRINGS)
POD_MONITOR_SPEC = _monitor_spec("podMetricsEndpoints", {"portNumber": {"type": "integer", "minimum": 1, "maximum": 65535}})
RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"], "minLength": 1},
        "for": DURATION,
        "keep_firing_for": DURATION,
        "labels": LABELS,
        "annotations": LABELS,
    },
}
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groups"],
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": DURATION,
                    "query_offset": DURATION,
                    "limit": {"type": "integer", "minimum": 0},
                    "labels": LABELS,
                    "rules": {"type": "array", "minItems": 1, "items": RULE},
                },
            },
        },
    },
}
MONITORING = {
    "ServiceMonitor": SERVICE_MONITOR_SPEC,
    "PodMonitor": POD_MONITOR_SPEC,
    "PrometheusRule": PROMETHEUS_RULE_SPEC,
}


def _monitoring_schema(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": MONITORING[kind],
        },
    }


# --- Kinds whose CRDs the chart ships --------------------------------------------------------------


@functools.cache
def chart_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> {"scope", "schema"} for every CRD in the chart's crds/."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((helm_env.CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = {
                        "scope": spec["scope"],
                        "schema": strict(version["schema"]["openAPIV3Schema"]),
                    }
    return found


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema, rejecting what the API server would prune."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
                node["additionalProperties"] = False
                node.setdefault("properties", {})
            for key, value in list(node.items()):
                if key == "properties":
                    for sub in value.values():
                        walk(sub)
                elif key in ("items", "additionalProperties", "not"):
                    walk(value)
                elif key in ("allOf", "anyOf", "oneOf"):
                    for sub in value:
                        walk(sub)

    walk(out)
    props = out.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = {"type": "object"}  # checked against ObjectMeta below
    return out


# --- Entry point -----------------------------------------------------------------------------------


def is_custom(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"] == "monitoring.coreos.com/v1" or (obj["apiVersion"], obj["kind"]) in chart_crds()


def validate(obj: dict[str, Any]) -> None:
    """Raise (jsonschema.ValidationError, kubernetes_validate's errors, AssertionError) if invalid."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    # metadata: Kubernetes' ObjectMeta, strict (a ConfigMap carries nothing else).
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata")}, K8S_VERSION, strict=True)
    if api_version == "monitoring.coreos.com/v1":
        assert kind in MONITORING, f"no schema for {api_version} {kind}: add the fields the chart uses to custom_kinds.py"
        jsonschema.validate(obj, _monitoring_schema(kind))
        return
    crd = chart_crds().get((api_version, kind))
    assert crd is not None, f"{api_version} {kind}: neither a built-in kind nor one the chart's crds/ define"
    jsonschema.validate(obj, crd["schema"])
    namespaced = "namespace" in obj["metadata"]
    assert namespaced == (crd["scope"] == "Namespaced"), f"{kind} {obj['metadata']['name']}: scope is {crd['scope']}"
