"""The Argo CD health check (Lua, run under lupa as Argo CD runs it) and its argocd-cm snippet."""

from __future__ import annotations

import importlib.util
from typing import Any

import lupa
import pytest
import yaml

import helm_env

ARGOCD = helm_env.ROOT / "deploy" / "argocd"
LUA = (ARGOCD / "health.lua").read_text()
KEY = "resource.customizations.health.splatops.dev_GaussianSplatTraining"


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    result = lua.execute(f"return function(obj)\n{LUA}\nend")(to_lua(obj))
    return dict(result.items())


def resource(phase: str | None, generation: int = 2, observed: int | None = 2, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "splatops.dev/v1alpha1",
        "kind": "GaussianSplatTraining",
        "metadata": {"name": "fox", "generation": generation},
        "spec": {"scene": {"claimName": "scenes", "path": "fox"}, "suspend": extra.pop("suspend", False)},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, **({"observedGeneration": observed} if observed is not None else {}), **extra}
    return obj


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (resource(None), "Progressing", "Waiting for the splatops operator"),
        (resource("Pending"), "Progressing", "Pending"),
        (resource("Queued", message="3 trainings ahead"), "Progressing", "Queued: 3 trainings ahead"),
        (
            resource("Running", progress={"message": "Iteration 15234/30000 | Loss: 0.0234"}),
            "Progressing",
            "Running: Iteration 15234/30000 | Loss: 0.0234",
        ),
        # The operator sets both while Running: the trainer's progress line is what to show.
        (
            resource("Running", message="Training.", progress={"message": "Iteration 15234/30000 | Loss: 0.0234"}),
            "Progressing",
            "Running: Iteration 15234/30000 | Loss: 0.0234",
        ),
        (resource("Running", message="Training.", progress={"message": ""}), "Progressing", "Running: Training."),
        (resource("Running", message="Training.", progress={"step": 0}), "Progressing", "Running: Training."),
        # A Queued or Failed training's stale progress line never hides why it waits or failed.
        (
            resource("Queued", message="3 trainings ahead", progress={"message": "Iteration 100/30000"}),
            "Progressing",
            "Queued: 3 trainings ahead",
        ),
        (resource("Succeeded", modelPath="fox/gsplat/results.ply"), "Healthy", "Trained: fox/gsplat/results.ply"),
        (
            resource("Failed", reason="OutOfMemory", message="CUDA out of memory. Try reducing data_factor or image resolution."),
            "Degraded",
            "OutOfMemory: CUDA out of memory.",
        ),
        (resource("Suspended", suspend=True), "Suspended", "Suspended"),
        (resource("Running", suspend=True), "Suspended", "Suspended"),
        # The operator has not seen the latest spec yet: whatever the phase says is stale.
        (resource("Succeeded", generation=3, observed=2), "Progressing", "observe generation 3"),
        (resource("Failed", generation=3, observed=None), "Progressing", "observe generation 3"),
        (resource("Exploded"), "Unknown", "Unknown phase Exploded"),
    ],
    ids=["no-status", "pending", "queued", "running", "running-progress-over-message", "running-empty-progress",
         "running-no-progress-message", "queued-stale-progress", "succeeded", "failed", "suspended", "suspend-requested",
         "stale-succeeded", "no-observed", "unknown"],
)
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    result = health(obj)
    assert result["status"] == status
    assert message in result["message"]
    if obj.get("status", {}).get("phase") in ("Pending", "Queued", "Running") and result["status"] == "Progressing":
        assert result["message"] == message  # exactly "<phase>: <detail>"


def test_every_crd_phase_has_a_health() -> None:
    crd = yaml.safe_load((helm_env.ROOT / "crds" / "gaussiansplattrainings.splatops.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    phases = schema["properties"]["status"]["properties"]["phase"]["enum"]
    assert {health(resource(p))["status"] for p in phases} <= {"Progressing", "Healthy", "Degraded", "Suspended"}
    assert "Unknown" not in {health(resource(p))["status"] for p in phases}


def test_argocd_cm_embeds_the_lua_exactly() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][KEY] == LUA
    spec = importlib.util.spec_from_file_location("make_argocd_cm", ARGOCD / "make_argocd_cm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(LUA) == (ARGOCD / "argocd-cm.yaml").read_text(), "run python deploy/argocd/make_argocd_cm.py"


def test_example_application_points_at_the_chart() -> None:
    apps = list(yaml.safe_load_all((ARGOCD / "application.yaml").read_text()))
    chart_app = next(a for a in apps if a["spec"]["source"]["path"] == "charts/splatops")
    assert chart_app["kind"] == "Application" and chart_app["apiVersion"] == "argoproj.io/v1alpha1"
    values = chart_app["spec"]["source"]["helm"]["valuesObject"]
    import jsonschema, json

    jsonschema.validate(values, json.loads((helm_env.CHART / "values.schema.json").read_text()))
    assert values["gpu"]["preset"] in yaml.safe_load((helm_env.CHART / "values.yaml").read_text())["gpu"]["presets"]
