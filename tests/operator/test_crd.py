"""The CRD: generated file in sync, a valid apiextensions/v1 object, CEL rules, schema on samples."""

from __future__ import annotations

import copy
import pathlib
from typing import Any, Iterator

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from splatops import names
from splatops.api import crd
from splatops.api.models import GaussianSplatTraining

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / f"{names.CRD_NAME}.yaml"
BUILT = crd.build_crd()
VERSION = BUILT["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]

BASE_SPEC: dict[str, Any] = {"scene": {"claimName": "scenes", "path": "fox"}}


def resource(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "fox", "namespace": "default"},
        "spec": {**copy.deepcopy(BASE_SPEC), **spec},
    }


def test_file_matches_generator() -> None:
    assert CRD_FILE.read_text() == crd.crd_yaml(), "run: python -m splatops.api.crd > " + str(CRD_FILE.relative_to(ROOT))


def test_crd_is_valid_apiextensions_v1() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), "1.30", strict=True)


def test_names_and_subresources() -> None:
    spec = BUILT["spec"]
    assert spec["names"]["shortNames"] == ["gst"] and spec["names"]["categories"] == ["splatops"]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert [n for n, c in columns.items() if not c.get("priority")] == ["Phase", "Progress", "Step", "PSNR", "Age"]
    assert columns["Loss"]["priority"] == 1 and columns["Model"]["priority"] == 1


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("root", ["spec", "status"])
def test_every_field_is_described(root: str) -> None:
    missing = [p for p, node in _walk(SCHEMA["properties"][root], root)
               if "[]" not in p[-2:] and "{}" not in p[-2:] and not node.get("description")]
    assert missing == []


@pytest.mark.parametrize(
    ("field", "key", "value"),
    [
        ("dataFactor", "enum", [1, 2, 4, 8]),
        ("dataFactor", "default", 1),
        ("maxSteps", "minimum", 1),
        ("maxSteps", "maximum", 1_000_000),
        ("maxSteps", "default", 30000),
        ("strategy", "enum", ["default", "mcmc"]),
        ("backoffLimit", "maximum", 100),
        ("activeDeadlineSeconds", "minimum", 60),
        ("suspend", "default", False),
    ],
)
def test_schema_bounds_and_defaults(field: str, key: str, value: Any) -> None:
    assert SPEC["properties"][field][key] == value


@pytest.mark.parametrize("field", ["backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"])
def test_job_lifetime_fields_default_to_the_operator_settings(field: str) -> None:
    """No schema default: an unset field must reach the operator unset, so its settings apply."""
    assert "default" not in SPEC["properties"][field]
    assert "operator's" in SPEC["properties"][field]["description"]


# --- samples against the openAPIV3Schema ---------------------------------------------------------

GOOD = [
    {},
    {"dataFactor": 4, "maxSteps": 1, "strategy": "mcmc"},
    {"resources": {"gpus": 2, "memory": "32Gi", "cpu": "8"}, "queueName": "gpu-queue"},
    {"tolerations": [{"key": "x", "operator": "Exists", "effect": "NoSchedule"}], "nodeSelector": {"zone": "a"}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}, "suspend": True},
    {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "trainer"}}}}]}},
     "backoffLimit": 0, "activeDeadlineSeconds": 60, "ttlSecondsAfterFinished": 0},
]
BAD = [
    ({"dataFactor": 3}, "dataFactor"),
    ({"maxSteps": 0}, "maxSteps"),
    ({"maxSteps": 1_000_001}, "maxSteps"),
    ({"strategy": "fast"}, "strategy"),
    ({"scene": {"claimName": "Bad_Name", "path": "x"}}, "claimName"),
    ({"scene": {"claimName": "ok", "path": "/etc"}}, "path"),
    ({"scene": {"claimName": "ok"}}, "path"),
    ({"resources": {"gpus": 0}}, "gpus"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    ({"unknownField": 1}, "unknownField"),
]


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize("spec", GOOD)
def test_good_samples_validate(spec: dict[str, Any]) -> None:
    obj = resource(**spec)
    _validator().validate(obj)
    GaussianSplatTraining.model_validate(obj)  # the operator's models agree with the schema


@pytest.mark.parametrize(("spec", "field"), BAD)
def test_bad_samples_rejected(spec: dict[str, Any], field: str) -> None:
    obj = resource(**spec)
    # Structural schemas reject unknown fields by pruning; jsonschema needs them forbidden explicitly.
    strict = copy.deepcopy(SCHEMA)
    strict["properties"]["spec"]["additionalProperties"] = False
    errors = list(jsonschema.Draft202012Validator(strict).iter_errors(obj))
    assert errors and any(field in (str(e.path) + e.message) for e in errors)
    with pytest.raises(Exception):
        GaussianSplatTraining.model_validate(obj)


# spec.affinity is free-form in the CRD (see api/models.py); the operator checks its core/v1 shape.
AFFINITY_BAD = [
    ({"nodeAfinity": {}}, "nodeAfinity: Extra inputs are not permitted"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
     "nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: Field required"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "Equals", "values": ["a10g"]}]}]}}}, "operator"),
    ({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}, "topologyKey: Field required"),
    ({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 0, "podAffinityTerm": {"topologyKey": "x"}}]}}, "weight"),
    ({"nodeAffinity": ["not", "an", "object"]}, "nodeAffinity: must be an object"),
]


