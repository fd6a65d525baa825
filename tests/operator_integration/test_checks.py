"""What the operator checks before and while creating the Job (scene PVC, the API server's
verdict, the affinity's shape, a Job that already exists), and its /metrics and liveness over HTTP."""

from __future__ import annotations

import copy
import socket

import aiohttp
import pytest

from splatops import names
from splatops.api.models import parse_spec
from splatops.controller import jobs
from splatops.controller.settings import Settings
from splatops.local import cluster as c

from .conftest import NS, Harness, eventually, sample

pytestmark = pytest.mark.timeout(60)


def assert_no_job(kube: Harness, name: str) -> None:
    assert kube.emulator.read(c.JOB_RESOURCE, NS, jobs.job_name(name)) is None


async def test_missing_scene_pvc_fails_at_once_with_what_to_do(kube: Harness):
    await kube.start_operator()
    await kube.create("nopvc", scene={"claimName": "no-such-claim", "path": "scenes/nopvc"})
    status = await kube.wait_phase("nopvc", "Failed")
    assert status["reason"] == "ScenePVCNotFound", status
    for words in ('"no-such-claim"', f'namespace "{NS}"', "spec.scene.claimName", "Create it"):
        assert words in status["message"], status["message"]
    await kube.handled("nopvc")  # it handled the events after its Failed write too
    assert_no_job(kube, "nopvc")  # never a Job whose pod could not start


async def test_scene_pvc_check_skipped_without_rbac(kube: Harness):
    kube.emulator.pvc_forbidden = True  # 403 on get persistentvolumeclaims
    await kube.start_operator()
    await kube.create("norbac", scene={"claimName": "cannot-tell", "path": "scenes/norbac"})
    await kube.wait_job("norbac")
    assert (await kube.wait_phase("norbac", "Pending"))["jobName"] == jobs.job_name("norbac")


async def test_job_rejected_by_the_api_server_fails_as_invalid_spec(kube: Harness):
    """A 422 on the Job is final: Failed/InvalidSpec with the API server's words, not a silent PermanentError."""
    # The real API server's words for this spec (tests/cluster). A missing PriorityClass is no
    # such example: the Job is accepted and only its pods are refused (by admission).
    kube.emulator.reject_jobs = ('spec.template.spec.nodeSelector: Invalid value: "not a label value!": a valid '
                                 "label must be an empty string or consist of alphanumeric characters")
    await kube.start_operator()
    await kube.create("rejected", nodeSelector={"pool": "not a label value!"})
    status = await kube.wait_phase("rejected", "Failed")
    assert status["reason"] == "InvalidSpec", status
    assert 'the API server rejected Job gst-rejected: Job.batch "gst-rejected" is invalid' in status["message"]
    assert "spec.template.spec.nodeSelector" in status["message"]
    assert_no_job(kube, "rejected")


