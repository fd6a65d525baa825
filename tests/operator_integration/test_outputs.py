"""One writer per output directory: the real operator over HTTP against the emulator.

Two trainings that resolve to the same claim and output directory never run at once: the later
one waits in Queued (reason OutputBusy, one Event naming the holder) without a Job, and starts
when the holder ends.
"""

from __future__ import annotations

import pytest

from splatops import contract
from splatops.local import cluster as c

from .conftest import NS, Harness, eventually
from .test_operator import condition, progress

pytestmark = pytest.mark.timeout(60)

MIJATO_DONE = contract.Result(status="complete", model_path="/data/scenes/mijato/gsplat/results.ply",
                              model_size_mb=1.0, steps=300).to_json()
SHARED = {"output": {"path": "scenes/mijato/gsplat"}}  # the seed layout, as the REST gateway sets it


def busy_events(kube: Harness, name: str) -> list[dict]:
    return [e for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS)
            if e.get("reason") == "OutputBusy" and (e.get("involvedObject") or {}).get("name") == name]


async def test_same_output_waits_for_the_holder_then_starts(kube: Harness):
    await kube.start_operator()
    await kube.create("first", **SHARED)
    job1 = await kube.wait_job("first")
    await kube.create("second", **SHARED)
    status = await kube.wait_phase("second", "Queued")
    queued = condition(status, "Queued")
    assert queued["status"] == "True" and queued["reason"] == "OutputBusy"
    assert "first" in status["message"] and "scenes/mijato/gsplat" in status["message"]
    await eventually(lambda: len(busy_events(kube, "second")) == 1, "an OutputBusy Event for second")
    assert "first" in busy_events(kube, "second")[0]["message"]
    assert kube.sim.jobs("second") == [], "a training waiting for its output directory has no Job"

    # Another training of the same scene has its own default output directory: it runs at once.
    await kube.create("third", scene={"claimName": "scenes", "path": "scenes/mijato"})
    env = {e["name"]: e["value"] for e in (await kube.wait_job("third"))["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPLATOPS_OUTPUT_DIR"] == "/data/scenes/mijato/gsplat/third"

    pod1 = await kube.sim.start(job1["metadata"]["name"])
    await kube.sim.run(pod1, progress(150))
    await kube.wait_phase("first", "Running")
    assert kube.status("second")["phase"] == "Queued" and kube.sim.jobs("second") == []
    await kube.sim.terminate(pod1, 0, MIJATO_DONE)
    await kube.wait_phase("first", "Succeeded")
    assert kube.status("first")["modelPath"] == "scenes/mijato/gsplat/results.ply"

    job2 = await kube.wait_job("second")
    await kube.wait_phase("second", "Pending")
    pod2 = await kube.sim.start(job2["metadata"]["name"])
    await kube.sim.run(pod2, progress(10))
    await kube.wait_phase("second", "Running")
    assert len(busy_events(kube, "second")) == 1, "the Event is not repeated while the holder stays the same"


async def test_deleting_the_holder_frees_the_output_for_the_oldest_waiter(kube: Harness):
    await kube.start_operator()
    await kube.create("holder", **SHARED)
    await kube.wait_job("holder")
    for name in ("w1", "w2"):
        await kube.create(name, **SHARED)
        await kube.wait_phase(name, "Queued")
    await kube.emulator.delete(c.TRAINING_RESOURCE, NS, "holder")
    await kube.wait_job("w1")  # first come, first served
    await eventually(lambda: "w1" in kube.status("w2").get("message", ""),
                     lambda: f"w2 now waits for w1; status {kube.status('w2')}")
    assert kube.sim.jobs("w2") == []
    assert [e["message"].split(",")[0] for e in busy_events(kube, "w2")] == [
        "Waiting for training holder", "Waiting for training w1"]