@pytest.mark.parametrize(("affinity", "needle"), AFFINITY_BAD)
def test_affinity_shape_checked_by_the_operator(affinity: dict[str, Any], needle: str) -> None:
    obj = resource(affinity=affinity)
    _validator().validate(obj)  # the CRD lets it through...
    with pytest.raises(Exception) as err:  # ...the operator's models do not (-> InvalidSpec)
        GaussianSplatTraining.model_validate(obj)
    assert "not a core/v1 Affinity" in str(err.value) and needle in str(err.value)


def test_examples_validate() -> None:
    examples = [p for p in (ROOT / "examples").rglob("*.yaml")]
    checked = 0
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == names.KIND:
                _validator().validate(doc)
                GaussianSplatTraining.model_validate(doc)
                checked += 1
    assert checked >= 1, "examples/ should hold at least one GaussianSplatTraining"


# --- CEL rules (cel-python) -------------------------------------------------------------------------

ENV = celpy.Environment()


def cel(rule: str, new: Any, old: Any = None) -> bool:
    program = ENV.program(ENV.compile(rule))
    activation = {"self": celpy.json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(program.evaluate(activation))


@pytest.mark.parametrize(
    ("path", "ok"),
    [("fox", True), ("scenes/fox", True), (".", True), ("a..b/c", True), ("/fox", False), ("..", False),
     ("../x", False), ("a/../../x", False), ("a/..", False)],
)
@pytest.mark.parametrize("field", ["scene", "output"])
def test_scene_and_output_path_rule(field: str, path: str, ok: bool) -> None:
    """spec.output.path is a path inside the volume exactly like spec.scene.path: CEL and the model."""
    rule = SPEC["properties"][field]["properties"]["path"]["x-kubernetes-validations"][0]["rule"]
    assert cel(rule, path) is ok
    assert SPEC["properties"][field]["properties"]["path"]["pattern"] == SPEC["properties"]["scene"]["properties"]["path"]["pattern"]
    spec = {"scene": {"claimName": "c", "path": path if field == "scene" else "fox"}}
    if field == "output":
        spec["output"] = {"path": path}
    try:
        GaussianSplatTraining.model_validate(resource(**spec))
        accepted = True
    except Exception:
        accepted = False
    assert accepted is ok


def _spec_with_defaults(**spec: Any) -> dict[str, Any]:
    """The spec as stored: CRD defaults applied (the API server does this before CEL runs)."""
    out = {k: copy.deepcopy(v["default"]) for k, v in SPEC["properties"].items() if "default" in v}
    out.update(copy.deepcopy(BASE_SPEC))
    out.update(spec)
    return out


def check_transition(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Evaluate every transition rule as the API server would; return the failing messages."""
    failures = []
    for rule in SPEC.get("x-kubernetes-validations", []):
        if not cel(rule["rule"], new, old):
            failures.append(rule["message"])
    for name, prop in SPEC["properties"].items():
        if name in old and name in new:  # transition rules on a property run when both exist
            for rule in prop.get("x-kubernetes-validations", []):
                if "oldSelf" in rule["rule"] and not cel(rule["rule"], new[name], old[name]):
                    failures.append(rule["message"])
    return failures


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        ({"suspend": True}, True),
        ({}, True),
        ({"maxSteps": 100}, False),
        ({"dataFactor": 2}, False),
        ({"scene": {"claimName": "scenes", "path": "cat"}}, False),
        ({"resources": {"gpus": 2}}, False),
        ({"image": "other:1"}, False),  # added after creation
        ({"tolerations": [{"key": "a", "operator": "Exists"}]}, False),
        ({"affinity": {"nodeAffinity": {}}}, False),
        ({"output": {"path": "elsewhere"}}, False),  # added after creation
    ],
)
def test_spec_immutable_except_suspend(change: dict[str, Any], allowed: bool) -> None:
    old = _spec_with_defaults()
    new = _spec_with_defaults(**change)
    failures = check_transition(old, new)
    assert (failures == []) is allowed, failures


def test_removing_an_optional_field_is_rejected() -> None:
    old = _spec_with_defaults(image="trainer:1")
    new = _spec_with_defaults()
    assert check_transition(old, new)


def test_every_spec_field_but_suspend_has_a_transition_rule() -> None:
    for name, prop in SPEC["properties"].items():
        rules = [r["rule"] for r in prop.get("x-kubernetes-validations", [])]
        assert ("self == oldSelf" in rules) is (name != "suspend"), name
