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
    stop = await kube.start_operator()
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
    # A restarted operator decides the same from the cluster (the holder has a Job), and says it once.
    await kube.stop_operator(stop)
    await kube.start_operator()

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


async def test_concurrent_gateway_posts_never_run_two_writers(kube: Harness, tmp_path):
    """The original REST API keeps one gsplat/ per scene; it no longer checks "in progress" itself
    (check-then-create raced: 8 concurrent POSTs gave 5 running trainings). Every accepted POST
    is a training; the operator runs one at a time, the rest wait in Queued (OutputBusy)."""
    import asyncio

    import httpx

    from splatops.client.kube import Target, connect
    from splatops.gateway.app import create_app
    from splatops.gateway.repository import KubeRepository
    from splatops.gateway.settings import GatewaySettings

    mount = tmp_path / "mnt"
    scene = mount / "scenes" / "fox"
    for sub, name in (("colmap/sparse_initial", "cameras.bin"), ("colmap/sparse_initial", "images.bin"),
                      ("colmap/sparse_initial", "points3D.bin"), ("images", "0001.jpg")):
        (scene / sub).mkdir(parents=True, exist_ok=True)
        (scene / sub / name).write_bytes(b"\0")
    settings = GatewaySettings(mount_path=str(mount), claim_name="scenes", scenes_root="scenes")
    await kube.start_operator()
    async with connect(Target(kubeconfig=str(kube.cluster.kubeconfig))) as client:
        app = create_app(settings, KubeRepository(client))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            answers = await asyncio.gather(*(http.post("/scene/fox/train_gsplat") for _ in range(8)))
    accepted = [r for r in answers if r.status_code == 200]
    runs = [r["metadata"]["name"] for r in kube.emulator.list_objects(c.TRAINING_RESOURCE, NS)]
    assert len(runs) == len(accepted) == 8, [r.text for r in answers]

    def started() -> list[str]:
        return [n for n in runs if kube.sim.jobs(n)]

    def queued() -> list[str]:
        return [n for n in runs if kube.status(n).get("reason") == "OutputBusy"]

    await eventually(lambda: len(started()) == 1 and len(queued()) == len(runs) - 1,
                     lambda: f"one Job, the rest OutputBusy; Jobs {started()}, queued {queued()}")
    first = started()[0]
    pod = await kube.sim.start(kube.job_of(first)["metadata"]["name"])
    await kube.sim.terminate(pod, 0, MIJATO_DONE)
    await kube.wait_phase(first, "Succeeded")
    await eventually(lambda: len(started()) == 2 and len(queued()) == len(runs) - 2,
                     lambda: f"the next one started; Jobs {started()}, queued {queued()}")


async def test_a_deleted_holders_terminating_pod_keeps_the_output_busy(kube: Harness):
    """Deleting a training deletes its Job and pod, but the trainer may still write while its pod
    terminates (SIGTERM, grace period): the directory frees when the pod is gone, not before."""
    await kube.start_operator()
    await kube.create("old", **SHARED)
    pod = await kube.running_pod("old", progress(10))
    await kube.wait_phase("old", "Running")
    await kube.create("new", **SHARED)
    await kube.wait_phase("new", "Queued")
    # A finalizer keeps the pod terminating (deletionTimestamp set, still Running) after the GC.
    await kube.emulator.patch(c.POD_RESOURCE, NS, pod, {"metadata": {"finalizers": ["test.splatops.dev/hold"]}})
    await kube.emulator.delete(c.TRAINING_RESOURCE, NS, "old")
    await eventually(lambda: f"its pod {pod} is still running" in kube.status("new").get("message", ""),
                     lambda: f"new waits for the terminating pod; status {kube.status('new')}")
    assert (kube.emulator.read(c.POD_RESOURCE, NS, pod) or {}).get("metadata", {}).get("deletionTimestamp")
    assert kube.sim.jobs("new") == []
    await kube.emulator.patch(c.POD_RESOURCE, NS, pod, {"metadata": {"finalizers": []}})
    await kube.wait_job("new")
    await kube.wait_phase("new", "Pending")


async def test_a_suspended_holder_keeps_its_output(kube: Harness):
    """Suspending stops the pod but the training resumes from the checkpoints in its output
    directory: it keeps the directory until it ends or is deleted."""
    await kube.start_operator()
    await kube.create("first", **SHARED)
    pod = await kube.running_pod("first", progress(10))
    await kube.create("second", **SHARED)
    await kube.wait_phase("second", "Queued")
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "first", {"spec": {"suspend": True}})
    await kube.wait_phase("first", "Suspended")
    job1 = kube.job_of("first")["metadata"]["name"]
    await kube.sim.sync_job(job1)  # the Job controller stops the suspended Job's pod
    await eventually(lambda: kube.emulator.read(c.POD_RESOURCE, NS, pod) is None, "the suspended pod gone")
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "first", {"spec": {"suspend": False}})
    await eventually(lambda: not kube.sim.job(job1)["spec"].get("suspend"), "first resumed")
    pod = await kube.sim.start(job1)
    await kube.sim.run(pod, progress(20))
    await kube.wait_phase("first", "Running")
    assert kube.status("second")["reason"] == "OutputBusy" and kube.sim.jobs("second") == []
    await kube.sim.terminate(pod, 0, MIJATO_DONE)
    await kube.wait_job("second")
