"""Status mapping, failure classification, progress, throttling, queue admission: table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest
from op_fixtures import T0, T0_EPOCH, failed_msg, job, pod, result_msg, terminated

from splatops import contract, names
from splatops.api.models import Phase, Status, parse_spec
from splatops.controller import failures, queue, status

R = contract.Reason
NOW = T0_EPOCH + 100
SPEC = {"scene": {"claimName": "scenes", "path": "fox"}}


def observe(job_: dict[str, Any] | None, *pods: dict[str, Any], spec: dict[str, Any] | None = None,
            prev: dict[str, Any] | None = None, queued: bool = False, grace: float = 600.0) -> status.Observed:
    return status.Observed(spec=parse_spec({**SPEC, **(spec or {})}), status=prev or {}, generation=1, job=job_, pods=tuple(pods),
                           queued_by_operator=queued, now=NOW, unschedulable_grace=grace, model_path="fox/gsplat/results.ply")


UNSCHED = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: Insufficient nvidia.com/gpu",
            "lastTransitionTime": T0}]
DISRUPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]

SIGTERMED = failed_msg(R.TERMINATED, contract.MSG_TERMINATED + "; resumes from step 4000")

PHASE_TABLE = [
    ("no job yet", observe(None), Phase.PENDING, status.REASON_CREATED),
    ("no job, cap reached", observe(None, queued=True), Phase.QUEUED, status.REASON_WAITING_SLOT),
    ("job suspended by operator queue", observe(job(suspend=True)), Phase.QUEUED, status.REASON_WAITING_SLOT),
    ("kueue not yet admitted", observe(job(suspend=True), spec={"queueName": "q"}), Phase.QUEUED, status.REASON_WAITING_KUEUE),
    ("kueue preemption of a running job", observe(job(suspend=True), spec={"queueName": "q"}, prev={"phase": "Running"}),
     Phase.QUEUED, status.REASON_PREEMPTED),
    ("kueue preemption seen after the pod went", observe(job(suspend=True), spec={"queueName": "q"},
                                                      prev={"phase": "Pending", "startTime": T0}),
     Phase.QUEUED, status.REASON_PREEMPTED),
    ("user suspend", observe(job(suspend=True), spec={"suspend": True}), Phase.SUSPENDED, status.REASON_SUSPENDED),
    ("pod pending", observe(job(active=1), pod("Pending")), Phase.PENDING, status.REASON_CREATED),
    ("pod running", observe(job(active=1), pod("Running", running=True)), Phase.RUNNING, status.REASON_RUNNING),
    ("pod done, job completing", observe(job(), pod("Succeeded", terminated=terminated(0))), Phase.RUNNING, status.REASON_RUNNING),
    ("retry after disruption", observe(job(active=1), pod("Failed", terminated=terminated(137), conditions=DISRUPTED),
                                       pod("Running", running=True, name="p2", created="2026-01-01T00:01:00Z")),
     Phase.RUNNING, status.REASON_RUNNING),
    ("retrying after exit 1", observe(job(failed=1), pod("Failed", terminated=terminated(1))), Phase.PENDING, status.REASON_RETRYING),
    ("complete", observe(job(("Complete", "Completed")), pod("Succeeded", terminated=terminated(0, result_msg(status="complete")))),
     Phase.SUCCEEDED, status.REASON_COMPLETE),
    ("deadline", observe(job(("Failed", "DeadlineExceeded"))), Phase.FAILED, R.DEADLINE_EXCEEDED.value),
    ("oom via termination message", observe(job(("Failed", "PodFailurePolicy")), pod("Failed", terminated=terminated(3, failed_msg(R.OUT_OF_MEMORY, contract.MSG_OOM)))),
     Phase.FAILED, R.OUT_OF_MEMORY.value),
    ("colmap missing", observe(job(("Failed", "PodFailurePolicy")), pod("Failed", terminated=terminated(2, failed_msg(R.COLMAP_NOT_FOUND, contract.MSG_COLMAP_NOT_FOUND)))),
     Phase.FAILED, R.COLMAP_NOT_FOUND.value),
    ("no images", observe(job(("Failed", "PodFailurePolicy")), pod("Failed", terminated=terminated(2, failed_msg(R.NO_IMAGES, contract.MSG_NO_IMAGES)))),
     Phase.FAILED, R.NO_IMAGES.value),
    ("exit 3 without message", observe(job(("Failed", "PodFailurePolicy")), pod("Failed", terminated=terminated(3, "Traceback..."))),
     Phase.FAILED, R.OUT_OF_MEMORY.value),
    ("host OOMKilled", observe(job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated=terminated(137, "", "OOMKilled"))),
     Phase.FAILED, R.OOM_KILLED.value),
    ("backoff exhausted", observe(job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated=terminated(1, "boom"))),
     Phase.FAILED, R.BACKOFF_LIMIT_EXCEEDED.value),
    ("retrying after SIGTERM without disruption", observe(job(failed=1), pod("Failed", terminated=terminated(143, SIGTERMED))),
     Phase.PENDING, status.REASON_RETRYING),
    ("retry after a drain's SIGTERM", observe(job(active=1), pod("Failed", terminated=terminated(143, SIGTERMED), conditions=DISRUPTED),
                                              pod("Running", running=True, name="p2", created="2026-01-01T00:01:00Z")),
     Phase.RUNNING, status.REASON_RUNNING),
    ("backoff exhausted by SIGTERMs", observe(job(("Failed", "BackoffLimitExceeded")), pod("Failed", terminated=terminated(143, SIGTERMED))),
     Phase.FAILED, R.BACKOFF_LIMIT_EXCEEDED.value),
    ("image pull backoff", observe(job(active=1), pod("Pending", waiting=("ImagePullBackOff", "Back-off pulling image"))),
     Phase.FAILED, R.IMAGE_PULL.value),
    ("image pull transient", observe(job(active=1), pod("Pending", waiting=("ErrImagePull", "timeout"))), Phase.PENDING, R.IMAGE_PULL.value),
    ("unschedulable within grace", observe(job(active=1), pod("Pending", conditions=UNSCHED)), Phase.PENDING, "Unschedulable"),
    ("unschedulable past grace", observe(job(active=1), pod("Pending", conditions=UNSCHED), grace=60), Phase.FAILED, R.UNSCHEDULABLE.value),
    ("terminal is sticky", observe(job(suspend=True), prev={"phase": "Failed", "reason": "Unschedulable", "message": "m"}),
     Phase.FAILED, "Unschedulable"),
]


@pytest.mark.parametrize(("case", "obs", "phase", "reason"), PHASE_TABLE, ids=[c[0] for c in PHASE_TABLE])
def test_phase_mapping(case: str, obs: status.Observed, phase: Phase, reason: str) -> None:
    got_phase, got_reason, message = status.desired_phase(obs)
    assert (got_phase, got_reason) == (phase, reason)
    assert message


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("oom via termination message", contract.MSG_OOM),
        ("colmap missing", contract.MSG_COLMAP_NOT_FOUND),
        ("no images", contract.MSG_NO_IMAGES),
        ("deadline", "activeDeadlineSeconds"),
        ("image pull backoff", "image"),
        ("unschedulable past grace", "No GPU node"),
        ("host OOMKilled", "spec.resources.memory"),
    ],
)
def test_failure_messages_are_actionable(case: str, needle: str) -> None:
    obs = {c[0]: c[1] for c in PHASE_TABLE}[case]
    assert needle in status.desired_phase(obs)[2]


def test_succeeded_status_has_result_fields_and_validates() -> None:
    config = {"scene_id": "fox", "data_factor": 1, "max_steps": 100}
    msg = result_msg(status="complete", model_path="/data/fox/gsplat/results.ply", model_size_mb=12.5, num_gaussians=1000,
                     psnr=28.1, ssim=0.9, steps=100, duration_s=42.0, config=config, gpu_seconds=47.5,
                     peak_gpu_memory_bytes=700_000_000, gpu_memory_estimate_bytes=750_000_000)
    prev = {"phase": "Running", "startTime": T0, "progress": {"step": 90, "maxSteps": 100, "percent": 90.0, "loss": 0.02,
                                                               "message": "Iteration 90/100 | Loss: 0.0200", "updatedAt": T0}}
    out = status.desired_status(observe(job(("Complete", "Completed"), succeeded=1), pod("Succeeded", terminated=terminated(0, msg)), prev=prev))
    assert out["phase"] == "Succeeded" and out["modelPath"] == "fox/gsplat/results.ply" and out["modelSizeMB"] == 12.5
    assert out["metrics"] == {"psnr": 28.1, "ssim": 0.9, "numGaussians": 1000, "steps": 100, "durationSeconds": 42.0,
                              "gpuSeconds": 47.5, "peakGpuMemoryBytes": 700_000_000, "gpuMemoryEstimateBytes": 750_000_000}
    assert out["config"] == config and out["completionTime"] and out["startTime"] == T0
    assert out["progress"]["percent"] == 100.0 and out["progress"]["message"] == "Iteration 100/100 | Loss: 0.0200"
    conds = {c["type"]: c["status"] for c in out["conditions"]}
    assert conds == {"Pending": "False", "Queued": "False", "Running": "False", "Suspended": "False", "Succeeded": "True", "Failed": "False"}
    Status.model_validate(out)  # the written status fits the CRD's status schema models


def test_succeeded_status_lists_the_outputs_beside_the_model() -> None:
    outputs = [{"name": "ply", "file": "results.ply", "bytes": 900}, {"name": "spz", "file": "results.spz", "bytes": 90},
               {"name": "preview", "file": "preview.png", "bytes": 5000}, {"name": "bad", "file": "../etc/x", "bytes": 1}]
    msg = result_msg(status="complete", model_path="/data/fox/gsplat/run-1/results.ply", steps=100, outputs=outputs)
    out = status.desired_status(observe(job(("Complete", "Completed"), succeeded=1), pod("Succeeded", terminated=terminated(0, msg))))
    assert out["outputs"] == [
        {"name": "ply", "path": "fox/gsplat/run-1/results.ply", "bytes": 900},
        {"name": "spz", "path": "fox/gsplat/run-1/results.spz", "bytes": 90},
        {"name": "preview", "path": "fox/gsplat/run-1/preview.png", "bytes": 5000},
    ]  # a file outside the model's directory is never listed
    Status.model_validate(out)


def test_conditions_keep_transition_time_when_unchanged() -> None:
    first = status.conditions(None, Phase.RUNNING, "TrainerRunning", "Training.", T0_EPOCH, 1)
    later = status.conditions(first, Phase.RUNNING, "TrainerRunning", "Training.", T0_EPOCH + 500, 1)
    assert later == first
    done = status.conditions(later, Phase.SUCCEEDED, "TrainingComplete", "ok", T0_EPOCH + 900, 1)
    times = {c["type"]: c["lastTransitionTime"] for c in done}
    assert times["Succeeded"] != times["Queued"] and times["Running"] == times["Succeeded"]


def test_queued_at_is_kept_while_queued() -> None:
    prev = {"phase": "Queued", "queuedAt": "2025-12-31T00:00:00Z"}
    assert status.desired_status(observe(job(suspend=True), prev=prev))["queuedAt"] == "2025-12-31T00:00:00Z"


def test_status_patch_only_changes() -> None:
    out = status.desired_status(observe(job(active=1), pod("Running", running=True)))
    assert status.status_patch(out, out) == {}
    assert status.status_patch({**out, "phase": "Pending"}, out) == {"phase": "Running"}


@pytest.mark.parametrize(
    ("job_", "pods", "previous", "expected"),
    [(None, (), None, 0), (job(active=1), (pod(),), None, 1), (job(failed=2, active=1), (), 1, 3), (job(), (), 4, 4)],
)
def test_attempts(job_: Any, pods: tuple[Any, ...], previous: int | None, expected: int) -> None:
    assert status.attempts(job_, pods, previous) == expected


# --- progress ------------------------------------------------------------------------------------

LOG = "\n".join([
    "loading scene...",
    json.dumps({"event": "progress", "step": 100, "max_steps": 30000, "loss": 0.5, "steps_per_sec": 100.0}),
    json.dumps({"event": "eval", "step": 7000, "max_steps": 30000, "loss": 0.03, "psnr": 27.5, "ssim": 0.88}),
    "WARNING something",
    json.dumps({"event": "progress", "step": 15234, "max_steps": 30000, "loss": 0.0234, "num_gaussians": 812345,
                "steps_per_sec": 140.2, "elapsed_s": 108.7}),
])


def test_progress_from_log_tail() -> None:
    progress = contract.last_progress(LOG)
    assert progress is not None
    out = status.progress_status(progress, T0_EPOCH)
    assert out["message"] == "Iteration 15234/30000 | Loss: 0.0234"
    assert out["step"] == 15234 and out["percent"] == 50.78 and out["psnr"] == 27.5 and out["numGaussians"] == 812345
    assert out["etaSeconds"] == pytest.approx((30000 - 15234) / 140.2, abs=0.1) and out["updatedAt"] == T0


@pytest.mark.parametrize(
    ("last", "now", "interval", "write"),
    [(None, 0.0, 10.0, True), (100.0, 105.0, 10.0, False), (100.0, 110.0, 10.0, True), (100.0, 100.0, 0.0, True)],
)
def test_should_write_status(last: float | None, now: float, interval: float, write: bool) -> None:
    assert status.should_write_status(last, now, interval) is write


TIGHT = contract.MemoryCheck(estimate_bytes=30 * 2**30, free_bytes=20 * 2**30, fits=False, advice="Try dataFactor 2.")
TIGHT_STATUS = {"estimateBytes": 30 * 2**30, "freeBytes": 20 * 2**30, "fits": False, "advice": "Try dataFactor 2."}


@pytest.mark.parametrize(
    ("check", "current", "write"),
    [
        (None, None, None),  # no memory line in the tail (CPU, or it scrolled out)
        (contract.MemoryCheck(estimate_bytes=1, free_bytes=2, fits=True), None, None),  # it fits: nothing to say
        (TIGHT, None, TIGHT_STATUS),
        (TIGHT, TIGHT_STATUS, None),  # the status holds it already
        (TIGHT, {**TIGHT_STATUS, "freeBytes": 40 * 2**30}, TIGHT_STATUS),  # another run's check (a retry)
    ],
)
def test_gpu_memory_status(check, current, write) -> None:
    out = status.gpu_memory_status(check, current)
    assert out == write
    if out is not None:
        Status.model_validate({"gpuMemory": out})  # the CRD's shape


def test_gpu_memory_warning_is_the_advice_or_the_numbers() -> None:
    assert status.gpu_memory_warning(TIGHT_STATUS) == "Try dataFactor 2."
    bare = status.gpu_memory_warning({**TIGHT_STATUS, "advice": ""})
    assert "30.00 GiB" in bare and "20.00 GiB free" in bare and "out of memory" in bare


# --- queue ------------------------------------------------------------------------------------------

W = [queue.Waiting("2026-01-01T00:00:0%dZ" % i, 100 - i, "default", f"t{i}") for i in range(5)]


@pytest.mark.parametrize(
    ("running", "waiting", "cap", "admitted"),
    [
        (0, W[:3], 2, ["t0", "t1"]),
        (2, W[:3], 2, []),
        (3, W[:3], 2, []),
        (1, list(reversed(W)), 3, ["t0", "t1"]),
        (10, W, 0, ["t0", "t1", "t2", "t3", "t4"]),
        (0, [], 2, []),
    ],
)
def test_queue_admission_fcfs(running: int, waiting: list[queue.Waiting], cap: int, admitted: list[str]) -> None:
    assert [w.name for w in queue.admit(running, waiting, cap)] == admitted


def test_same_second_is_first_seen_first_not_alphabetical() -> None:
    """creationTimestamp has 1 s resolution: ties go by the order the operator first saw them."""
    same = "2026-01-01T00:00:00Z"
    waiting = [queue.Waiting(same, 2, "default", "a"), queue.Waiting(same, 0, "default", "c"),
               queue.Waiting(same, 1, "default", "b"), queue.Waiting("2025-12-31T23:59:59Z", 9, "default", "z")]
    assert [w.name for w in queue.admit(0, waiting, 3)] == ["z", "c", "b"]


# --- one writer per output directory ----------------------------------------------------------------

ME = queue.Waiting("2026-01-01T00:00:05Z", 50, "default", "me")
OLDER = queue.Waiting("2026-01-01T00:00:01Z", 10, "default", "older")
OLDEST = queue.Waiting("2026-01-01T00:00:00Z", 11, "default", "oldest")
NEWER = queue.Waiting("2026-01-01T00:00:09Z", 60, "default", "newer")
SAME_SECOND_SEEN_FIRST = queue.Waiting("2026-01-01T00:00:05Z", 49, "default", "twin")


@pytest.mark.parametrize(
    ("others", "holder"),
    [
        ([], None),  # nobody else writes it: start
        ([queue.Writer("newer", holds=False, waiting=NEWER)], None),  # later in line: I go first
        ([queue.Writer("running", holds=True)], "running"),  # it holds the directory
        ([queue.Writer("newer", holds=False, waiting=NEWER), queue.Writer("running", holds=True)], "running"),
        ([queue.Writer("older", holds=False, waiting=OLDER)], "older"),  # first come, first served
        ([queue.Writer("older", holds=False, waiting=OLDER), queue.Writer("oldest", holds=False, waiting=OLDEST)], "oldest"),
        ([queue.Writer("twin", holds=False, waiting=SAME_SECOND_SEEN_FIRST)], "twin"),  # same second: first seen
        ([queue.Writer("older", holds=False, waiting=OLDER), queue.Writer("x (its pod p is still running)", holds=True)],
         "x (its pod p is still running)"),  # a holder wins over one in line
        ([queue.Writer("suspended", holds=False, waiting=None)], None),  # not in line: does not block
    ],
)
def test_output_holder(others: list[queue.Writer], holder: str | None) -> None:
    found = queue.output_holder(ME, others)
    assert (found.name if found is not None else None) == holder


def test_output_busy_is_queued_without_a_job() -> None:
    message = "Waiting for training a, which writes the same output directory fox/gsplat on claim c; ..."
    obs = status.Observed(spec=parse_spec(SPEC), status={}, generation=1, job=None, output_busy=message)
    assert status.desired_phase(obs) == (Phase.QUEUED, status.REASON_OUTPUT_BUSY, message)
    with_job = status.Observed(spec=parse_spec(SPEC), status={}, generation=1, job=job(), output_busy=message)
    assert status.desired_phase(with_job)[1] != status.REASON_OUTPUT_BUSY  # a Job: it passed the gate
    suspended = status.Observed(spec=parse_spec({**SPEC, "suspend": True}), status={}, generation=1, job=None, output_busy=message)
    assert status.desired_phase(suspended)[0] == Phase.SUSPENDED  # not in line while suspended


# --- status once the Job is gone (ttlSecondsAfterFinished) ------------------------------------------


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_status_stays_when_job_and_pods_are_gone(phase: str) -> None:
    """The TTL controller deletes the finished Job and its pods: nothing to write, no phase change."""
    pods = (pod("Succeeded", terminated=terminated(0, result_msg(status="complete", model_path="/data/scenes/fox/gsplat/results.ply",
                                                                psnr=30.0, steps=250))),) if phase == "Succeeded" else \
        (pod("Failed", terminated=terminated(3, failed_msg(R.OUT_OF_MEMORY, contract.MSG_OOM))),)
    finished = job(("Complete", "Done") if phase == "Succeeded" else ("Failed", "PodFailurePolicy"), succeeded=int(phase == "Succeeded"))
    progress = {"step": 200, "maxSteps": 300, "percent": 66.7, "loss": 0.02, "message": "Iteration 200/300 | Loss: 0.0200", "updatedAt": T0}
    first = status.desired_status(observe(finished, *pods, prev={"progress": progress}))
    assert first["phase"] == phase
    current = {"progress": progress, **first}
    gone = status.desired_status(observe(None, prev=current))
    assert status.status_patch(current, gone) == {} and not status.phase_changed(current, gone)


def test_failed_status_before_any_job() -> None:
    out = status.failed_status("ScenePVCNotFound", "claim missing", T0_EPOCH, 1)
    assert (out["phase"], out["reason"], out["message"], out["observedGeneration"]) == ("Failed", "ScenePVCNotFound", "claim missing", 1)
    assert {c["type"]: c["status"] for c in out["conditions"]}["Failed"] == "True"
    Status.model_validate(out)


# --- failures: direct --------------------------------------------------------------------------------


def test_unknown_termination_message_falls_back_to_exit_code() -> None:
    failure = failures.from_terminated(pod("Failed", terminated=terminated(1, "Traceback: KeyError")))
    assert failure is not None and failure.reason == R.TRAINER_ERROR.value and "exit" in failure.message


@pytest.mark.parametrize("message", [SIGTERMED, ""], ids=["with_message", "killed_before_writing_it"])
def test_sigterm_exit_code_is_terminated(message: str) -> None:
    """Exit 143 (the trainer's SIGTERM code): reason Terminated, with the trainer's resume step when it said so."""
    failure = failures.from_terminated(pod("Failed", terminated=terminated(143, message)))
    assert failure is not None and failure.reason == R.TERMINATED.value
    assert ("resumes from step 4000" if message else "resumes from the last checkpoint") in failure.message
    exhausted = failures.classify_job_failure(job(("Failed", "BackoffLimitExceeded")), [pod("Failed", terminated=terminated(143, message))])
    assert exhausted.reason == R.BACKOFF_LIMIT_EXCEEDED.value and "Last error: " + failure.message in exhausted.message


def test_successful_container_is_no_failure() -> None:
    assert failures.from_terminated(pod("Succeeded", terminated=terminated(0))) is None


@pytest.mark.parametrize(
    ("prev_reason", "expected"),
    [(R.TRAINER_ERROR.value, R.OUT_OF_MEMORY.value), (R.COLMAP_NOT_FOUND.value, R.COLMAP_NOT_FOUND.value)],
)
def test_terminal_reason_refined_only_when_generic(prev_reason: str, expected: str) -> None:
    obs = observe(job(("Failed", "PodFailurePolicy")), pod("Failed", terminated=terminated(3, failed_msg(R.OUT_OF_MEMORY, contract.MSG_OOM))),
                  prev={"phase": "Failed", "reason": prev_reason, "message": "m"})
    assert status.desired_phase(obs)[:2] == (Phase.FAILED, expected)


def test_stale_pods_never_downgrade_a_specific_reason() -> None:
    obs = observe(job(("Failed", "PodFailurePolicy")), pod("Pending"), prev={"phase": "Failed", "reason": R.OUT_OF_MEMORY.value, "message": "m"})
    assert status.desired_phase(obs)[1] == R.OUT_OF_MEMORY.value


@pytest.mark.parametrize(
    ("message", "reason", "needle"),
    [
        (json.dumps({"status": "failed", "reason": "NoImages"}), "NoImages", contract.MSG_NO_IMAGES),
        (json.dumps({"status": "failed", "reason": "SomethingNew", "error": "odd"}), "SomethingNew", "odd"),
        (json.dumps({"status": "failed", "reason": "SomethingNew"}), "SomethingNew", "kubectl logs"),
    ],
)
def test_trainer_reason_without_words_gets_an_actionable_message(message: str, reason: str, needle: str) -> None:
    failure = failures.from_terminated(pod("Failed", terminated=terminated(2, message)))
    assert failure is not None and failure.reason == reason and needle in failure.message


@pytest.mark.parametrize(
    ("reported", "expected"),
    [("/data/scenes/fox/gsplat/results.ply", "scenes/fox/gsplat/results.ply"), ("scenes/fox/gsplat/results.ply", "scenes/fox/gsplat/results.ply"),
     ("/elsewhere/results.ply", "fallback.ply")],
)
def test_model_path_is_volume_relative(reported: str, expected: str) -> None:
    result = contract.Result(status=contract.STATUS_COMPLETE, model_path=reported)
    assert status.result_fields(result, "fallback.ply")["modelPath"] == expected


def _recreated(active: int = 0, failed: int = 0, before: str = "2") -> dict[str, Any]:
    j = job(active=active, failed=failed)
    j["metadata"].update(uid="job-2", annotations={names.ANNOTATION_ATTEMPTS_BEFORE: before})
    return j


def _pod_of(job_uid: str, name: str) -> dict[str, Any]:
    p = pod()
    p["metadata"].update(name=name, uid=name, ownerReferences=[{"kind": "Job", "uid": job_uid}])
    return p


@pytest.mark.parametrize(("job_", "pods", "previous", "expected"), [
    (_recreated(active=1), (), 2, 3),  # the lost Job ran 2 pods; the new one's first is the 3rd
    (_recreated(active=1, failed=1), (), 3, 4),  # and its retry the 4th
    (_recreated(), (_pod_of("job-1", "old-a"), _pod_of("job-1", "old-b"), _pod_of("job-2", "new")), 2, 3),
    (_recreated(before="junk"), (), 1, 1),
])
def test_attempts_count_on_across_recreated_jobs(job_: Any, pods: tuple[Any, ...], previous: int, expected: int) -> None:
    assert status.attempts(job_, pods, previous) == expected


def test_blocked_creation_is_pending_with_its_reason_in_a_condition() -> None:
    obs = observe(None, prev={"phase": "Pending"})
    obs = status.Observed(**{**obs.__dict__, "blocked": ("JobCreateRetrying", "Creating Job gst-fox failed: etcd timeout; retrying.")})
    out = status.desired_status(obs)
    assert (out["phase"], out["reason"]) == ("Pending", "JobCreateRetrying")
    cond = next(c for c in out["conditions"] if c["type"] == "Pending")
    assert cond["status"] == "True" and cond["reason"] == "JobCreateRetrying" and "etcd timeout" in cond["message"]


OOM = {"phase": "Failed", "reason": "OutOfMemory"}
RETRY_TABLE = [
    # (spec, current status, desired status, the factor to retry at)
    ({"dataFactor": 1, "oom": {"policy": "Downscale"}}, {"phase": "Running"}, OOM, 2),
    ({"dataFactor": 1, "oom": {"policy": "Downscale"}}, {"phase": "Running", "dataFactor": 4}, OOM, 8),
    ({"dataFactor": 8, "oom": {"policy": "Downscale"}}, {"phase": "Running"}, OOM, None),  # nothing lower left
    ({"dataFactor": 2, "oom": {"policy": "Downscale"}}, {"phase": "Running", "dataFactor": 8}, OOM, None),
    ({"dataFactor": 1, "oom": {"policy": "Fail"}}, {"phase": "Running"}, OOM, None),
    ({"dataFactor": 1}, {"phase": "Running"}, OOM, None),  # Fail is the default
    ({"dataFactor": 1, "oom": {"policy": "Downscale"}}, {"phase": "Running"}, {"phase": "Failed", "reason": "TrainerError"}, None),
    ({"dataFactor": 1, "oom": {"policy": "Downscale"}}, {"phase": "Failed", "reason": "OutOfMemory"}, OOM, None),  # final
]


@pytest.mark.parametrize(("spec", "current", "desired", "factor"), RETRY_TABLE)
def test_oom_retry_factor(spec: dict, current: dict, desired: dict, factor: int | None) -> None:
    assert status.oom_retry_factor(parse_spec({**SPEC, **spec}), current, desired) == factor


def test_downscaled_status_is_pending_at_the_new_factor_and_validates() -> None:
    out = status.downscaled_status({"phase": "Running"}, parse_spec({**SPEC, "dataFactor": 2}), 4, T0_EPOCH, 1)
    assert (out["phase"], out["reason"], out["dataFactor"]) == ("Pending", "DownscaledAfterOOM", 4)
    assert "dataFactor 2" in out["message"] and "not resumed" in out["message"]
    assert "gpuMemory" in out and out["gpuMemory"] is None  # the old run's memory check goes: the next checks again
    Status.model_validate(out)
