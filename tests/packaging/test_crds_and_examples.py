"""The chart's CRDs stay identical to crds/; the examples validate against the CRD's schema."""

from __future__ import annotations

import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

import helm_env
from splatops import names

ROOT = helm_env.ROOT
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
EXAMPLES = ROOT / "examples"


def _crd_schema() -> dict:
    crd = yaml.safe_load((ROOT / "crds" / f"{names.CRD_NAME}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == names.VERSION)
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_chart_crds_are_identical_to_crds_dir(path: pathlib.Path) -> None:
    copy = helm_env.CHART / "crds" / path.name
    assert copy.exists(), f"copy {path} to {copy}"
    assert copy.read_bytes() == path.read_bytes(), f"{copy} is stale: cp {path} {copy}"


def test_chart_crds_dir_and_crds_dir_hold_the_same_files() -> None:
    """kubectl apply -f crds/ (README, Argo CD) installs everything the chart's crds/ does: our CRD
    and kopf's peering CRDs (the chart's peering objects need them)."""
    assert {p.name for p in (helm_env.CHART / "crds").glob("*.yaml")} == {p.name for p in CRD_FILES}
    assert {p.name for p in CRD_FILES} == {f"{names.CRD_NAME}.yaml", "kopf-peering.yaml"}
    docs = list(yaml.safe_load_all((ROOT / "crds" / "kopf-peering.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_templated_crds_are_the_files_plus_keep(renders) -> None:
    rendered = {o["metadata"]["name"]: o for o in renders.objects("templated-crds") if o["kind"] == "CustomResourceDefinition"}
    files = {
        d["metadata"]["name"]: d
        for p in (helm_env.CHART / "crds").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d
    }
    assert set(rendered) == set(files)
    for name, crd in rendered.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert crd == files[name]
    assert not [o for o in renders.objects("default") if o["kind"] == "CustomResourceDefinition"]


HOOK = {"helm.sh/hook": "post-install,post-upgrade", "helm.sh/hook-delete-policy": "before-hook-creation"}


@pytest.mark.parametrize(("scenario", "kind"), [("templated-crds", "ClusterKopfPeering"), ("templated-crds-namespaced", "KopfPeering")])
def test_templated_crds_install_on_a_fresh_cluster(renders, scenario: str, kind: str) -> None:
    """With crds.templated the peering CRDs are templates of the same release: on a cluster that
    does not know kopf.dev yet (`--skip-crds`, as documented), the peering objects must be hooks
    that Helm creates once the CRDs exist. renders installs into such a cluster (helm_env)."""
    peerings = [o for o in renders.objects(scenario) if o["apiVersion"].startswith("kopf.dev/")]
    assert [p["kind"] for p in peerings] == [kind]
    assert peerings[0]["metadata"]["annotations"] == HOOK
    crds = {o["metadata"]["name"] for o in renders.objects(scenario) if o["kind"] == "CustomResourceDefinition"}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    # Without templated CRDs (Helm installs crds/ first) they are ordinary release objects.
    for obj in renders.objects("default") + renders.objects("namespaced"):
        if obj["apiVersion"].startswith("kopf.dev/"):
            assert "annotations" not in obj["metadata"]


def test_the_emulator_catches_a_peering_object_beside_its_crd(tmp_path: pathlib.Path) -> None:
    """The check above is only worth something if the emulated cluster does not know the kopf
    kinds before their CRDs are created: the same chart with the peering as a plain release
    object must fail there as on a fresh cluster."""
    if not helm_env.HELM_PYTHON.exists():
        pytest.skip("no .venv-helm")
    import shutil

    chart = tmp_path / "splatops"
    shutil.copytree(helm_env.CHART, chart)
    peering = chart / "templates" / "peering.yaml"
    text = peering.read_text()
    assert "{{- if .Values.crds.templated }}" in text
    peering.write_text(text.replace("{{- if .Values.crds.templated }}", "{{- if false }}"))
    with pytest.raises(helm_env.HelmFailed, match="ensure CRDs are installed first|no matches for kind"):
        helm_env.render_manifest(tmp_path, {"crds": {"templated": True}}, chart=chart)
    helm_env.render_manifest(tmp_path, {}, chart=chart)  # crds/ installed first: fine


@pytest.mark.parametrize(
    ("example", "data_factor", "max_steps"),
    [("preview.yaml", 4, 7000), ("production.yaml", 1, 30000)],
)
def test_examples_validate_against_the_crd(example: str, data_factor: int, max_steps: int) -> None:
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    assert doc["apiVersion"] == names.API_VERSION and doc["kind"] == names.KIND
    jsonschema.validate(doc["spec"], _crd_schema()["properties"]["spec"])
    assert (doc["spec"]["dataFactor"], doc["spec"]["maxSteps"]) == (data_factor, max_steps)
    pvc = yaml.safe_load((EXAMPLES / "pvc.yaml").read_text())
    assert doc["spec"]["scene"]["claimName"] == pvc["metadata"]["name"]


def test_the_examples_on_one_scene_write_distinct_outputs() -> None:
    """preview.yaml and production.yaml train the same scene: each owns its output directory, so
    both run at once and neither overwrites the other's results.ply or checkpoints."""
    from splatops.api import layout

    docs = [yaml.safe_load((EXAMPLES / name).read_text()) for name in ("preview.yaml", "production.yaml")]
    assert len({d["spec"]["scene"]["path"] for d in docs}) == 1
    outputs = [layout.location_of(d) for d in docs]
    assert None not in outputs and len({o.directory for o in outputs}) == 2, outputs


@pytest.mark.parametrize(
    "bad",
    [{"dataFactor": 3}, {"maxSteps": -1}, {"strategy": "fast"}, {"scene": {"claimName": "scenes"}},
     {"output": {"path": "/etc"}}],
    ids=["dataFactor", "maxSteps", "strategy", "no-path", "output-absolute"],
)
def test_the_schema_rejects_bad_examples(bad: dict) -> None:
    spec = yaml.safe_load((EXAMPLES / "preview.yaml").read_text())["spec"] | bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, _crd_schema()["properties"]["spec"])


def test_pvc_example_is_valid_kubernetes() -> None:
    kubernetes_validate.validate(yaml.safe_load((EXAMPLES / "pvc.yaml").read_text()), "1.33.0", strict=True)


def test_walkthrough_covers_the_workflow() -> None:
    text = (EXAMPLES / "README.md").read_text()
    for step in (
        "kubectl apply -f examples/pvc.yaml",
        "kubectl apply -f examples/preview.yaml",
        "kubectl get gst -w",
        "--for=condition=Succeeded",
        "splatops download",
        "/scene/mijato/train_gsplat?data_factor=4&max_steps=7000",
        "/scene/mijato/train_gsplat/status",
        "/scene/mijato/gsplat/model",
    ):
        assert step in text, step


def test_kopf_peering_crds_are_the_ones_kopf_uses() -> None:
    from kopf._cogs.structs import references  # kopf's own selectors for its peering resources

    docs = list(yaml.safe_load_all((helm_env.CHART / "crds" / "kopf-peering.yaml").read_text()))
    served = {(f"{d['spec']['group']}/{d['spec']['versions'][0]['name']}", d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in docs}
    cluster, namespaced = references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K
    expected = {
        (f"{cluster.group}/{cluster.version}", cluster.any_name, "Cluster"),
        (f"{namespaced.group}/{namespaced.version}", namespaced.any_name, "Namespaced"),
    }
    assert served == expected
