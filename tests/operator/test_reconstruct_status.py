"""Structure-from-motion in the status mapping and the Job: pure functions, table-driven."""

from __future__ import annotations

import pytest
from op_fixtures import T0_EPOCH, job, job_for, pod, result_msg, terminated, training

from splatops import contract
from splatops.api.models import Phase, Progress, Status, parse_spec
from splatops.controller import jobs, status
from splatops.controller.settings import Settings

NOW = T0_EPOCH + 100
RAW_SPEC = {"scene": {"claimName": "scenes", "path": "fox"}}
SPEC = parse_spec(RAW_SPEC)
STAGE = {"stage": "Reconstructing", "step": 12, "maxSteps": 50, "percent": 24.0, "message": "Extracting features 12/50",
         "updatedAt": "2026-01-01T00:00:00Z"}


def observe(prev: dict, *pods: dict) -> status.Observed:
    return status.Observed(spec=SPEC, status=prev, generation=1, job=job(active=1), pods=pods, now=NOW)


@pytest.mark.parametrize(
    ("prev", "reason", "words"),
    [
        ({"progress": STAGE}, status.REASON_RECONSTRUCTING, "Reconstructing the scene from its photos: Extracting features 12/50"),
        ({"progress": {**STAGE, "stage": None, "loss": 0.1}}, status.REASON_RUNNING, "Training."),
        ({}, status.REASON_RUNNING, "Training."),
    ],
)
def test_running_reason_follows_the_stage(prev: dict, reason: str, words: str) -> None:
    assert status.desired_phase(observe(prev, pod("Running", running=True))) == (Phase.RUNNING, reason, words)


@pytest.mark.parametrize(
    ("report", "step", "max_steps", "percent"),
    [
        (contract.StageReport(stage="Reconstructing", message="Extracting features 12/50", done=12, total=50), 12, 50, 24.0),
        (contract.StageReport(stage="Reconstructing", message="Matching (sequential) 300 pairs", done=300), 0, 1, 0.0),
        (contract.StageReport(stage="Reconstructing", message="Mapping"), 0, 1, 0.0),
    ],
)
def test_stage_progress_fits_the_schema(report: contract.StageReport, step: int, max_steps: int, percent: float) -> None:
    fields = status.report_status(report, NOW)
    Progress.model_validate(fields)  # the CRD's status.progress accepts it
    assert (fields["step"], fields["maxSteps"], fields["percent"]) == (step, max_steps, percent)
    assert fields["message"] == report.message and fields["stage"] == "Reconstructing"


def test_reconstruction_numbers_reach_status() -> None:
    numbers = {"images": 50, "registered": 47, "points": 1000, "unregistered": ["a.jpg"]}
    done = pod("Succeeded", terminated=terminated(0, result_msg(status="complete", reconstruction=numbers)))
    out = status.desired_status(status.Observed(spec=SPEC, status={}, generation=1, job=job(("Complete", "Completed")),
                                                pods=(done,), now=NOW))
    assert out["reconstruction"] == numbers
    Status.model_validate(out)


@pytest.mark.parametrize(("spec", "env"), [
    ({}, {contract.ENV_RECONSTRUCT: "IfMissing"}),
    ({"reconstruct": "Never"}, {contract.ENV_RECONSTRUCT: "Never"}),
    ({"reconstruct": "Always", "reconstructOnly": True}, {contract.ENV_RECONSTRUCT: "Always", contract.ENV_RECONSTRUCT_ONLY: "true"}),
])
def test_spec_reconstruct_reaches_the_trainer(spec: dict, env: dict) -> None:
    res = training("fox", **spec)
    got = {e["name"]: e["value"] for e in jobs.trainer_env(res, parse_spec(res["spec"]), Settings())}
    assert {k: got.get(k) for k in (contract.ENV_RECONSTRUCT, contract.ENV_RECONSTRUCT_ONLY)} == \
        {contract.ENV_RECONSTRUCT: None, contract.ENV_RECONSTRUCT_ONLY: None, **env}


def test_reconstruct_modes_are_one_list() -> None:
    from typing import get_args

    from splatops.api.models import Spec

    assert get_args(Spec.model_fields["reconstruct"].annotation) == contract.RECONSTRUCT_MODES


@pytest.mark.parametrize("bad", [{"reconstruct": "Sometimes"}, {"reconstruct": "ifmissing"}])
def test_the_spec_rejects_bad_reconstruct_values(bad: dict) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        parse_spec({**RAW_SPEC, **bad})


def test_a_reconstruct_only_job_holds_no_gpu() -> None:
    """colmap_ba: structure-from-motion runs on CPU threads; its Job neither requests a GPU nor
    is pinned to the GPU pool (a training's Job does both)."""
    settings = Settings()
    for spec, gpu in (({}, True), ({"reconstruct": "Always", "reconstructOnly": True}, False)):
        job_ = job_for({**training("fox", **spec), "metadata": {"name": "fox", "namespace": "default", "uid": "u"}}, settings)
        pod_spec = job_["spec"]["template"]["spec"]
        res = pod_spec["containers"][0]["resources"]
        assert (settings.gpu_resource_name in res["requests"], settings.gpu_resource_name in res["limits"]) == (gpu, gpu)
        assert ("affinity" in pod_spec) == (gpu and bool(settings.gpu_node_label_key))
