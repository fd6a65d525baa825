"""Trainings through the real API server, Job controller and garbage collector: the operator runs
with the chart's ServiceAccount token, users act through kubectl, the fake node runs the trainer
on the CPU (tests/cluster/conftest.py)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import pytest
import testkit
import yaml

from splatops import contract
from splatops.controller import jobs

from . import controlplane as cpm
from .conftest import NS, OOM_IMAGE, Cluster, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

STEPS = 30  # a tiny CPU training


def training(name: str, path: str, **spec) -> dict:
    return testkit.training(name, namespace=NS, path=path, **{"maxSteps": STEPS, **spec})


def job_of(cluster: Cluster, name: str) -> dict | None:
    return cluster.get("job", jobs.job_name(name))


def pods_of(cluster: Cluster, name: str) -> list[dict]:
    return cluster.list("pod", f"batch.kubernetes.io/job-name={jobs.job_name(name)}")


def condition(obj: dict | None, ctype: str) -> dict | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == ctype and c["status"] == "True"), None)


def test_example_trains_to_succeeded_through_the_job_controller(cluster: Cluster, synthetic_scene):
    """`kubectl apply -f examples/preview.yaml` (on a tiny scene), `kubectl wait`, `kubectl get gst`."""
    example = yaml.safe_load((cpm.ROOT / "examples/preview.yaml").read_text())
    name = example["metadata"]["name"]
    path = cluster.scene("mijato", synthetic_scene)
    example["spec"].update(scene={**example["spec"]["scene"], "path": path}, dataFactor=1, maxSteps=STEPS)
    cluster.apply(example)
    cluster.kubectl("wait", "--for=condition=Succeeded", f"gst/{name}", "--timeout=300s", timeout=320)
    status = cluster.status(name)
    model = status["modelPath"]
    assert status["phase"] == "Succeeded" and model.startswith(f"{path}/gsplat/") and model.endswith("results.ply"), status
    assert (cluster.volume / model).read_bytes().startswith(b"ply\n")
    job = job_of(cluster, name)
    assert condition(job, "Complete") and job["status"]["succeeded"] == 1, job["status"]
    # The printer columns, from the API server's Table.
    table = cluster.kubectl("get", "gst", name).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip())[:6] == ["NAME", "PHASE", "PROGRESS", "STEP", "PSNR", "AGE"], table
    assert re.split(r"\s{2,}", table[1].strip())[:4] == [name, "Succeeded", "100", str(STEPS)], table
    # The pod's log, proxied by the API server from the node.
    pod = pods_of(cluster, name)[0]["metadata"]["name"]
    assert f'"step": {STEPS}' in cluster.kubectl("logs", pod).stdout


def test_explain_reads_the_published_schema(cluster: Cluster):
    out = cluster.kubectl("explain", "gst.spec.scene").stdout
    assert "claimName" in out and "path" in out and "GaussianSplatTraining" in out, out


def test_cuda_oom_fails_the_job_at_once_with_the_seeds_message(cluster: Cluster, synthetic_scene):
    name = "oom"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), image=OOM_IMAGE, backoffLimit=3))
    cluster.kubectl("wait", "--for=condition=Failed", f"gst/{name}", "--timeout=120s", timeout=140)
    status = cluster.status(name)
    assert status["reason"] == contract.Reason.OUT_OF_MEMORY.value, status
    assert contract.MSG_OOM in status["message"], status
    job = job_of(cluster, name)
    assert condition(job, "Failed")["reason"] == "PodFailurePolicy", job["status"]
    assert len(pods_of(cluster, name)) == 1  # FailJob: no retry despite backoffLimit 3


def test_cel_rule_rejects_a_path_outside_the_volume(cluster: Cluster):
    result = cluster.apply(training("escape", "../etc"), check=False)
    assert result.returncode != 0
    assert "scene.path must stay inside the volume" in result.stderr, result.stderr


def test_job_the_api_server_rejects_ends_as_invalid_spec(cluster: Cluster, synthetic_scene):
    name = "rejected"
    # The CRD takes any string as a node-selector value; the Job's pod template validation does not.
    cluster.apply(training(name, "scenes/none", nodeSelector={"pool": "not a label value!"}))
    status = cluster.wait_phase(name, "Failed", 60)
    assert status["reason"] == "InvalidSpec", status
    assert f'Job.batch "{jobs.job_name(name)}" is invalid' in status["message"], status
    assert "spec.template.spec.nodeSelector" in status["message"], status
    assert job_of(cluster, name) is None


def test_kueue_queue_creates_the_job_suspended_with_the_label(cluster: Cluster):
    name = "queued"
    cluster.apply(training(name, "scenes/none", queueName="gpu-queue"))
    job = eventually(lambda: job_of(cluster, name), "the Job", 60)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    eventually(lambda: condition(job_of(cluster, name), "Suspended"), "the Job controller's Suspended", 30)
    assert pods_of(cluster, name) == []
    cluster.kubectl("delete", "gst", name)


def test_deleting_a_training_removes_job_and_pods_by_garbage_collection(cluster: Cluster, synthetic_scene):
    name = "doomed"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), maxSteps=100000))
    cluster.wait_phase(name, "Running", 120)
    pod = eventually(lambda: pods_of(cluster, name), "a pod", 30)[0]["metadata"]["name"]
    cluster.kubectl("delete", "gst", name, "--wait=true")
    cluster.kubectl("wait", "--for=delete", f"job/{jobs.job_name(name)}", f"pod/{pod}", "--timeout=90s", timeout=100)
    assert pod not in cluster.node.procs


def _running_at(cluster: Cluster, name: str, step: int) -> str:
    """Wait until the training reports at least `step` (a checkpoint exists); its pod's name."""
    eventually(lambda: (cluster.status(name).get("progress") or {}).get("step", 0) >= step,
               lambda: f"{name} at step {step}: {cluster.status(name)}", 180)
    running = [p for p in pods_of(cluster, name) if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["status"].get("phase") for p in pods_of(cluster, name)]
    return running[0]["metadata"]["name"]