@pytest.mark.parametrize(("spec", "words"), [
    ({"image": "docker.io/evil/miner:1"}, "policy allowedImagePrefixes: spec.image 'docker.io/evil/miner:1' is not allowed"),
    ({"priorityClassName": "system-node-critical"}, "policy allowedPriorityClasses: spec.priorityClassName 'system-node-critical'"),
    ({"tolerations": [{"operator": "Exists"}]}, "policy blanketTolerations: spec.tolerations[0] has no key"),
    ({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "policy deniedNodeLabelKeys: node label 'node-role.kubernetes.io/control-plane'"),
], ids=["image", "priority", "toleration", "node-selector"])
async def test_spec_against_the_policy_fails_as_invalid_spec(kube: Harness, spec: dict, words: str):
    """Creating a training is not "run any pod": the chart's policy (default: only the trainer's
    repository, no priority class, no blanket or node-condition tolerations) is enforced."""
    await kube.start_operator()
    await kube.create("hostile", **spec)
    status = await kube.wait_phase("hostile", "Failed")
    assert status["reason"] == "InvalidSpec" and words in status["message"], status
    assert_no_job(kube, "hostile")


async def test_image_allowed_by_the_policy_runs(kube: Harness):
    await kube.start_operator(policy_allowed_image_prefixes="registry.example/team/")
    await kube.create("custom", image="registry.example/team/trainer:9")
    job = await kube.wait_job("custom")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/team/trainer:9"


async def test_affinity_that_is_not_a_core_v1_affinity_fails_as_invalid_spec(kube: Harness):
    await kube.start_operator()
    await kube.create("typo", affinity={"nodeAfinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}})
    status = await kube.wait_phase("typo", "Failed")
    assert status["reason"] == "InvalidSpec" and "not a core/v1 Affinity: nodeAfinity" in status["message"], status
    assert_no_job(kube, "typo")


# --- a Job that already exists (409 on create) ---------------------------------------------------------


def existing_job(kube: Harness, name: str, *, owner_uid: str | None = None, labelled: bool = True) -> dict:
    """The Job the operator would build for `name`, owned by `owner_uid` (default: the training)."""
    body = kube.resource(name)
    if owner_uid is not None:
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = owner_uid
    job = jobs.build_job(body, parse_spec(body["spec"]), Settings())
    if not labelled:  # e.g. made by an older operator: not in the operator's watch, so its create gets a 409
        del job["metadata"]["labels"][names.LABEL_MANAGED_BY]
    return job


async def test_409_adopts_the_existing_job_of_this_training(kube: Harness):
    started = sample("splatops_trainings_started_total", namespace=NS)
    await kube.create("adopt")
    job = await kube.emulator.create(c.JOB_RESOURCE, existing_job(kube, "adopt", labelled=False))
    await kube.start_operator()
    status = await kube.wait_phase("adopt", "Pending")
    assert status["jobName"] == job["metadata"]["name"]
    await kube.handled("adopt")
    (only,) = kube.emulator.list_objects(c.JOB_RESOURCE, NS)
    assert only["metadata"]["uid"] == job["metadata"]["uid"]
    assert sample("splatops_trainings_started_total", namespace=NS) == started  # counted by its creator


@pytest.mark.parametrize("labelled", [False, True], ids=["409", "indexed"])
async def test_job_of_a_deleted_namesake_is_waited_for(kube: Harness, monkeypatch: pytest.MonkeyPatch, labelled: bool):
    """The old Job (another owner uid) is still being garbage-collected: no second Job, none of
    its status taken over; once it is gone, the training gets its own Job."""
    from splatops.controller.handlers import training as handlers

    monkeypatch.setattr(handlers, "FOREIGN_JOB_RETRY", 0.5)
    await kube.create("reborn")
    old = existing_job(kube, "reborn", owner_uid="uid-of-the-deleted-namesake", labelled=labelled)
    old = await kube.emulator.create(c.JOB_RESOURCE, old)
    await kube.emulator.patch(c.JOB_RESOURCE, NS, old["metadata"]["name"], {"status": {
        "conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}, subresource="status")
    await kube.start_operator()
    await eventually(lambda: any(e.get("reason") == "JobNameTaken" and e["involvedObject"]["name"] == "reborn"
                                 for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS)),
                     "the Warning Event: the Job's name is taken")  # it saw the old Job and waits
    for _ in range(2):  # and tried again on later events
        await kube.handled("reborn")
    assert [j["metadata"]["uid"] for j in kube.emulator.list_objects(c.JOB_RESOURCE, NS)] == [old["metadata"]["uid"]]
    assert kube.status("reborn").get("phase") in (None, "Pending"), kube.status("reborn")  # not the old Job's Succeeded
    await kube.emulator.delete(c.JOB_RESOURCE, NS, old["metadata"]["name"])
    await eventually(lambda: any(j["metadata"]["uid"] != old["metadata"]["uid"]
                                 for j in kube.emulator.list_objects(c.JOB_RESOURCE, NS)), "the training's own Job")
    (job,) = kube.emulator.list_objects(c.JOB_RESOURCE, NS)
    assert job["metadata"]["ownerReferences"][0]["uid"] == kube.resource("reborn")["metadata"]["uid"]
    await kube.wait_phase("reborn", "Pending")


# --- /metrics and liveness over HTTP -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_metrics_and_liveness_served_over_http(kube: Harness):
    metrics_port, liveness_port = free_port(), free_port()
    await kube.start_operator(metrics_port=str(metrics_port), liveness_port=str(liveness_port))
    await kube.create("served")
    await kube.wait_phase("served", "Pending")
    async with aiohttp.ClientSession() as http:
        async def scrape() -> str:
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200
                return await resp.text()

        async with http.get(f"http://127.0.0.1:{liveness_port}/healthz") as resp:
            assert resp.status == 200
        text = await scrape()
    # The registry is per process (other tests' trainings count too): the series are there and moved.
    started = [line for line in text.splitlines() if line.startswith(f'splatops_trainings_started_total{{namespace="{NS}"}} ')]
    assert started and float(started[0].split()[-1]) >= 1, started
    assert "splatops_queue_wait_seconds_count " in text and f'splatops_trainings{{namespace="{NS}",phase="Pending"}}' in text


async def test_status_write_to_a_training_deleted_meanwhile_is_not_an_error(kube: Harness):
    """The index can still show a training the API server has just deleted (a Job or pod event
    reconciles it): the write's definitive NotFound means "gone", not a handler error to retry."""
    from splatops.controller import kube as kube_client

    await kube.create("here")
    api = await kube_client.connect()
    try:
        assert await api.patch_status(NS, "here", {"message": "written"}) is True
        assert kube.status("here")["message"] == "written"
        assert await api.patch_status(NS, "gone", {"message": "lost"}) is False
    finally:
        await api.close()
