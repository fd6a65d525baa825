"""When the Job cannot be created (the API server fails, or its name is held by a Job that is not
the training's), the training says so at once: phase Pending with the reason in its status and its
Pending condition, and a Warning Event, while the operator keeps retrying. And status.attempts
counts on across a recreated Job and pod retries."""

from __future__ import annotations

import pytest

from splatops import names
from splatops.controller import jobs
from splatops.local import cluster as c

from .conftest import NS, PVC_RESOURCE, Harness, eventually
from .test_operator import complete, condition, progress

pytestmark = pytest.mark.timeout(60)

TIMEOUT = "etcdserver: request timed out"
THROTTLED = "the server has received too many requests and has asked us to try again later"
UNAVAILABLE = "the server is currently unable to handle the request"


def warnings(kube: Harness, name: str, reason: str) -> list[dict]:
    return [e for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS)
            if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from splatops.controller.handlers import training as handlers

    monkeypatch.setattr(handlers, "JOB_CREATE_RETRY", 0.3, raising=False)
    monkeypatch.setattr(handlers, "FOREIGN_JOB_RETRY", 0.3)


@pytest.mark.parametrize(("script", "words"), [
    ({("POST", c.JOB_RESOURCE, False): (500, "InternalError", TIMEOUT)}, TIMEOUT),
    ({("POST", c.JOB_RESOURCE, False): (409, "AlreadyExists", 'jobs.batch "gst-flaky" already exists'),
      ("GET", c.JOB_RESOURCE, True): (429, "TooManyRequests", THROTTLED)}, THROTTLED),
    ({("GET", PVC_RESOURCE, True): (503, "ServiceUnavailable", UNAVAILABLE)}, "Checking the scene PVC scenes failed: " + UNAVAILABLE),
], ids=["500", "409+429", "pvc-503"])
async def test_failing_job_creation_is_shown_while_retried(kube: Harness, script: dict, words: str):
    """The API server keeps failing the creation (until the test lets it through)."""
    kube.emulator.fail_next.update({k: [v] * 1000 for k, v in script.items()})
    await kube.start_operator()
    await kube.create("flaky")
    await eventually(lambda: kube.status("flaky").get("reason") == "JobCreateRetrying",
                     lambda: f"JobCreateRetrying, status {kube.status('flaky')}")
    status = kube.status("flaky")
    assert status["phase"] == "Pending" and words in status["message"], status
    pending = condition(status, "Pending")
    assert pending["status"] == "True" and pending["reason"] == "JobCreateRetrying" and words in pending["message"]
    await eventually(lambda: bool(warnings(kube, "flaky", "JobCreateRetrying")), "a JobCreateRetrying Event")
    event = warnings(kube, "flaky", "JobCreateRetrying")[0]
    assert event["type"] == "Warning" and words in event["message"]
    await eventually(lambda: all(len(v) <= 997 for v in kube.emulator.fail_next.values()), "three tries")
    assert kube.sim.jobs("flaky") == []
    kube.emulator.fail_next.clear()  # the API server recovers
    job = await kube.wait_job("flaky")  # the operator kept retrying
    await eventually(lambda: kube.status("flaky").get("reason") == "JobCreated", "the reason to clear")
    assert condition(kube.status("flaky"), "Pending")["reason"] == "JobCreated"
    assert kube.status("flaky")["jobName"] == job["metadata"]["name"]


@pytest.mark.parametrize(("owner", "words"), [
    (None, "belongs to no owner, not to this training"),
    ({"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "uid-cron"},
     "belongs to CronJob nightly (uid uid-cron)"),
], ids=["unowned", "cronjob"])
async def test_a_foreign_job_holding_the_name_is_named_in_an_event(kube: Harness, owner: dict | None, words: str):
    """Someone's Job holds the training's Job name: no adoption, no silent wait, but the status
    and a Warning Event name the holder; deleting it lets the training start."""
    jname = jobs.job_name("taken")
    foreign = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": jname, "namespace": NS, "labels": {names.LABEL_MANAGED_BY: names.MANAGED_BY},
                            **({"ownerReferences": [owner]} if owner else {})},
               "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "busybox"}],
                                              "restartPolicy": "Never"}}}}
    foreign = await kube.emulator.create(c.JOB_RESOURCE, foreign)
    await kube.start_operator()
    await kube.create("taken")
    await eventually(lambda: kube.status("taken").get("reason") == "JobNameTaken",
                     lambda: f"JobNameTaken, status {kube.status('taken')}")
    assert words in kube.status("taken")["message"] and condition(kube.status("taken"), "Pending")["status"] == "True"
    await eventually(lambda: bool(warnings(kube, "taken", "JobNameTaken")), "a JobNameTaken Event")
    assert words in warnings(kube, "taken", "JobNameTaken")[0]["message"]
    assert [j["metadata"]["uid"] for j in kube.emulator.list_objects(c.JOB_RESOURCE, NS)] == [foreign["metadata"]["uid"]]
    await kube.emulator.delete(c.JOB_RESOURCE, NS, jname)
    await eventually(lambda: any(j["metadata"].get("ownerReferences", [{}])[0].get("name") == "taken"
                                 for j in kube.emulator.list_objects(c.JOB_RESOURCE, NS)), "the training's own Job")
    await eventually(lambda: kube.status("taken").get("reason") == "JobCreated", "the reason to clear")


async def test_attempts_count_pod_retries_and_a_recreated_job(kube: Harness):
    await kube.start_operator()
    await kube.create("again", backoffLimit=3)
    pod = await kube.running_pod("again", progress(10))
    await kube.wait_phase("again", "Running")
    assert kube.status("again")["attempts"] == 1
    job_name = kube.job_of("again")["metadata"]["name"]
    await kube.sim.terminate(pod, 1, "")  # a retryable failure: the Job starts another pod
    retry = await kube.sim.start(job_name)
    assert retry != pod
    await kube.sim.run(retry, progress(20))
    await eventually(lambda: kube.status("again").get("attempts") == 2, lambda: f"attempts 2, {kube.status('again')}")
    old_uid = kube.job_of("again")["metadata"]["uid"]
    await kube.emulator.delete(c.JOB_RESOURCE, NS, job_name)  # lost (deleted by hand); its pods go with it
    await eventually(lambda: any(j["metadata"]["uid"] != old_uid for j in kube.sim.jobs("again")), "the Job made again")
    third = await kube.sim.start(job_name)
    await kube.sim.run(third, progress(30))
    await eventually(lambda: kube.status("again").get("attempts") == 3, lambda: f"attempts 3, {kube.status('again')}")
    await kube.sim.terminate(third, 0, complete())
    status = await kube.wait_phase("again", "Succeeded")
    assert status["attempts"] == 3