LONG = dict(maxSteps=80, checkpointEvery=10)  # long enough to interrupt; checkpoints to resume from


def test_disruption_is_ignored_and_the_training_resumes(cluster: Cluster, synthetic_scene):
    """An eviction (the API server adds DisruptionTarget) kills the pod; podFailurePolicy's Ignore
    rule keeps it out of the failure count and the Job controller's new pod resumes."""
    name = "evicted"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), backoffLimit=0, **LONG))
    pod = _running_at(cluster, name, 20)
    cluster.cp.kubectl("create", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", "-f", "-",
                       input=json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                                         "metadata": {"name": pod, "namespace": NS}}))
    cluster.kubectl("wait", "--for=condition=Succeeded", f"gst/{name}", "--timeout=300s", timeout=320)
    job = job_of(cluster, name)
    assert job["status"].get("failed", 0) == 0 and job["status"]["succeeded"] == 1, job["status"]
    second = [p for p in pods_of(cluster, name) if p["metadata"]["name"] != pod]
    assert len(second) == 1
    log = cluster.kubectl("logs", second[0]["metadata"]["name"]).stdout
    assert "resumed from checkpoint at step" in log, log[-2000:]


def test_suspend_and_resume(cluster: Cluster, synthetic_scene):
    name = "paused"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), **LONG))
    pod = _running_at(cluster, name, 20)
    cluster.kubectl("patch", "gst", name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    cluster.kubectl("wait", "--for=condition=Suspended", f"gst/{name}", "--timeout=120s", timeout=140)
    cluster.kubectl("wait", "--for=delete", f"pod/{pod}", "--timeout=120s", timeout=140)
    assert condition(job_of(cluster, name), "Suspended")
    cluster.kubectl("patch", "gst", name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    cluster.kubectl("wait", "--for=condition=Succeeded", f"gst/{name}", "--timeout=300s", timeout=320)
    resumed = pods_of(cluster, name)[-1]["metadata"]["name"]
    assert "resumed from checkpoint at step" in cluster.kubectl("logs", resumed).stdout


def test_kubectl_splat_plugin(cluster: Cluster, synthetic_scene):
    """The CLI as a kubectl plugin (`kubectl-splat` on PATH), against the real API server."""
    bindir = pathlib.Path(sys.executable).parent
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    path = cluster.scene("plugin", synthetic_scene)

    def splat(*args: str, timeout: float = 60):
        return cluster.cp.kubectl("splat", *args, "-n", NS, env=env, timeout=timeout)

    out = splat("train", "plugin", "--pvc", "scenes", "--path", path, "--max-steps", str(STEPS), "--wait",
                timeout=320).stdout
    assert "Succeeded" in out, out
    status = json.loads(splat("status", "plugin").stdout)
    assert status["status"] == "complete", status
    assert "plugin" in splat("list").stdout
    assert f'"step": {STEPS}' in splat("logs", "plugin").stdout  # the pod log, through the API server


def test_finished_job_removed_by_its_ttl_leaves_the_outcome(cluster: Cluster, synthetic_scene):
    """The TTL-after-finished controller deletes the Job (and its pod); the training keeps its
    terminal status and the operator does not run it again."""
    name = "short-lived"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), image=OOM_IMAGE, ttlSecondsAfterFinished=1))
    cluster.kubectl("wait", "--for=condition=Failed", f"gst/{name}", "--timeout=120s", timeout=140)
    cluster.kubectl("wait", "--for=delete", f"job/{jobs.job_name(name)}", "--timeout=60s", timeout=70)
    eventually(lambda: not pods_of(cluster, name), "the pod's garbage collection", 60)
    status = cluster.status(name)
    assert status["phase"] == "Failed" and status["reason"] == contract.Reason.OUT_OF_MEMORY.value, status
    assert job_of(cluster, name) is None  # not created again


def test_active_deadline_fails_through_the_job_controller(cluster: Cluster, synthetic_scene):
    """activeDeadlineSeconds (the CRD's minimum, 60 s) is the real Job controller's: it fails the
    Job (DeadlineExceeded) and deletes the pod, whose trainer the node stops."""
    name = "late"
    cluster.apply(training(name, cluster.scene(name, synthetic_scene), maxSteps=100000, activeDeadlineSeconds=60))
    cluster.kubectl("wait", "--for=condition=Failed", f"gst/{name}", "--timeout=180s", timeout=200)
    status = cluster.status(name)
    assert status["reason"] == "DeadlineExceeded", status
    # FailureTarget at once; Failed only once the pod has terminated (the node's grace period).
    assert condition(job_of(cluster, name), "FailureTarget")["reason"] == "DeadlineExceeded"
    eventually(lambda: condition(job_of(cluster, name), "Failed"), "the Job's Failed condition", 60)
    eventually(lambda: not pods_of(cluster, name), "the pod deleted", 60)


def test_pod_no_node_fits_fails_as_unschedulable(cluster: Cluster):
    name = "nofit"
    cluster.apply(training(name, "scenes/none", nodeSelector={"node.kubernetes.io/instance-type": "p5.48xlarge"}))
    status = cluster.wait_phase(name, "Failed", 60)
    assert status["reason"] == "Unschedulable" and "didn't match Pod's node affinity/selector" in status["message"], status
