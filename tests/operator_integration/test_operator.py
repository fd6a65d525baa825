"""The real operator end to end against the emulator; the test is the Job controller and kubelet."""

from __future__ import annotations

import asyncio
import time

import pytest

from splatops import contract, names
from splatops.api.models import Phase
from splatops.local import cluster as c

from .conftest import NS, Harness, eventually, sample

pytestmark = pytest.mark.timeout(60)


def progress(step: int, max_steps: int = 300, loss: float = 0.0234) -> str:
    return contract.Progress(step=step, max_steps=max_steps, loss=loss, num_gaussians=1000,
                             steps_per_sec=50.0).to_json()


def complete(**extra: object) -> str:
    return contract.Result(status="complete", model_path="/data/scenes/t/gsplat/results.ply",
                           model_size_mb=12.5, num_gaussians=1000, psnr=28.5, steps=300,
                           config={"scene_id": "t", "max_steps": 300}, **extra).to_json()


def failed(reason: contract.Reason, error: str) -> str:
    return contract.Result(status="failed", reason=reason.value, error=error).to_json()


def condition(status: dict, type_: str) -> dict:
    return next((x for x in status.get("conditions") or [] if x["type"] == type_), {})


def phase_events(kube: Harness, name: str) -> list[str]:
    """Reasons of the phase-change Events of training `name`, oldest first."""
    events = kube.emulator.list_objects(c.EVENT_RESOURCE, NS)
    return [e["reason"] for e in events if (e.get("involvedObject") or {}).get("name") == name
            and e.get("reason") in {p.value for p in Phase}]


OUTCOME_METRICS = {
    "started": ("splatops_trainings_started_total", {"namespace": NS}),
    "succeeded": ("splatops_trainings_succeeded_total", {"namespace": NS}),
    "duration_succeeded": ("splatops_training_duration_seconds_count", {"outcome": "succeeded"}),
    "duration_failed": ("splatops_training_duration_seconds_count", {"outcome": "failed"}),
    "queue_wait": ("splatops_queue_wait_seconds_count", {}),
}


def outcome_metrics(**failed_reasons: str) -> dict[str, float]:
    """The outcome metrics now (the operator runs in this process: its registry is ours to read)."""
    values = {key: sample(metric, **labels) for key, (metric, labels) in OUTCOME_METRICS.items()}
    values.update({f"failed_{r}": sample("splatops_trainings_failed_total", namespace=NS, reason=r) for r in failed_reasons.values()})
    return values


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


async def test_create_gives_exactly_one_job_with_expected_spec(kube: Harness):
    await kube.start_operator()
    res = await kube.create("t1", dataFactor=2)
    job = await kube.wait_job("t1")
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"][names.LABEL_TRAINING] == "t1"
    assert meta["ownerReferences"][0]["uid"] == res["metadata"]["uid"]
    assert meta["ownerReferences"][0]["controller"] is True
    container = spec["template"]["spec"]["containers"][0]
    assert container["name"] == names.TRAINER_CONTAINER
    assert container["image"] == "registry.example/splatops/trainer:test"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.ENV_SCENE_DIR] == "/data/scenes/t1" and env[contract.ENV_DATA_FACTOR] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes[names.SCENE_VOLUME]["persistentVolumeClaim"]["claimName"] == "scenes"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and set(rules[0]["onExitCodes"]["values"]) == {2, 3}
    assert rules[1]["action"] == "Ignore"
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False
    status = await kube.wait_phase("t1", "Pending")
    assert status["jobName"] == meta["name"]
    await kube.handled("t1")  # more reconciles: still one Job
    kube.job_of("t1")


