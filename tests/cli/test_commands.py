"""`splatops` commands against the embedded API server (cluster-sim's SplatopsEmulator).

The test plays the operator by writing the resource's status, as the real one does.
"""

from __future__ import annotations

import asyncio
import json
import pathlib

import jsonschema
import pytest
import yaml

from splatops import names
from splatops.cli import download as dl
from splatops.cli import main as cli
from splatops.local import cluster as c

NS = "default"
ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / f"{names.CRD_NAME}.yaml"


@pytest.fixture
async def kube(tmp_path):
    async with c.running_cluster(tmp_path / "kubeconfig") as cluster:
        yield cluster


def flags(cluster) -> list[str]:
    return ["--kubeconfig", str(cluster.kubeconfig)]


async def run(*argv: str) -> int:
    try:
        return await cli.amain(list(argv))
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code)


async def set_status(cluster, name: str, status: dict) -> None:
    await cluster.emulator.patch(c.TRAINING_RESOURCE, NS, name, {"status": status}, subresource="status")


def progress(step: int, loss: float, **extra) -> dict:
    return {"phase": "Running", "progress": {
        "step": step, "maxSteps": 300, "percent": round(100 * step / 300, 2), "loss": loss,
        "message": f"Iteration {step}/300 | Loss: {loss:.4f}", "updatedAt": "2026-01-01T00:00:00Z", **extra}}


# --- dry-run -------------------------------------------------------------------------------------


