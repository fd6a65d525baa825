"""The local executor: Jobs in the emulator run as local processes (a tiny Python 'trainer')."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

import pytest

from splatops import contract, names
from splatops.local import cluster as c
from splatops.local import executor as x

NS = "default"

# A stand-in trainer: prints progress, checks its scene dir, writes the termination message.
FAKE_TRAINER = r"""
import json, os, pathlib, signal, sys, time
scene = pathlib.Path(os.environ["SPLATOPS_SCENE_DIR"])
mode = os.environ.get("MODE", "ok")
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0 if mode == "graceful" else 1))
print(json.dumps({"event": "progress", "step": 1, "max_steps": 2, "loss": 0.5}), flush=True)
if mode in ("slow", "graceful"):
    time.sleep(60)
if mode == "bad":
    sys.exit(2)
if mode == "crash":
    print("Traceback: boom", flush=True)
    sys.exit(1)
out = scene / "gsplat"
out.mkdir(parents=True, exist_ok=True)
(out / "results.ply").write_text("ply")
pathlib.Path(os.environ["SPLATOPS_TERMINATION_LOG"]).write_text(
    json.dumps({"status": "complete", "model_path": str(out / "results.ply")}))
"""


def job(name: str, mode: str, *, backoff: int = 0, suspend: bool = False) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"backoffLimit": backoff, "suspend": suspend,
                 "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                     "containerName": "trainer", "operator": "In", "values": [2, 3]}}]},
                 "template": {"spec": {
                     "restartPolicy": "Never",
                     "volumes": [{"name": "scene", "persistentVolumeClaim": {"claimName": "scenes"}},
                                 {"name": "tmp", "emptyDir": {}}],
                     "containers": [{
                         "name": names.TRAINER_CONTAINER, "image": "trainer:1",
                         "command": [sys.executable, "-c", FAKE_TRAINER],
                         "env": [{"name": "SPLATOPS_SCENE_DIR", "value": "/data/scenes/fox"},
                                 {"name": "MODE", "value": mode},
                                 {"name": contract.ENV_TERMINATION_LOG, "value": contract.TERMINATION_LOG}],
                         "volumeMounts": [{"name": "scene", "mountPath": "/data"},
                                          {"name": "tmp", "mountPath": "/tmp"}]}]}}},
    }


@pytest.fixture
async def env(tmp_path):
    async with c.running_cluster(crd=None) as cl:
        lines: list[tuple[str, str]] = []
        async with x.LocalExecutor(cl.emulator, {"scenes": tmp_path}, grace_period=5,
                                   on_output=lambda pod, line: lines.append((pod, line))) as ex:
            yield cl.emulator, ex, tmp_path, lines


async def wait_condition(ex: x.LocalExecutor, name: str, ctype: str, timeout: float = 20) -> dict:
    async def check() -> dict:
        while True:
            job_obj = ex.sim.job(name) or {}
            for cond in (job_obj.get("status") or {}).get("conditions") or []:
                if cond["type"] == ctype and cond["status"] == "True":
                    return job_obj
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(check(), timeout)


async def test_success_maps_volume_log_and_termination_message(env):
    emulator, ex, root, lines = env
    await emulator.create(c.JOB_RESOURCE, job("ok", "ok"))
    await wait_condition(ex, "ok", "Complete")
    assert (root / "scenes/fox/gsplat/results.ply").read_text() == "ply"
    pod = ex.sim.pods("ok")[0]
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert json.loads(term["message"])["model_path"] == str(root / "scenes/fox/gsplat/results.ply")
    log = emulator.pod_logs[(NS, pod["metadata"]["name"])]
    assert contract.parse_progress_line(log[0]).step == 1
    assert lines and lines[0][0] == pod["metadata"]["name"]


@pytest.mark.parametrize("mode, backoff, reason, pods", [
    ("bad", 3, "PodFailurePolicy", 1),
    ("crash", 1, "BackoffLimitExceeded", 2),
])
async def test_failures(env, mode, backoff, reason, pods):
    emulator, ex, _, _ = env
    await emulator.create(c.JOB_RESOURCE, job("f", mode, backoff=backoff))
    job_obj = await wait_condition(ex, "f", "Failed")
    assert job_obj["status"]["conditions"][-1]["reason"] == reason
    assert len(ex.sim.pods("f")) == pods
    if mode == "crash":  # FallbackToLogsOnError: the log tail becomes the message
        term = ex.sim.pods("f")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert "Traceback: boom" in term["message"] and term["exitCode"] == 1


async def test_suspend_terminates_and_resume_restarts(env):
    emulator, ex, _, _ = env
    await emulator.create(c.JOB_RESOURCE, job("s", "graceful"))

    async def running() -> None:  # the trainer printed, so its SIGTERM handler is installed
        while not any(emulator.pod_logs.get((NS, pod), []) for pod in ex._running):
            await asyncio.sleep(0.05)
    await asyncio.wait_for(running(), 20)
    process = next(iter(ex._running.values())).process
    await emulator.patch(c.JOB_RESOURCE, NS, "s", {"spec": {"suspend": True}})
    await wait_condition(ex, "s", "Suspended")
    assert process.returncode == 0 and ex.sim.pods("s") == []
    await emulator.patch(c.JOB_RESOURCE, NS, "s", {"spec": {"suspend": False}})
    await asyncio.wait_for(running(), 20)
    assert len(ex.sim.pods("s")) == 1


async def test_deleted_job_kills_its_process(env):
    emulator, ex, _, _ = env
    await emulator.create(c.JOB_RESOURCE, job("d", "slow"))

    async def running() -> None:
        while not ex._running:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(running(), 10)
    process = next(iter(ex._running.values())).process
    await emulator.delete(c.JOB_RESOURCE, NS, "d")
    await asyncio.wait_for(process.wait(), 10)
    assert ex.sim.pods("d") == []


def test_unmapped_claim_is_an_actionable_error(tmp_path):
    pod = {"metadata": {"name": "p"}, "spec": job("j", "ok")["spec"]["template"]["spec"]}
    with pytest.raises(LookupError, match="--volume scenes=DIR"):
        x.process_spec(pod, {}, tmp_path)


@pytest.mark.parametrize("value, expected", [
    ("/data", "/local"), ("/data/scenes/fox", "/local/scenes/fox"), ("/database", "/database"),
    ("/dev/termination-log", "/dev/termination-log"), ("relative", "relative"),
])
def test_rewrite_path(value, expected):
    assert x.rewrite_path(value, {"/data": pathlib.Path("/local")}) == expected


def test_process_spec_uses_entrypoint_env_and_overrides(tmp_path):
    spec = job("j", "ok")["spec"]["template"]["spec"]
    del spec["containers"][0]["command"]
    pod = {"metadata": {"name": "p"}, "spec": spec}
    ps = x.process_spec(pod, {"scenes": tmp_path}, tmp_path, base_env={"PATH": "/bin"},
                        env_overrides={"SPLATOPS_DEVICE": "cpu"})
    assert ps.argv == x.default_trainer_argv()
    assert ps.env["SPLATOPS_SCENE_DIR"] == str(tmp_path.resolve() / "scenes/fox")
    assert ps.env[contract.ENV_TERMINATION_LOG] == str(tmp_path / "p.termination-log")
    assert ps.env["SPLATOPS_DEVICE"] == "cpu" and ps.env["PATH"] == "/bin"


@pytest.mark.parametrize("file_text, code, expected", [
    ('{"status": "complete"}', 0, '{"status": "complete"}'),
    (None, 1, "a\nb"),
    (None, 0, ""),
    ("x" * 5000, 1, "x" * contract.TERMINATION_MESSAGE_LIMIT),
])
def test_termination_message(tmp_path, file_text, code, expected):
    path = tmp_path / "t"
    if file_text is not None:
        path.write_text(file_text)
    assert x.termination_message(path, code, ["a", "b"]) == expected


@pytest.mark.parametrize("rc, expected", [(0, 0), (3, 3), (-15, 143), (-9, 137)])
def test_exit_code_of(rc, expected):
    assert x.exit_code_of(rc) == expected