async def test_progress_in_status(kube: Harness):
    await kube.start_operator()
    await kube.create("t2")
    pod = await kube.running_pod("t2", "starting", progress(100, loss=0.05))
    await kube.wait_phase("t2", "Running")
    await kube.sim.log(pod, "noise that is not JSON", progress(150))
    await eventually(lambda: kube.status("t2").get("progress", {}).get("step") == 150,
                     lambda: f"progress 150, status {kube.status('t2')}")
    prog = kube.status("t2")["progress"]
    assert prog["message"] == "Iteration 150/300 | Loss: 0.0234"
    assert prog["maxSteps"] == 300 and prog["percent"] == 50.0
    assert condition(kube.status("t2"), "Running")["status"] == "True"


async def test_success_gives_model_path(kube: Harness):
    before = outcome_metrics()
    await kube.start_operator()
    await kube.create("t3")
    await kube.wait_phase("t3", "Pending")
    pod = await kube.running_pod("t3", progress(300))
    await kube.wait_phase("t3", "Running")
    await kube.sim.terminate(pod, 0, complete())
    status = await kube.wait_phase("t3", "Succeeded")
    assert status["modelPath"].endswith("gsplat/results.ply")
    assert status["modelSizeMB"] == 12.5
    assert condition(status, "Succeeded")["status"] == "True"
    assert status.get("completionTime")
    # One Event per phase change, reason = the new phase, and no more (kopf posts them in the background).
    expected = ["Pending", "Running", "Succeeded"]
    await eventually(lambda: phase_events(kube, "t3") == expected, lambda: f"Events {expected}, got {phase_events(kube, 't3')}")
    await kube.settled("t3")  # every event handled, every Event it queued posted
    assert phase_events(kube, "t3") == expected
    assert moved(before, outcome_metrics()) == {"started": 1, "succeeded": 1, "duration_succeeded": 1, "queue_wait": 1}


FAILURES = [
    # (name, how the test plays the cluster, expected reason, expected words in the message)
    ("colmap", ("terminate", 2, failed(contract.Reason.COLMAP_NOT_FOUND, contract.MSG_COLMAP_NOT_FOUND)),
     "ColmapNotFound", contract.MSG_COLMAP_NOT_FOUND),
    ("oom", ("terminate", 3, failed(contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM)),
     "OutOfMemory", contract.MSG_OOM),
    ("noimages", ("terminate", 2, failed(contract.Reason.NO_IMAGES, contract.MSG_NO_IMAGES)),
     "NoImages", contract.MSG_NO_IMAGES),
    ("deadline", ("expire",), "DeadlineExceeded", "activeDeadlineSeconds"),
    ("pull", ("image_pull_failure",), "ImagePullFailed", "image"),
    ("nogpu", ("unschedulable",), "Unschedulable", "GPU node"),
]


@pytest.mark.parametrize("name, action, reason, words", FAILURES, ids=[f[0] for f in FAILURES])
async def test_failure_kinds(kube: Harness, name, action, reason, words):
    before = outcome_metrics(reason=reason)
    await kube.start_operator()
    await kube.create(name)
    job = await kube.wait_job(name)
    pod = await kube.sim.start(job["metadata"]["name"])
    if action[0] == "terminate":
        await kube.sim.run(pod, progress(10))
        await kube.sim.terminate(pod, action[1], action[2])
    elif action[0] == "expire":
        await kube.sim.run(pod, progress(10))
        await kube.sim.expire(job["metadata"]["name"])
    else:
        await getattr(kube.sim, action[0])(pod)
    status = await kube.wait_phase(name, "Failed")
    assert (status["reason"], words in status["message"]) == (reason, True), status
    assert condition(status, "Failed")["status"] == "True"
    # The duration runs from the Job's start, also for a pod that never ran.
    assert moved(before, outcome_metrics(reason=reason)) == {"started": 1, "queue_wait": 1, f"failed_{reason}": 1,
                                                             "duration_failed": 1}


