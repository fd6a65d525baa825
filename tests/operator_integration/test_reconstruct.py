"""Structure-from-motion through the real operator (emulator): spec.reconstruct reaches the
trainer, its stage events show as phase Running / reason Reconstructing with the trainer's words,
then training progress takes over, and the reconstruction's numbers land in status."""

from __future__ import annotations

import pytest

from splatops import contract

from .conftest import Harness, eventually
from .test_operator import complete, condition, progress

pytestmark = pytest.mark.timeout(60)


def stage(message: str, done: int, total: int) -> str:
    return contract.StageReport(stage=contract.STAGE_RECONSTRUCTING, message=message, done=done, total=total).to_json()


NUMBERS = {"images": 50, "registered": 47, "points": 12345, "mean_reprojection_error_px": 0.71, "seconds": 88.2,
           "matcher": "exhaustive", "unregistered": ["a.jpg", "b.jpg", "c.jpg"]}


async def test_reconstruction_shows_in_status_then_training(kube: Harness):
    await kube.start_operator()
    await kube.create("sfm", reconstruct="Always")
    job = await kube.wait_job("sfm")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ENV_RECONSTRUCT] == "Always" and contract.ENV_RECONSTRUCT_ONLY not in env

    pod = await kube.running_pod("sfm", "starting", stage("Extracting features 12/50", 12, 50))
    await eventually(lambda: kube.status("sfm").get("reason") == "Reconstructing",
                     lambda: f"reason Reconstructing, status {kube.status('sfm')}")
    status = kube.status("sfm")
    assert status["phase"] == "Running" and "Extracting features 12/50" in status["message"]
    assert status["progress"]["message"] == "Extracting features 12/50" and status["progress"]["stage"] == "Reconstructing"
    assert condition(status, "Running")["reason"] == "Reconstructing"

    await kube.sim.log(pod, stage("Registered 47/50 images", 47, 50))
    await eventually(lambda: "Registered 47/50 images" in kube.status("sfm").get("message", ""),
                     lambda: f"Registered 47/50, status {kube.status('sfm')}")
    assert kube.status("sfm")["progress"]["message"] == "Registered 47/50 images"

    await kube.sim.log(pod, progress(100))  # training has started: the usual words again
    await eventually(lambda: kube.status("sfm").get("reason") == "TrainerRunning",
                     lambda: f"reason TrainerRunning, status {kube.status('sfm')}")
    assert kube.status("sfm")["progress"]["message"] == "Iteration 100/300 | Loss: 0.0234"
    assert "stage" not in kube.status("sfm")["progress"]

    await kube.sim.terminate(pod, 0, complete(reconstruction=NUMBERS))
    status = await kube.wait_phase("sfm", "Succeeded")
    assert status["reconstruction"] == NUMBERS


async def test_failed_reconstruction_is_an_input_failure(kube: Harness):
    await kube.start_operator()
    await kube.create("bad")
    pod = await kube.running_pod("bad", stage("Mapping 6 images", 0, 6))
    words = "Reconstruction failed: structure-from-motion registered only 0 of 6 images (not registered: n0.jpg)."
    await kube.sim.terminate(pod, 2, contract.Result(status="failed", reason="ReconstructionFailed", error=words).to_json())
    status = await kube.wait_phase("bad", "Failed")
    assert status["reason"] == "ReconstructionFailed" and status["message"] == words
