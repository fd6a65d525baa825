"""Generate the GaussianSplatTraining CRD (apiextensions.k8s.io/v1) from the pydantic models.

`python -m splatops.api.crd` prints the YAML; `crds/gaussiansplattrainings.splatops.dev.yaml` is
exactly that output (a test keeps them identical). Pydantic's JSON Schema is rewritten into a
Kubernetes structural schema: $refs inlined, nullable unions collapsed, titles dropped, free-form
objects marked x-kubernetes-preserve-unknown-fields, and CEL rules added.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from splatops import names
from splatops import contract
from splatops.api.models import RESERVED_ENV, RESERVED_MOUNTS, RESERVED_VOLUMES, Spec, Status


# Spec fields users may change after creation. Everything else is immutable (CEL transition rules).
MUTABLE_SPEC_FIELDS = frozenset({"suspend"})

SCENE_PATH_RULE = (
    "!self.startsWith('/') && self != '..' && !self.startsWith('../') "
    "&& !self.endsWith('/..') && !self.contains('/../')"
)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _resolve(target, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one (resolved) pydantic JSON Schema node into a Kubernetes structural schema node."""
    node = dict(node)
    node.pop("title", None)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [alt for alt in any_of if alt.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union in schema: {any_of}")
        merged = dict(non_null[0])
        merged.update(node)
        node = merged
        node.pop("title", None)
    if node.get("default", 0) is None:
        node.pop("default")
    if "enum" in node and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
    additional = node.pop("additionalProperties", None)
    if node.get("type") == "object":
        if "properties" in node:
            node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        elif isinstance(additional, dict) and additional:
            node["additionalProperties"] = _structural(additional)
        else:
            node["x-kubernetes-preserve-unknown-fields"] = True
        if "maxLength" in node:  # pydantic puts a dict's max_length here; OpenAPI wants maxProperties
            node["maxProperties"] = node.pop("maxLength")
    if node.get("type") == "array":
        node["items"] = _structural(node["items"])
        if node["items"].get("type") == "object" and "properties" not in node["items"]:
            node["items"]["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "number" and isinstance(node.get("default"), int):
        node["default"] = float(node["default"])
    return node


def _model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _cel_list(values: Any) -> str:
    return "[" + ", ".join(f"'{v}'" for v in sorted(values)) + "]"


def _mount_rule(reserved: str) -> str:
    """mountPath is not `reserved`, not under it, and not a parent of it (which would shadow it)."""
    parent = "(self.mountPath.endsWith('/') ? self.mountPath : self.mountPath + '/')"
    return f"self.mountPath != '{reserved}' && !self.mountPath.startsWith('{reserved}/') && !'{reserved}'.startsWith({parent})"


def pod_template_rules(template: dict[str, Any]) -> None:
    """CEL rules refusing at `kubectl apply` what would replace the trainer's own pod parts (the
    operator checks the same, and labels too, in api.models.pod_template_problems)."""
    props = template["properties"]
    props["volumes"]["items"]["x-kubernetes-validations"] = [{
        "rule": f"!(self.name in {_cel_list(RESERVED_VOLUMES)})",
        "message": f"podTemplate.volumes: the names {', '.join(sorted(RESERVED_VOLUMES))} are the trainer's own"}]
    props["env"]["items"]["x-kubernetes-validations"] = [{
        "rule": f"!self.name.startsWith('{contract.ENV_PREFIX}') && !(self.name in {_cel_list(RESERVED_ENV)})",
        "message": f"podTemplate.env: {contract.ENV_PREFIX}*, {', '.join(sorted(RESERVED_ENV))} are set by the operator"}]
    props["volumeMounts"]["items"]["x-kubernetes-validations"] = [{
        "rule": " && ".join(_mount_rule(r) for r in RESERVED_MOUNTS),
        "message": f"podTemplate.volumeMounts: mountPath must not be, contain or lie under {', '.join(RESERVED_MOUNTS)}"}]


def spec_schema() -> dict[str, Any]:
    schema = _model_schema(Spec)
    props = schema["properties"]
    for field in ("scene", "output"):  # both are paths inside the volume, checked alike
        props[field]["properties"]["path"]["x-kubernetes-validations"] = [
            {"rule": SCENE_PATH_RULE, "message": f"{field}.path must stay inside the volume: no leading '/' and no '..' segments"}
        ]
    pod_template_rules(props["podTemplate"])
    # Nested defaults only apply when the parent exists: default resources to {} so gpus=1 lands.
    props["resources"]["default"] = {}
    optional = []
    for name, prop in props.items():
        if name in MUTABLE_SPEC_FIELDS:
            continue
        prop.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"spec.{name} is immutable once created (only spec.suspend may change)"}
        )
        if name not in schema.get("required", []) and "default" not in prop:
            optional.append(name)
    # A transition rule on a property does not fire when the property is added or removed.
    presence = " && ".join(f"has(self.{n}) == has(oldSelf.{n})" for n in optional)
    schema["x-kubernetes-validations"] = [
        {"rule": presence, "message": "spec fields cannot be added or removed once created (only spec.suspend may change)"}
    ]
    return schema


def status_schema() -> dict[str, Any]:
    schema = _model_schema(Status)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Training phase."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent", "description": "Percent of maxSteps done."},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Current iteration."},
    {"name": "PSNR", "type": "number", "jsonPath": ".status.progress.psnr", "description": "Latest evaluation PSNR (dB)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "priority": 1, "description": "Latest training loss."},
    {"name": "Model", "type": "string", "jsonPath": ".status.modelPath", "priority": 1, "description": "Trained model path in the volume."},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1, "description": "Reason of the current phase."},
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.CRD_NAME,
            "labels": {names.LABEL_NAME: "splatops"},
        },
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": names.KIND,
                "listKind": f"{names.KIND}List",
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
                "categories": list(names.CATEGORIES),
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "GaussianSplatTraining trains a 3D Gaussian Splatting model (gsplat) "
                            "from a COLMAP scene on a PersistentVolumeClaim, as a GPU Job run by the splatops operator.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version: splatops.dev/v1alpha1."},
                                "kind": {"type": "string", "description": "GaussianSplatTraining."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    return yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)


# The CRD ships twice: crds/ (kubectl apply, Argo CD) and the chart's crds/ (Helm). Tests keep
# both identical to the generator's output; `--write` regenerates them.
CRD_FILES = ("crds", "charts/splatops/crds")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["--write"]:
        sys.stdout.write(crd_yaml())
        return
    root = Path(args[1]) if len(args) > 1 else Path.cwd()
    for folder in CRD_FILES:
        target = root / folder / f"{names.CRD_NAME}.yaml"
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(crd_yaml())
        tmp.replace(target)
        print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