async def test_disruption_retries_and_runs_again(kube: Harness):
    await kube.start_operator()
    await kube.create("t4")
    pod = await kube.running_pod("t4", progress(50))
    await kube.wait_phase("t4", "Running")
    job_name = kube.job_of("t4")["metadata"]["name"]
    await kube.sim.disrupt(pod)  # preempted: the pod is deleted, the Job makes a new one
    pods = kube.sim.pods(job_name)
    assert len(pods) == 1 and pods[0]["metadata"]["name"] != pod and pods[0]["status"]["phase"] == "Pending"
    await kube.sim.run(pods[0]["metadata"]["name"], progress(60))
    await kube.wait_phase("t4", "Running")
    await eventually(lambda: kube.status("t4").get("progress", {}).get("step") == 60, "progress after retry")
    assert kube.status("t4").get("phase") == "Running"
    kube.job_of("t4")


async def test_restarted_operator_creates_no_second_job(kube: Harness):
    await kube.start_operator()
    await kube.create("t5")
    job = await kube.wait_job("t5")
    await kube.wait_phase("t5", "Pending")
    await kube.stop_operators()
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod, progress(120))
    await kube.start_operator()
    await kube.wait_phase("t5", "Running")
    await eventually(lambda: kube.status("t5").get("progress", {}).get("step") == 120, "progress after restart")
    assert kube.job_of("t5")["metadata"]["uid"] == job["metadata"]["uid"]


async def test_delete_removes_job_and_pods(kube: Harness):
    await kube.start_operator()
    await kube.create("t6")
    pod = await kube.running_pod("t6", progress(5))
    job_name = kube.job_of("t6")["metadata"]["name"]
    await kube.emulator.delete(c.TRAINING_RESOURCE, NS, "t6")
    await eventually(lambda: kube.emulator.read(c.TRAINING_RESOURCE, NS, "t6") is None, "the resource gone")
    await eventually(lambda: kube.sim.job(job_name) is None, "the Job gone")
    assert kube.emulator.read(c.POD_RESOURCE, NS, pod) is None


async def test_cap_queues_until_a_slot_frees(kube: Harness):
    await kube.start_operator(max_concurrent="2")
    for name in ("q1", "q2", "q3"):
        await kube.create(name)
    await kube.wait_phase("q3", "Queued")
    await kube.wait_phase("q1", "Pending")
    await kube.wait_phase("q2", "Pending")
    pod1 = await kube.running_pod("q1", progress(1))
    await kube.wait_phase("q1", "Running")
    q3_jobs = kube.sim.jobs("q3")
    assert not q3_jobs or q3_jobs[0]["spec"].get("suspend") is True, "a queued training must not run"
    await kube.sim.terminate(pod1, 0, complete())
    await kube.wait_phase("q1", "Succeeded")
    await eventually(lambda: kube.status("q3").get("phase") in ("Pending", "Running"),
                     lambda: f"q3 admitted; status {kube.status('q3')}")
    job3 = await kube.wait_job("q3")
    await eventually(lambda: not (kube.sim.job(job3["metadata"]["name"]) or {})["spec"].get("suspend"),
                     "q3's Job unsuspended")


async def test_cap_admits_in_creation_order_within_one_second(kube: Harness):
    """creationTimestamp has 1 s resolution: trainings created in the same second are admitted in
    the order they were created (first seen), not by name."""
    await kube.start_operator(max_concurrent="1")
    order = ["qd", "qb", "qc", "qa"]  # neither alphabetical nor its reverse
    if time.time() % 1 > 0.7:
        await asyncio.sleep(1 - time.time() % 1)  # all four in one second
    for name in order:
        await kube.create(name)
    assert len({kube.resource(n)["metadata"]["creationTimestamp"] for n in order}) == 1
    await kube.wait_phase("qd", "Pending")
    for name in order[1:]:
        await kube.wait_phase(name, "Queued")
    for i, name in enumerate(order):
        job_name = (await kube.wait_job(name))["metadata"]["name"]
        await eventually(lambda: not kube.sim.job(job_name)["spec"].get("suspend"),
                         lambda: f"{name} admitted; queue {[(n, kube.status(n).get('phase')) for n in order]}")
        for later in order[i + 1:]:
            assert kube.job_of(later)["spec"]["suspend"] is True, f"{later} admitted before {name}"
        pod = await kube.sim.start(job_name)
        await kube.sim.run(pod, progress(300))
        await kube.sim.terminate(pod, 0, complete())
        await kube.wait_phase(name, "Succeeded")


