"""spec.scene.source and spec.output.uri (s3://): validated by the CRD schema and the models,
passed to the trainer as SPLATOPS_SCENE_SOURCE / SPLATOPS_OUTPUT_URI, and the trainer's outputs
reported in status.outputs."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
from op_fixtures import job_for, training
from pydantic import ValidationError

from splatops import contract
from splatops.api import crd
from splatops.api.models import parse_spec
from splatops.controller import status
from splatops.controller.settings import Settings

SCENE = {"claimName": "scenes", "path": "fox", "source": "s3://team-scenes/fox/"}


def env_of(spec: dict) -> dict[str, str]:
    job = job_for(training(**spec), Settings())
    kubernetes_validate.validate(job, "1.30", strict=True)
    return {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_trainer_gets_the_locations() -> None:
    env = env_of({"scene": SCENE, "output": {"uri": "s3://team-results/runs/fox/"}})
    assert env[contract.ENV_SCENE_SOURCE] == "s3://team-scenes/fox/"
    assert env[contract.ENV_OUTPUT_URI] == "s3://team-results/runs/fox/"
    assert contract.ENV_SCENE_SOURCE not in env_of({}) and contract.ENV_OUTPUT_URI not in env_of({})


@pytest.mark.parametrize("uri", ["https://bucket/x", "s3://", "s3://UPPER/x", "s3://a/x", "/data/fox", "s3://bucket_name/x"])
def test_bad_uris_are_refused_by_schema_and_model(uri: str) -> None:
    schema = crd.spec_schema()
    for spec in ({"scene": {**SCENE, "source": uri}}, {"scene": SCENE, "output": {"uri": uri}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(copy.deepcopy(spec), schema)
        with pytest.raises(ValidationError):
            parse_spec(spec)


def test_outputs_in_the_status() -> None:
    """The trainer names files relative to its output directory; status gives volume paths."""
    result = contract.Result(status="complete", model_path="/data/fox/gsplat/fox/results.ply", outputs=[
        {"name": "ply", "file": "results.ply", "uri": "s3://r/runs/fox/results.ply", "bytes": 1234, "sha256": "ab" * 32},
        {"name": "log", "file": "results/training_log.txt", "bytes": 40, "sha256": "cd" * 32},
        {"name": "escape", "file": "../../secret", "bytes": 1},  # never a path outside the output directory
    ])
    parsed = contract.parse_result(result.to_json())
    fields = status.result_fields(parsed, "fox/gsplat/fox/results.ply")
    assert fields["outputs"] == [
        {"name": "ply", "path": "fox/gsplat/fox/results.ply", "uri": "s3://r/runs/fox/results.ply", "bytes": 1234, "sha256": "ab" * 32},
        {"name": "log", "path": "fox/gsplat/fox/results/training_log.txt", "bytes": 40, "sha256": "cd" * 32},
    ]
    assert "outputs" not in status.result_fields(contract.Result(status="complete"), None)
