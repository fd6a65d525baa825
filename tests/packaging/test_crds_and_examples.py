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


def test_the_emulator_serves_a_custom_kind_only_once_its_crd_exists() -> None:
    """The hook design above rests on a fresh cluster not knowing kopf.dev before its CRDs are
    created. (Helm >= 3.2x maps a release's kinds after creating its CRDs, so with the real helm
    binary the chart would also install with the peering as a plain object; older Helm, Argo CD's
    diffing and the helm-sdkpy fallback do not, so the peering stays a hook.) The emulator must
    answer like the API server's discovery: no kopf.dev kinds until the CRD is created."""
    import httpx

    crd = next(d for d in yaml.safe_load_all((helm_env.CHART / "crds" / "kopf-peering.yaml").read_text())
               if d["spec"]["names"]["kind"] == "ClusterKopfPeering")
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "p"}}
    with helm_env.emulator() as url, httpx.Client(base_url=url, timeout=10) as http:
        def discovered() -> set[str]:
            response = http.get("/apis/kopf.dev/v1")
            return {r["kind"] for r in response.json().get("resources", [])} if response.status_code == 200 else set()

        assert "ClusterKopfPeering" not in discovered()
        created = http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        assert created.status_code in (200, 201), created.text
        established = {c["type"]: c["status"] for c in created.json()["status"]["conditions"]}
        assert established["Established"] == "True"
        assert "ClusterKopfPeering" in discovered()
        assert http.post("/apis/kopf.dev/v1/clusterkopfpeerings", json=peering).status_code in (200, 201)


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