async def test_job_deleted_by_ttl_keeps_the_terminal_status(kube: Harness):
    """ttlSecondsAfterFinished (default 7 days) deletes the finished Job and its pods: the training
    stays Succeeded, and neither a reconcile nor an operator restart makes a new Job."""
    await kube.start_operator()
    await kube.create("ttl")
    job = await kube.wait_job("ttl")
    job_name = job["metadata"]["name"]
    lifetime = {k: job["spec"].get(k) for k in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")}
    assert lifetime == {"backoffLimit": 3, "activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 604800}
    pod = await kube.running_pod("ttl", progress(300))
    await kube.sim.terminate(pod, 0, complete())
    await kube.wait_phase("ttl", "Succeeded")
    await kube.settled("ttl")  # the last writes have landed
    final = kube.status("ttl")
    await kube.emulator.delete(c.JOB_RESOURCE, NS, job_name)  # the TTL controller; the pods go with it
    await eventually(lambda: kube.sim.job(job_name) is None and not kube.sim.pods(job_name), "the Job and its pods gone")
    await kube.deletion_handled("jobs", job_name)
    await kube.handled("ttl")  # and a reconcile of the training after it
    assert (kube.status("ttl"), kube.sim.jobs("ttl")) == (final, [])
    await kube.stop_operators()
    await kube.start_operator()  # its initial listing runs the training handler again
    await kube.handled("ttl")
    assert (kube.status("ttl"), kube.sim.jobs("ttl")) == (final, [])
    assert phase_events(kube, "ttl") == ["Pending", "Running", "Succeeded"]


async def running_job(kube: Harness, name: str) -> str:
    """Start the operator and a training whose pod runs: its Job's name, once it is Running."""
    await kube.start_operator()
    await kube.create(name)
    await kube.running_pod(name, progress(40))
    await kube.wait_phase(name, "Running")
    return kube.job_of(name)["metadata"]["name"]


async def test_suspend_and_resume(kube: Harness):
    job_name = await running_job(kube, "t7")
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "t7", {"spec": {"suspend": True}})
    await eventually(lambda: kube.sim.job(job_name)["spec"].get("suspend") is True, "the Job suspended")
    await kube.sim.sync_job(job_name)  # the Job controller deletes the pod
    assert kube.sim.pods(job_name) == []
    await kube.wait_phase("t7", "Suspended")
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "t7", {"spec": {"suspend": False}})
    await eventually(lambda: not kube.sim.job(job_name)["spec"].get("suspend"), "the Job resumed")
    pod = await kube.sim.start(job_name)
    await kube.sim.run(pod, progress(45))
    await kube.wait_phase("t7", "Running")
    assert kube.status("t7")["jobName"] == job_name and len(kube.sim.pods(job_name)) == 1


async def test_suspend_flipped_while_the_operator_was_down(kube: Harness):
    """Level-triggered: a restarted operator acts on spec.suspend as it finds it, both ways."""
    job_name = await running_job(kube, "t8")
    await kube.stop_operators()
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "t8", {"spec": {"suspend": True}})
    await kube.start_operator()
    await eventually(lambda: kube.sim.job(job_name)["spec"].get("suspend") is True, "the Job suspended")
    await kube.sim.sync_job(job_name)
    await kube.wait_phase("t8", "Suspended")
    await kube.stop_operators()
    await kube.emulator.patch(c.TRAINING_RESOURCE, NS, "t8", {"spec": {"suspend": False}})
    await kube.start_operator()
    await eventually(lambda: not kube.sim.job(job_name)["spec"].get("suspend"), "the Job resumed")
    assert len(kube.sim.jobs("t8")) == 1