def crd_schema() -> dict:
    crd = next(d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d and d.get("kind") == "CustomResourceDefinition")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _strip_k8s_extensions(schema):
    """jsonschema does not know x-kubernetes-*; keep the standard keywords."""
    if isinstance(schema, dict):
        return {k: _strip_k8s_extensions(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_strip_k8s_extensions(v) for v in schema]
    return schema


@pytest.mark.parametrize("extra", [
    [],
    ["--data-factor", "4", "--max-steps", "7000", "--strategy", "mcmc", "--path", "backend_data/reconstructions/fox"],
    ["--name", "fox-final", "-n", "team-a"],
])
async def test_dry_run_prints_yaml_valid_against_the_crd(capsys, extra):
    code = await run("train", "fox", "--pvc", "scenes", "--dry-run", *extra)
    assert code == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    jsonschema.validate(doc, _strip_k8s_extensions(crd_schema()))
    assert doc["kind"] == names.KIND and doc["spec"]["scene"]["claimName"] == "scenes"
    if "-n" in extra:
        assert doc["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize("bad", [["--data-factor", "3"], ["--max-steps", "0"], ["--strategy", "x"], ["--path", "/etc"]])
async def test_train_rejects_bad_values_with_usage_exit(capsys, bad):
    assert await run("train", "fox", "--pvc", "scenes", "--dry-run", *bad) == cli.EXIT_USAGE


# --- train / status / list -----------------------------------------------------------------------


async def test_train_creates_numbered_runs_and_status_prints_original_json(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", "--max-steps", "300", *flags(kube)) == 0
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    out = capsys.readouterr().out
    assert f"{names.PLURAL}.{names.GROUP}/fox created" in out and "/fox-2 created" in out
    obj = kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox")
    assert obj["spec"]["maxSteps"] == 300 and obj["spec"]["scene"] == {"claimName": "scenes", "path": "fox"}

    await set_status(kube, "fox", progress(150, 0.05))
    assert await run("status", "fox", *flags(kube)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "status": "processing", "scene_id": "fox", "message": "Gaussian Splatting training in progress",
        "progress": "Iteration 150/300 | Loss: 0.0500"}

    assert await run("list", *flags(kube)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "SCENE", "PHASE"]
    assert [line.split()[0] for line in table[1:]] == ["fox", "fox-2"]
    assert table[1].split()[2:4] == ["Running", "50%"]


@pytest.mark.parametrize("argv", [["status", "nope"], ["wait", "nope"], ["logs", "nope"], ["download", "nope", "-o", "x.ply"]])
async def test_missing_resource_is_a_clear_error(kube, capsys, argv):
    assert await run(*argv, *flags(kube)) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "'nope'" in err and "not found" in err


async def test_missing_cluster_is_a_clear_error(tmp_path, capsys):
    assert await run("list", "--kubeconfig", str(tmp_path / "none")) == cli.EXIT_FAILED
    assert "no Kubernetes cluster configured" in capsys.readouterr().err


async def test_unreachable_cluster_is_a_clear_error(tmp_path, capsys):
    kubeconfig = c.write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # nothing listens
    assert await run("status", "fox", "--kubeconfig", str(kubeconfig)) == cli.EXIT_FAILED
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in capsys.readouterr().err


async def test_namespace_comes_from_the_context_unless_given(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    assert kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox") is not None
    capsys.readouterr()
    assert await run("list", "-o", "json", *flags(kube)) == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["fox"]
    assert await run("status", "fox", "-n", "elsewhere", *flags(kube)) == cli.EXIT_FAILED


# --- wait ----------------------------------------------------------------------------------------


async def _play(kube, name: str, final: dict) -> None:
    for status in ({"phase": "Pending", "message": "waiting for a GPU node"}, progress(100, 0.08),
                   progress(200, 0.04, psnr=27.5, etaSeconds=12.0), final):
        await asyncio.sleep(0.15)
        await set_status(kube, name, status)


@pytest.mark.parametrize("final, code, out_has, err_has", [
    ({"phase": "Succeeded", "modelPath": "fox/gsplat/results.ply", "modelSizeMB": 1.25,
      "progress": progress(300, 0.02)["progress"]}, 0, "complete: fox/gsplat/results.ply (1.25 MB)", ""),
    ({"phase": "Failed", "reason": "OutOfMemory",
      "message": "CUDA out of memory. Try reducing data_factor or image resolution."}, 1, "phase: Failed",
     "fox failed: CUDA out of memory. Try reducing data_factor or image resolution."),
])
async def test_wait_shows_progress_and_exits_by_outcome(kube, capsys, final, code, out_has, err_has):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    player = asyncio.create_task(_play(kube, "fox", final))
    assert await run("wait", "fox", "--interval", "0.05", *flags(kube)) == code
    await player
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "fox: phase: Pending (waiting for a GPU node)" in lines
    assert "Iteration 100/300 | Loss: 0.0800" in lines
    assert "Iteration 200/300 | Loss: 0.0400 | PSNR: 27.50 dB | ETA 0:12" in lines
    assert lines.index("Iteration 100/300 | Loss: 0.0800") < lines.index("Iteration 200/300 | Loss: 0.0400 | PSNR: 27.50 dB | ETA 0:12")
    assert out_has in captured.out and err_has in captured.err


async def test_wait_timeout_exits_1(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    assert await run("wait", "fox", "--timeout", "0.3", "--interval", "0.05", *flags(kube)) == 1
    assert "still phase: Pending after 0s" in capsys.readouterr().err


async def test_wait_usage_error_exits_2():
    assert await run("wait") == cli.EXIT_USAGE


# --- logs and download ---------------------------------------------------------------------------


async def _trainer_pod(kube, training: str, lines: list[str]) -> str:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{training}-abcde", "namespace": NS, "labels": {names.LABEL_TRAINING: training}},
           "spec": {"containers": [{"name": names.TRAINER_CONTAINER, "image": "t"}]}}
    await kube.emulator.create(c.POD_RESOURCE, pod)
    await kube.emulator.append_log(NS, pod["metadata"]["name"], *lines)
    return pod["metadata"]["name"]


async def test_logs_prints_the_newest_trainer_pod_log(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    capsys.readouterr()
    assert await run("logs", "fox", *flags(kube)) == cli.EXIT_FAILED
    assert "no trainer pod yet" in capsys.readouterr().err
    await _trainer_pod(kube, "fox", ['{"event": "progress", "step": 1, "max_steps": 2, "loss": 0.5}', "done"])
    assert await run("logs", "fox", *flags(kube)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "done"


async def test_download_copies_from_a_local_volume_with_size_check(kube, tmp_path, capsys):
    volume = tmp_path / "volume"
    ply = volume / "fox" / "gsplat" / "results.ply"
    ply.parent.mkdir(parents=True)
    ply.write_bytes(b"x" * 300_000)
    for rel in ("fox/colmap/sparse_initial/cameras.bin", "fox/colmap/sparse_initial/images.bin",
                "fox/colmap/sparse_initial/points3D.bin", "fox/images/0001.jpg"):
        (volume / rel).parent.mkdir(parents=True, exist_ok=True)
        (volume / rel).write_bytes(b"")
    dl.write_local_volumes(kube.kubeconfig.parent, {"scenes": str(volume)})
    assert await run("train", "fox", "--pvc", "scenes", "--name", "fox", *flags(kube)) == 0
    out = tmp_path / "out" / "fox.ply"
    assert await run("download", "fox", "-o", str(out), *flags(kube)) == cli.EXIT_FAILED  # not done yet
    assert "is Pending" in capsys.readouterr().err

    await set_status(kube, "fox", {"phase": "Succeeded", "modelPath": "fox/gsplat/results.ply", "modelSizeMB": 0.29})
    assert await run("download", "fox", "-o", str(out), *flags(kube)) == 0
    assert out.read_bytes() == ply.read_bytes()

    await set_status(kube, "fox", {"phase": "Succeeded", "modelPath": "fox/gsplat/results.ply", "modelSizeMB": 5.0})
    bad = tmp_path / "bad.ply"
    assert await run("download", "fox", "-o", str(bad), *flags(kube)) == cli.EXIT_FAILED
    assert "size check failed" in capsys.readouterr().err and not bad.exists()


async def test_train_checks_a_local_scene_before_creating(kube, tmp_path, capsys):
    volume = tmp_path / "volume"
    (volume / "fox" / "images").mkdir(parents=True)
    dl.write_local_volumes(kube.kubeconfig.parent, {"scenes": str(volume)})
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == cli.EXIT_FAILED
    assert "COLMAP reconstruction not found" in capsys.readouterr().err
    assert kube.emulator.list_objects(c.TRAINING_RESOURCE, NS) == []


def test_reader_pod_mounts_the_claim_read_only():
    pod = dl.reader_pod("fox", "scenes")
    assert pod["spec"]["volumes"] == [{"name": names.SCENE_VOLUME, "persistentVolumeClaim": {"claimName": "scenes", "readOnly": True}}]
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["readOnly"] is True and mount["mountPath"] == names.SCENE_MOUNT
    assert pod["spec"]["activeDeadlineSeconds"] > 0 and pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("setup, problem", [
    ([], "COLMAP reconstruction not found"),
    (["colmap/sparse_initial/cameras.bin", "images/a.jpg"], "COLMAP reconstruction not found"),
    (["colmap/sparse_initial/cameras.bin", "colmap/sparse_initial/images.bin", "colmap/sparse_initial/points3D.bin"],
     "No images found"),
    (["colmap/sparse_initial/cameras.txt", "colmap/sparse_initial/images.txt", "colmap/sparse_initial/points3D.txt",
      "images/.hidden"], "No images found"),
    (["colmap/sparse_initial/cameras.bin", "colmap/sparse_initial/images.bin", "colmap/sparse_initial/points3D.bin",
      "images/a.jpg"], None),
])
def test_scene_problem(tmp_path, setup, problem):
    for rel in setup:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = cli.scene_problem(tmp_path)
    assert (found is None) if problem is None else (problem in found)


async def test_train_download_waits_then_fetches_the_model(kube, tmp_path, capsys):
    volume = tmp_path / "volume"
    for rel in ("fox/colmap/sparse_initial/cameras.bin", "fox/colmap/sparse_initial/images.bin",
                "fox/colmap/sparse_initial/points3D.bin", "fox/images/0001.jpg"):
        (volume / rel).parent.mkdir(parents=True, exist_ok=True)
        (volume / rel).write_bytes(b"")
    ply = volume / "fox" / "gsplat" / "results.ply"
    ply.parent.mkdir(parents=True)
    ply.write_bytes(b"ply\n" + b"\1" * 2_000_000)
    dl.write_local_volumes(kube.kubeconfig.parent, {"scenes": str(volume)})
    final = {"phase": "Succeeded", "modelPath": "fox/gsplat/results.ply", "modelSizeMB": 1.91}

    async def player():
        while kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox") is None:
            await asyncio.sleep(0.05)
        await _play(kube, "fox", final)

    task = asyncio.create_task(player())
    out = tmp_path / "fox.ply"
    assert await run("train", "fox", "--pvc", "scenes", "--download", str(out), *flags(kube)) == 0
    await task
    assert out.read_bytes() == ply.read_bytes()
    assert f"{out} (1.91 MB) from fox" in capsys.readouterr().out
