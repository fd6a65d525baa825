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
from splatops.api.models import parse_spec
from splatops.cli import main as cli
from splatops.client import download as dl
from splatops.client import scenes
from splatops.controller import jobs
from splatops.controller.settings import Settings
from splatops.local import cluster as c

NS = "default"
ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / f"{names.CRD_NAME}.yaml"


PVC_RESOURCE = "v1/persistentvolumeclaims"


@pytest.fixture
async def kube(tmp_path):
    """The emulator with the claim `scenes` that the trainings below name."""
    async with c.running_cluster(tmp_path / "kubeconfig") as cluster:
        await add_claim(cluster, "scenes")
        yield cluster


async def add_claim(cluster, name: str, namespace: str = NS) -> None:
    await cluster.emulator.create(PVC_RESOURCE, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})


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
    ["--output", "fox/gsplat"],
])
async def test_dry_run_prints_yaml_valid_against_the_crd(capsys, extra):
    code = await run("train", "fox", "--pvc", "scenes", "--dry-run", *extra)
    assert code == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    jsonschema.validate(doc, _strip_k8s_extensions(crd_schema()))
    assert doc["kind"] == names.KIND and doc["spec"]["scene"]["claimName"] == "scenes"
    if "-n" in extra:
        assert doc["metadata"]["namespace"] == "team-a"
    assert doc["spec"].get("output") == ({"path": "fox/gsplat"} if "--output" in extra else None)


@pytest.mark.parametrize("bad", [["--data-factor", "3"], ["--max-steps", "0"], ["--strategy", "x"], ["--path", "/etc"],
                                 ["--output", "fox/../../etc"]])
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
    assert await run("list", "-o", "original", *flags(kube)) == 0
    assert [i["name"] for i in json.loads(capsys.readouterr().out)] == ["fox"]
    assert await run("list", "-o", "json", *flags(kube)) == 0
    assert [i["metadata"]["name"] for i in json.loads(capsys.readouterr().out)["items"]] == ["fox"]
    assert await run("status", "fox", "-n", "elsewhere", *flags(kube)) == cli.EXIT_FAILED


# --- wait ----------------------------------------------------------------------------------------


PENDING = {"phase": "Pending", "message": "waiting for a GPU node"}
PENDING_LINE = "fox: phase: Pending (waiting for a GPU node)"
LINE_100 = "Iteration 100/300 | Loss: 0.0800"
LINE_200 = "Iteration 200/300 | Loss: 0.0400 | PSNR: 27.50 dB | ETA 0:12"


async def _play(kube, capsys, out: list[str], err: list[str], name: str, final: dict) -> None:
    """Play the operator after PENDING: each next status once `wait` has printed the one before,
    so none is missed however slow the machine (a count of GETs proves nothing: `wait` reads the
    training once before it polls, and a GET is counted when it arrives, not when it is answered)."""
    for shown, status in ((PENDING_LINE, progress(100, 0.08)), (LINE_100, progress(200, 0.04, psnr=27.5, etaSeconds=12.0)),
                          (LINE_200, final)):
        for _ in range(2000):
            captured = capsys.readouterr()
            out.extend(captured.out.splitlines())
            err.append(captured.err)
            if shown in out:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"`wait` did not print {shown!r}; it printed {out}")
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
    await set_status(kube, "fox", PENDING)  # before `wait` starts: its first read sees it
    out: list[str] = []
    err: list[str] = []
    player = asyncio.create_task(_play(kube, capsys, out, err, "fox", final))
    assert await run("wait", "fox", "--interval", "0.05", *flags(kube)) == code
    await player
    captured = capsys.readouterr()
    lines = out + captured.out.splitlines()
    assert lines.index(PENDING_LINE) < lines.index(LINE_100) < lines.index(LINE_200)
    assert out_has in "\n".join(lines) and err_has in "".join(err) + captured.err