async def test_failure_reason_when_job_condition_arrives_with_the_pod(kube: Harness):
    """The Job's Failed condition may reach the operator before the pod's termination message."""
    kube.sim.controller_lag = 0.0  # the Job controller reacts in the same instant
    await kube.start_operator()
    await kube.create("race")
    job = await kube.wait_job("race")
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod, progress(10))
    await kube.sim.terminate(pod, 3, failed(contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM))
    status = await kube.wait_phase("race", "Failed")
    assert status["reason"] == "OutOfMemory", status


async def test_kueue_admission_and_preemption(kube: Harness):
    """Kueue admits by unsuspending the Job and preempts by suspending it (no DisruptionTarget)."""
    await kube.start_operator()
    await kube.create("kq", queueName="gpu-queue")
    job = await kube.wait_job("kq")
    job_name = job["metadata"]["name"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][names.KUEUE_QUEUE_LABEL] == "gpu-queue"
    await kube.wait_phase("kq", "Queued")
    await kube.emulator.patch(c.JOB_RESOURCE, NS, job_name, {"spec": {"suspend": False}})  # admitted
    pod = await kube.sim.start(job_name)
    await kube.sim.run(pod, progress(20))
    await kube.wait_phase("kq", "Running")
    await kube.emulator.patch(c.JOB_RESOURCE, NS, job_name, {"spec": {"suspend": True}})  # preempted
    await kube.sim.sync_job(job_name)
    status = await kube.wait_phase("kq", "Queued")
    assert kube.sim.pods(job_name) == [] and status["reason"], status


async def test_kueue_pending_reason_in_the_status_message(kube: Harness):
    """While Kueue holds the Job suspended, status.message carries Kueue's own words from the
    Job's Workload (read by the periodic reconcile), and loses them once admitted."""
    words = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a10g, 1 more needed"
    await kube.start_operator(progress_interval="0.2")
    await kube.create("kw", queueName="gpu-a10g")
    job = await kube.wait_job("kw")
    await kube.wait_phase("kw", "Queued")
    await kube.sim.kueue_pending(job["metadata"]["name"], words)
    await eventually(lambda: words in (kube.status("kw").get("message") or ""), lambda: f"Kueue's words; status {kube.status('kw')}")
    status = kube.status("kw")
    assert status["reason"] == "WaitingForKueue" and "(queue gpu-a10g)" in status["message"], status
    await kube.emulator.patch(c.JOB_RESOURCE, NS, job["metadata"]["name"], {"spec": {"suspend": False}})  # admitted
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod, progress(20))
    assert words not in (await kube.wait_phase("kw", "Running"))["message"]


async def test_object_storage_locations_reach_the_trainer_and_outputs_the_status(kube: Harness):
    await kube.start_operator()
    await kube.create("s3", scene={"claimName": "scenes", "path": "scenes/s3", "source": "s3://team-scenes/fox/"},
                      output={"uri": "s3://team-results/runs/fox/"})
    job = await kube.wait_job("s3")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env[contract.ENV_SCENE_SOURCE], env[contract.ENV_OUTPUT_URI]) == ("s3://team-scenes/fox/", "s3://team-results/runs/fox/")
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod, progress(300))
    outputs = [{"name": "ply", "file": "results.ply", "uri": "s3://team-results/runs/fox/results.ply",
                "bytes": 13107200, "sha256": "0f" * 32}]
    await kube.sim.terminate(pod, 0, complete(outputs=outputs))
    status = await kube.wait_phase("s3", "Succeeded")
    assert status["outputs"] == [{"name": "ply", "uri": "s3://team-results/runs/fox/results.ply",
                                  "path": status["modelPath"], "bytes": 13107200, "sha256": "0f" * 32}]


