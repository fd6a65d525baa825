"""The simulated Job controller + kubelet: Job conditions as the real controller writes them."""

from __future__ import annotations

import pytest

from splatops import names
from splatops.local import cluster as c
from splatops.local import kubelet as k

NS = "default"
POLICY = {"rules": [
    {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3]}},
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
]}


def job_body(name: str = "j", *, suspend: bool = False, backoff: int = 1) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {names.LABEL_TRAINING: "t"}},
        "spec": {"backoffLimit": backoff, "suspend": suspend, "podFailurePolicy": POLICY, "template": {
            "metadata": {"labels": {names.LABEL_TRAINING: "t"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "img:1"}]}}},
    }


@pytest.fixture
async def sim():
    async with c.running_cluster(crd=None) as cl:
        yield k.SimCluster(cl.emulator, NS)


def conditions(job: dict) -> dict[str, tuple[str, str]]:
    return {x["type"]: (x["status"], x.get("reason", "")) for x in job["status"].get("conditions", [])}


async def test_pod_from_template_owned_and_labelled(sim):
    await sim.emulator.create(c.JOB_RESOURCE, job_body())
    pod_name = await sim.start("j")
    pod = sim.pod(pod_name)
    assert pod["metadata"]["labels"][names.LABEL_TRAINING] == "t"
    assert pod["metadata"]["labels"][k.JOB_NAME_LABEL] == "j"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == sim.job("j")["metadata"]["uid"]
    assert pod["status"]["phase"] == "Pending" and sim.job("j")["status"]["active"] == 1
    await sim.start("j")  # a second sync creates no second pod
    assert len(sim.pods("j")) == 1


async def test_run_success(sim):
    await sim.emulator.create(c.JOB_RESOURCE, job_body())
    pod = await sim.start("j")
    await sim.run(pod, '{"event": "progress", "step": 1, "max_steps": 2, "loss": 0.5}')
    assert sim.pod(pod)["status"]["containerStatuses"][0]["state"]["running"]
    assert sim.emulator.pod_logs[(NS, pod)] == ['{"event": "progress", "step": 1, "max_steps": 2, "loss": 0.5}']
    job = await sim.terminate(pod, 0, '{"status": "complete"}')
    assert conditions(job)["Complete"] == ("True", "CompletionsReached")
    assert "SuccessCriteriaMet" in conditions(job) and job["status"]["succeeded"] == 1
    term = sim.pod(pod)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term == {**term, "exitCode": 0, "message": '{"status": "complete"}'}


@pytest.mark.parametrize("code, backoff, pods_before_fail, reason", [
    (2, 3, 1, "PodFailurePolicy"),
    (3, 3, 1, "PodFailurePolicy"),
    (1, 1, 2, "BackoffLimitExceeded"),
    (137, 0, 1, "BackoffLimitExceeded"),
])
async def test_failures(sim, code, backoff, pods_before_fail, reason):
    await sim.emulator.create(c.JOB_RESOURCE, job_body(backoff=backoff))
    job: dict = {}
    for attempt in range(pods_before_fail):
        pod = await sim.start("j")
        await sim.run(pod)
        job = await sim.terminate(pod, code)
        if attempt < pods_before_fail - 1:
            assert "Failed" not in conditions(job) and len(sim.pods("j")) == attempt + 2  # retried
    assert conditions(job)["Failed"] == ("True", reason)
    assert conditions(job)["FailureTarget"] == ("True", reason)
    assert job["status"]["failed"] == pods_before_fail and job["status"]["active"] == 0


@pytest.mark.parametrize("reason, kept", [("PreemptionByScheduler", False), ("EvictionByEvictionAPI", False),
                                           ("TerminationByKubelet", True)])