async def test_wait_timeout_exits_1(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    assert await run("wait", "fox", "--timeout", "0.3", "--interval", "0.05", *flags(kube)) == 1
    assert "still phase: Pending after 0s" in capsys.readouterr().err


async def test_wait_usage_error_exits_2():
    assert await run("wait") == cli.EXIT_USAGE


# --- logs and download ---------------------------------------------------------------------------


async def _trainer_pod(kube, training: str, lines: list[str], suffix: str = "abcde") -> str:
    """A pod as the Job controller makes it from the operator's Job (its template's labels)."""
    resource = kube.emulator.read(c.TRAINING_RESOURCE, NS, training)
    job = jobs.build_job(resource, parse_spec(resource["spec"]), Settings())
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{job['metadata']['name']}-{suffix}", "namespace": NS,
                        "labels": {**job["spec"]["template"]["metadata"]["labels"], "job-name": job["metadata"]["name"]}},
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
    assert await run("train", "fox", "--pvc", "scenes", "--reconstruct", "Never", *flags(kube)) == cli.EXIT_FAILED
    assert "COLMAP reconstruction not found" in capsys.readouterr().err
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == cli.EXIT_FAILED  # photos are enough, none is not
    assert "No images found" in capsys.readouterr().err
    assert kube.emulator.list_objects(c.TRAINING_RESOURCE, NS) == []