async def test_job_lost_while_the_operator_was_down_is_created_again_with_a_warning(kube: Harness):
    """A Job deleted before its outcome was recorded (by hand, or by its TTL while the operator was
    down) is created again, once: the trainer resumes from its checkpoint. A Warning says why."""
    await kube.start_operator()
    await kube.create("lost")
    job = await kube.wait_job("lost")
    await kube.wait_phase("lost", "Pending")
    await kube.stop_operators()
    await kube.emulator.delete(c.JOB_RESOURCE, NS, job["metadata"]["name"])
    await kube.start_operator()
    again = await kube.wait_job("lost")
    assert again["metadata"]["uid"] != job["metadata"]["uid"]
    await eventually(lambda: len([e for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS)
                                  if e.get("reason") == "JobRecreated"]) == 1, "one JobRecreated Event")
    events = [e for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS) if e.get("reason") == "JobRecreated"]
    assert events[0]["type"] == "Warning" and "resumes from its newest checkpoint" in events[0]["message"]
    assert events[0]["involvedObject"]["name"] == "lost"
    pod = await kube.sim.start(again["metadata"]["name"])
    await kube.sim.run(pod, progress(300))
    await kube.sim.terminate(pod, 0, complete())
    await kube.wait_phase("lost", "Succeeded")
    assert len(kube.sim.jobs("lost")) == 1


def events_with_reason(kube: Harness, name: str, reason: str) -> list[dict]:
    return [e for e in kube.emulator.list_objects(c.EVENT_RESOURCE, NS)
            if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == name]


def env_of(job: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


async def oom(kube: Harness, job: dict) -> None:
    """The trainer of `job` starts, then runs out of GPU memory (exit code 3)."""
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod, progress(10))
    await kube.sim.terminate(pod, 3, failed(contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM))


async def test_oom_downscale_trains_again_at_twice_the_factor_up_to_8(kube: Harness):
    """spec.oom.policy Downscale: exit code 3 at dataFactor 4 gives a new Job at 8, a Warning and
    status.dataFactor 8; out of memory again at 8, the training fails as under Fail."""
    await kube.start_operator()
    await kube.create("big", dataFactor=4, maxGaussians=2_000_000, oom={"policy": "Downscale"})
    first = await kube.wait_job("big")
    assert env_of(first)[contract.ENV_DATA_FACTOR] == "4" and env_of(first)[contract.ENV_MAX_GAUSSIANS] == "2000000"
    await oom(kube, first)
    await eventually(lambda: [j["metadata"]["uid"] for j in kube.sim.jobs("big")] not in ([], [first["metadata"]["uid"]]),
                     lambda: f"a second Job; jobs {[j['metadata']['uid'] for j in kube.sim.jobs('big')]}")
    second = kube.job_of("big")
    assert env_of(second)[contract.ENV_DATA_FACTOR] == "8"
    status = kube.status("big")
    assert status["dataFactor"] == 8 and status["phase"] != "Failed", status
    await eventually(lambda: len(events_with_reason(kube, "big", "DownscaledAfterOOM")) == 1, "one DownscaledAfterOOM Event")
    event = events_with_reason(kube, "big", "DownscaledAfterOOM")[0]
    assert event["type"] == "Warning" and "dataFactor 4" in event["message"] and "dataFactor 8" in event["message"]
    assert events_with_reason(kube, "big", "JobRecreated") == []
    await oom(kube, second)
    status = await kube.wait_phase("big", "Failed")
    assert status["reason"] == "OutOfMemory" and status["dataFactor"] == 8
    assert [j["metadata"]["uid"] for j in kube.sim.jobs("big")] == [second["metadata"]["uid"]]


async def test_oom_fail_policy_fails_at_once(kube: Harness):
    await kube.start_operator()
    await kube.create("small", dataFactor=4)
    job = await kube.wait_job("small")
    await oom(kube, job)
    status = await kube.wait_phase("small", "Failed")
    assert status["reason"] == "OutOfMemory" and "dataFactor" not in status
    assert [j["metadata"]["uid"] for j in kube.sim.jobs("small")] == [job["metadata"]["uid"]]