async def test_disruption_is_ignored_and_retried(sim, reason, kept):
    """Preemption and evictions delete the disrupted pod (as tests/cluster sees on a real API
    server); only the kubelet's node-pressure eviction leaves it Failed."""
    await sim.emulator.create(c.JOB_RESOURCE, job_body(backoff=0))
    pod = await sim.start("j")
    await sim.run(pod)
    job = await sim.disrupt(pod, reason=reason)
    assert "Failed" not in conditions(job) and job["status"]["failed"] == 0
    pods = sim.pods("j")
    assert pods[-1]["metadata"]["name"] != pod and pods[-1]["status"]["phase"] == "Pending"
    assert len(pods) == (2 if kept else 1)
    if kept:
        assert pods[0]["status"]["conditions"][-1]["type"] == "DisruptionTarget"


async def test_deadline_exceeded_kills_the_pod(sim):
    await sim.emulator.create(c.JOB_RESOURCE, job_body())
    pod = await sim.start("j")
    await sim.run(pod)
    job = await sim.expire("j")
    assert conditions(job)["Failed"] == ("True", "DeadlineExceeded")
    assert sim.pod(pod)["status"]["phase"] == "Failed"


async def test_suspend_and_resume(sim):
    await sim.emulator.create(c.JOB_RESOURCE, job_body(suspend=True))
    job = await sim.sync_job("j")
    assert conditions(job)["Suspended"] == ("True", "JobSuspended") and sim.pods("j") == []
    await sim.emulator.patch(c.JOB_RESOURCE, NS, "j", {"spec": {"suspend": False}})
    pod = await sim.start("j")
    await sim.run(pod)
    assert conditions(sim.job("j"))["Suspended"] == ("False", "JobResumed")
    await sim.emulator.patch(c.JOB_RESOURCE, NS, "j", {"spec": {"suspend": True}})
    job = await sim.sync_job("j")
    assert conditions(job)["Suspended"] == ("True", "JobSuspended") and sim.pods("j") == []


@pytest.mark.parametrize("step, field", [
    ("image_pull_failure", "ImagePullBackOff"),
    ("unschedulable", "Unschedulable"),
])
async def test_pending_problems(sim, step, field):
    await sim.emulator.create(c.JOB_RESOURCE, job_body())
    pod = await sim.start("j")
    await getattr(sim, step)(pod)
    status = sim.pod(pod)["status"]
    assert status["phase"] == "Pending"
    if step == "unschedulable":
        assert status["conditions"][0] == {**status["conditions"][0], "reason": field, "status": "False"}
    else:
        assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == field


@pytest.mark.parametrize("rule, pod_status, expected", [
    ({"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}},
     {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 2}}}]}, "FailJob"),
    ({"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [2]}},
     {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 0}}}]}, None),
    ({"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [2]}},
     {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 5}}}]}, "Count"),
    ({"action": "FailJob", "onExitCodes": {"containerName": "x", "operator": "In", "values": [2]}},
     {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 2}}}]}, None),
    ({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
     {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}, "Ignore"),
    ({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
     {"conditions": [{"type": "Ready", "status": "True"}]}, None),
])
def test_pod_failure_action(rule, pod_status, expected):
    pod = {"metadata": {"name": "p", "namespace": NS}, "status": pod_status}
    hit = k.pod_failure_action({"rules": [rule]}, pod)
    assert (hit[0] if hit else None) == expected


async def test_resume_restarts_the_jobs_start_time(sim, monkeypatch):
    """As kube-controller-manager's Job controller: a resumed Job's startTime is the resume time
    (activeDeadlineSeconds counts continuously active time)."""
    await sim.emulator.create(c.JOB_RESOURCE, job_body())
    await sim.start("j")
    monkeypatch.setattr(k, "now", lambda: "2030-01-01T00:00:00Z")
    await sim.emulator.patch(c.JOB_RESOURCE, NS, "j", {"spec": {"suspend": True}})
    assert (await sim.sync_job("j"))["status"]["startTime"] != "2030-01-01T00:00:00Z"
    await sim.emulator.patch(c.JOB_RESOURCE, NS, "j", {"spec": {"suspend": False}})
    assert (await sim.sync_job("j"))["status"]["startTime"] == "2030-01-01T00:00:00Z"