@pytest.mark.parametrize("setup, problem", [
    ([], "No images found"),
    (["images/a.jpg"], None),  # photos only: the trainer reconstructs (spec.reconstruct IfMissing)
    (["colmap/sparse_initial/cameras.bin", "images/a.jpg"], None),
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
    found = scenes.scene_problem(tmp_path)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("setup", [[], ["images/a.jpg"], ["colmap/sparse_initial/cameras.bin", "images/a.jpg"]])
def test_scene_problem_with_reconstruct_never_needs_a_model(tmp_path, setup):
    for rel in setup:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert "COLMAP reconstruction not found" in scenes.scene_problem(tmp_path, need_model=True)


@pytest.mark.parametrize("files, is_model", [
    (["cameras.bin", "images.bin", "points3D.bin"], True),
    (["cameras.txt", "images.txt", "points3D.txt"], True),
    (["cameras.bin", "images.txt", "points3D.bin"], False),  # pycolmap reads one format, not a mix
    (["cameras.bin", "images.bin"], False),
])
def test_one_colmap_layout_check_for_the_cli_the_gateway_and_the_trainer(tmp_path, files, is_model):
    from splatops.gateway import files as gateway_files
    from splatops_trainer import scene as trainer_scene

    model = tmp_path / "fox" / "colmap" / "sparse_initial"
    model.mkdir(parents=True)
    (tmp_path / "fox" / "images").mkdir()
    (tmp_path / "fox" / "images" / "a.jpg").write_bytes(b"")
    for name in files:
        (model / name).write_bytes(b"")
    cli_problem = scenes.scene_problem(tmp_path / "fox", need_model=True)
    gateway_problem = gateway_files.scene_problem(str(tmp_path), ["fox"], need_model=True)
    assert trainer_scene.has_model(model) is is_model
    assert (cli_problem is None) is (gateway_problem is None) is is_model


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
        await set_status(kube, "fox", PENDING)
        await set_status(kube, "fox", final)  # `train --download` waits for the end, whatever it missed

    task = asyncio.create_task(player())
    out = tmp_path / "fox.ply"
    assert await run("train", "fox", "--pvc", "scenes", "--download", str(out), *flags(kube)) == 0
    await task
    assert out.read_bytes() == ply.read_bytes()
    assert f"{out} (1.91 MB) from fox" in capsys.readouterr().out


# --- logs: long names, the newest trainer pod, -f -------------------------------------------------

LONG_NAME = "fox-" + "a" * 70  # > 63: the operator hashes it into the pod's training label


async def test_logs_finds_the_pods_of_a_training_with_a_name_over_63_characters(kube, capsys):
    assert len(LONG_NAME) > 63
    assert await run("train", "fox", "--pvc", "scenes", "--name", LONG_NAME, *flags(kube)) == 0
    pod = await _trainer_pod(kube, LONG_NAME, ["Iteration 1/2", "long-name log"])
    label = kube.emulator.read(c.POD_RESOURCE, NS, pod)["metadata"]["labels"][names.LABEL_TRAINING]
    assert label != LONG_NAME and len(label) <= 63  # what the operator writes, not the raw name
    capsys.readouterr()
    assert await run("logs", LONG_NAME, *flags(kube)) == 0
    assert capsys.readouterr().out.splitlines() == ["Iteration 1/2", "long-name log"]


async def test_logs_selects_pods_by_the_training_uid_not_its_name(kube, capsys):
    """A deleted namesake's pod (still being garbage-collected, and newer) carries the same
    name label: `logs` reads this training's pod, found by its uid."""
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    ours = await _trainer_pod(kube, "fox", ["ours"], suffix="aaaaa")
    resource = kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox")
    namesake = jobs.build_job({**resource, "metadata": {"name": "fox", "namespace": NS, "uid": "uid-of-the-deleted-fox"}},
                              parse_spec(resource["spec"]), Settings())
    labels = namesake["spec"]["template"]["metadata"]["labels"]
    assert labels[names.LABEL_TRAINING] == kube.emulator.read(c.POD_RESOURCE, NS, ours)["metadata"]["labels"][names.LABEL_TRAINING]
    await kube.emulator.create(c.POD_RESOURCE, {"apiVersion": "v1", "kind": "Pod",
                                                "metadata": {"name": "gst-fox-old", "namespace": NS, "labels": labels},
                                                "spec": {"containers": [{"name": names.TRAINER_CONTAINER, "image": "t"}]}})
    await kube.emulator.append_log(NS, "gst-fox-old", "the deleted namesake's")
    capsys.readouterr()
    assert await run("logs", "fox", *flags(kube)) == 0
    assert capsys.readouterr().out == "ours\n"


async def test_logs_reads_the_newest_trainer_pod_not_a_download_pod(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    await _trainer_pod(kube, "fox", ["first attempt"], suffix="aaaaa")
    await _trainer_pod(kube, "fox", ["retry"], suffix="bbbbb")
    reader = dl.reader_pod("fox", "scenes")  # carries the training label too, but is no trainer
    await kube.emulator.create(c.POD_RESOURCE, {**reader, "metadata": {**reader["metadata"], "namespace": NS}})
    await kube.emulator.append_log(NS, reader["metadata"]["name"], "not a trainer")
    capsys.readouterr()
    assert await run("logs", "fox", *flags(kube)) == 0
    assert capsys.readouterr().out == "retry\n"


async def test_logs_follow_streams_until_the_pod_ends(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    pod = await _trainer_pod(kube, "fox", ["Iteration 1/3"])
    capsys.readouterr()

    async def trainer():  # the container keeps printing, then exits
        await asyncio.sleep(0.3)
        await kube.emulator.append_log(NS, pod, "Iteration 2/3", "Iteration 3/3")
        await asyncio.sleep(0.3)
        await kube.emulator.patch(c.POD_RESOURCE, NS, pod, {"status": {"phase": "Succeeded"}}, subresource="status")

    task = asyncio.create_task(trainer())
    assert await asyncio.wait_for(run("logs", "fox", "-f", *flags(kube)), timeout=20) == 0
    await task
    assert capsys.readouterr().out.splitlines() == ["Iteration 1/3", "Iteration 2/3", "Iteration 3/3"]


async def test_logs_follow_of_a_long_name(kube, capsys):
    assert await run("train", "fox", "--pvc", "scenes", "--name", LONG_NAME, *flags(kube)) == 0
    pod = await _trainer_pod(kube, LONG_NAME, ["done"])
    await kube.emulator.patch(c.POD_RESOURCE, NS, pod, {"status": {"phase": "Succeeded"}}, subresource="status")
    capsys.readouterr()
    assert await asyncio.wait_for(run("logs", LONG_NAME, "-f", *flags(kube)), timeout=20) == 0
    assert capsys.readouterr().out == "done\n"


# --- train: the claim must exist ------------------------------------------------------------------


async def test_train_fails_clearly_when_the_claim_does_not_exist(kube, capsys):
    assert await run("train", "fox", "--pvc", "nope", *flags(kube)) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "PersistentVolumeClaim 'nope' not found in namespace 'default'" in err
    assert "kubectl get pvc -n default" in err
    assert kube.emulator.list_objects(c.TRAINING_RESOURCE, NS) == []


async def test_train_checks_the_claim_in_the_target_namespace(kube, capsys):
    await kube.emulator.create(c.NAMESPACE_RESOURCE, {"metadata": {"name": "team-a"}})
    assert await run("train", "fox", "--pvc", "scenes", "-n", "team-a", *flags(kube)) == cli.EXIT_FAILED
    assert "not found in namespace 'team-a'" in capsys.readouterr().err
    await add_claim(kube, "scenes", "team-a")
    assert await run("train", "fox", "--pvc", "scenes", "-n", "team-a", *flags(kube)) == 0
    assert kube.emulator.read(c.TRAINING_RESOURCE, "team-a", "fox") is not None


async def test_train_skip_pvc_check_creates_without_looking(kube, capsys):
    assert await run("train", "fox", "--pvc", "nope", "--skip-pvc-check", *flags(kube)) == 0
    assert kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox")["spec"]["scene"]["claimName"] == "nope"
    assert not any(r.resource is not None and r.resource.plural == "persistentvolumeclaims"
                   for r in kube.emulator)  # kmock's public view: iterating it yields the requests served


async def test_train_without_permission_to_read_claims_warns_and_continues(kube, capsys):
    kube.emulator[f"get /api/v1/namespaces/{NS}/persistentvolumeclaims/scenes"] << 403
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0
    captured = capsys.readouterr()
    assert "warning: cannot check that PersistentVolumeClaim 'scenes' exists" in captured.err
    assert "/fox created" in captured.out
    assert kube.emulator.read(c.TRAINING_RESOURCE, NS, "fox") is not None


async def test_dry_run_never_touches_the_cluster(tmp_path, capsys, monkeypatch):
    kubeconfig = c.write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert await run("train", "fox", "--pvc", "nope", "--dry-run") == 0
    assert await run("train", "fox", "--pvc", "nope", "--dry-run", "--kubeconfig", str(tmp_path / "none")) == 0
    assert yaml.safe_load(capsys.readouterr().out.split("---")[0])["spec"]["scene"]["claimName"] == "nope"


# --- the kubectl plugin ---------------------------------------------------------------------------


def test_kubectl_splat_is_the_same_cli(monkeypatch, capsys):
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-splat"] == scripts["splatops"] == "splatops.cli.main:main"
    module, _, func = scripts["kubectl-splat"].partition(":")
    entry = getattr(importlib.import_module(module), func)

    def help_of(argv0: str) -> str:
        monkeypatch.setattr("sys.argv", [argv0, "--help"])
        with pytest.raises(SystemExit) as exc:
            entry()
        assert exc.value.code == 0
        return capsys.readouterr().out

    plugin, plain = help_of("/usr/local/bin/kubectl-splat"), help_of("/usr/local/bin/splatops")
    assert plugin.startswith("usage: kubectl splat ") and plain.startswith("usage: splatops ")
    assert plugin.replace("usage: kubectl splat ", "usage: splatops ", 1) == plain  # same parser, other name
    for command in ("train", "status", "wait", "logs", "list", "download"):
        assert command in plugin


def test_operator_with_invalid_settings_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("SPLATOPS_OPERATOR_LOG_FORMAT", "xml")
    assert cli.main(["operator"]) == 2
    assert "SPLATOPS_OPERATOR_LOG_FORMAT" in capsys.readouterr().err