async def test_oom_downscale_waits_for_the_old_job_to_go(kube: Harness):
    """A real API server keeps a Job deleted with propagation Foreground until its pods are gone:
    meanwhile the operator neither downscales twice (the deleting Job still shows Failed) nor
    creates the next Job; once the old Job is gone, the next one trains at twice the factor."""
    await kube.start_operator()
    await kube.create("held", oom={"policy": "Downscale"})
    first = await kube.wait_job("held")
    jname = first["metadata"]["name"]
    await kube.emulator.patch(c.JOB_RESOURCE, NS, jname, {"metadata": {"finalizers": ["test.splatops.dev/hold"]}})
    await oom(kube, first)
    await eventually(lambda: bool(((kube.emulator.read(c.JOB_RESOURCE, NS, jname) or {}).get("metadata") or {})
                                  .get("deletionTimestamp")), "the old Job marked deleting")
    await eventually(lambda: len(events_with_reason(kube, "held", "DownscaledAfterOOM")) == 1, "the Warning")
    assert [j["metadata"]["uid"] for j in kube.sim.jobs("held")] == [first["metadata"]["uid"]]
    await kube.emulator.patch(c.JOB_RESOURCE, NS, jname, {"metadata": {"finalizers": []}})
    await eventually(lambda: [j["metadata"]["uid"] for j in kube.sim.jobs("held")] not in ([], [first["metadata"]["uid"]]),
                     "the next Job")
    assert env_of(kube.job_of("held"))[contract.ENV_DATA_FACTOR] == "2"
    assert kube.status("held")["dataFactor"] == 2
    assert len(events_with_reason(kube, "held", "DownscaledAfterOOM")) == 1


def memory_line(fits: bool) -> str:
    est = 30 * 2**30 if not fits else 2**30
    advice = "" if fits else "It will probably not fit: ... Try maxGaussians 1,200,000 or dataFactor 2."
    return contract.MemoryCheck(estimate_bytes=est, free_bytes=20 * 2**30, fits=fits, advice=advice).to_json()


async def test_gpu_memory_that_will_not_fit_shows_in_status_and_one_warning(kube: Harness):
    """The trainer's memory line before its first step: a will-not-fit check becomes status.gpuMemory
    and one GPUMemoryTight Warning, even before any progress and however often the tail is read again."""
    await kube.start_operator()
    await kube.create("tight")
    pod = await kube.running_pod("tight", "loading scene", memory_line(fits=False))
    await eventually(lambda: "gpuMemory" in kube.status("tight"), lambda: f"gpuMemory, status {kube.status('tight')}")
    assert kube.status("tight")["gpuMemory"] == {
        "estimateBytes": 30 * 2**30, "freeBytes": 20 * 2**30, "fits": False,
        "advice": "It will probably not fit: ... Try maxGaussians 1,200,000 or dataFactor 2."}
    await eventually(lambda: len(events_with_reason(kube, "tight", "GPUMemoryTight")) == 1, "one GPUMemoryTight Event")
    event = events_with_reason(kube, "tight", "GPUMemoryTight")[0]
    assert event["type"] == "Warning" and "dataFactor 2" in event["message"]
    for step in (100, 200):  # later polls read the same memory line in the tail: no second Warning
        await kube.sim.log(pod, progress(step))
        await eventually(lambda s=step: kube.status("tight").get("progress", {}).get("step") == s, f"progress {step}")
    assert len(events_with_reason(kube, "tight", "GPUMemoryTight")) == 1
    assert kube.status("tight")["phase"] == "Running"  # a warning only: training goes on


async def test_gpu_memory_that_fits_writes_nothing(kube: Harness):
    await kube.start_operator()
    await kube.create("roomy")
    await kube.running_pod("roomy", memory_line(fits=True), progress(100))
    # the poll that wrote this progress read the memory line in the same tail
    await eventually(lambda: kube.status("roomy").get("progress", {}).get("step") == 100, "progress 100")
    assert "gpuMemory" not in kube.status("roomy")
    assert events_with_reason(kube, "roomy", "GPUMemoryTight") == []
