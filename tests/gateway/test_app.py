"""The REST gateway: the original endpoints, response shapes and errors.

Against an in-memory repository (what the API server stores) and, end to end, against the
embedded API server through the real Kubernetes repository.
"""

from __future__ import annotations

import pathlib

import httpx
import pytest
from fastapi.testclient import TestClient

from splatops import names
from splatops.client import original
from splatops.client.kube import Target, connect
from splatops.gateway.app import create_app
from splatops.gateway.repository import InMemoryRepository, KubeRepository
from splatops.gateway.settings import GatewaySettings
from splatops.local import cluster as c

ROOT = "backend_data/reconstructions"


def make_scene(mount: pathlib.Path, scene: str, *, colmap=True, images=True, ply: bytes | None = None) -> pathlib.Path:
    d = mount / ROOT / scene
    d.mkdir(parents=True)
    if colmap:
        (d / "colmap/sparse_initial").mkdir(parents=True)
        for f in ("cameras.bin", "images.bin", "points3D.bin"):
            (d / "colmap/sparse_initial" / f).write_bytes(b"\0")
    if images:
        (d / "images").mkdir()
        (d / "images/0001.jpg").write_bytes(b"\xff\xd8")
    if ply is not None:
        (d / "gsplat").mkdir()
        (d / "gsplat/results.ply").write_bytes(ply)
    return d


@pytest.fixture
def env(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    settings = GatewaySettings(mount_path=str(mount), claim_name="heritage", scenes_root=ROOT)
    repo = InMemoryRepository()
    with TestClient(create_app(settings, repo)) as client:
        yield client, repo, mount


def test_post_starts_training_with_the_original_response(env):
    client, repo, mount = env
    make_scene(mount, "mijato")
    r = client.post("/scene/mijato/train_gsplat", params={"data_factor": 4, "max_steps": 7000})
    assert r.status_code == 200
    assert r.json() == {
        "status": "processing", "scene_id": "mijato",
        "message": "Gaussian Splatting training started in background",
        "config": {"data_factor": 4, "max_steps": 7000},
        "check_status_at": "/scene/mijato/train_gsplat/status",
    }
    created = repo.items["mijato"]
    # The original API keeps the seed's single output directory, <scene>/gsplat/.
    assert created["spec"] == {"scene": {"claimName": "heritage", "path": f"{ROOT}/mijato"},
                               "output": {"path": f"{ROOT}/mijato/gsplat"}, "dataFactor": 4, "maxSteps": 7000}


def test_post_defaults_are_the_originals(env):
    client, repo, mount = env
    make_scene(mount, "mijato")
    assert client.post("/scene/mijato/train_gsplat").json()["config"] == {"data_factor": 1, "max_steps": 30000}


@pytest.mark.parametrize("scene_kwargs, params, status, detail", [
    ({}, {"data_factor": 3}, 400, "data_factor must be one of 1, 2, 4, 8"),
    ({}, {"max_steps": 0}, 400, "max_steps must be between"),
    (None, {}, 404, "Scene mijato not found"),
    ({"colmap": False}, {}, 400, "COLMAP reconstruction not found"),
    ({"images": False}, {}, 400, "No images found"),
])
def test_post_errors(env, scene_kwargs, params, status, detail):
    client, repo, mount = env
    if scene_kwargs is not None:
        make_scene(mount, "mijato", **scene_kwargs)
    r = client.post("/scene/mijato/train_gsplat", params=params)
    assert r.status_code == status and detail in r.json()["detail"]
    assert repo.items == {}  # nothing created


def test_path_traversal_is_rejected(env):
    client, _, _ = env
    assert client.post("/scene/..%2F..%2Fetc/train_gsplat").status_code in (400, 404)
    assert client.get("/scene/a%20b/train_gsplat/status").status_code == 400


def test_status_follows_the_newest_run_and_repeated_posts_keep_earlier_runs(env):
    client, repo, mount = env
    make_scene(mount, "mijato")
    assert client.get("/scene/mijato/train_gsplat/status").status_code == 404
    assert client.post("/scene/mijato/train_gsplat").status_code == 200
    repo.items["mijato"]["status"] = {"phase": "Running", "progress": {
        "step": 15234, "maxSteps": 30000, "percent": 50.8, "loss": 0.0234,
        "message": "Iteration 15234/30000 | Loss: 0.0234", "updatedAt": "2026-01-01T00:00:00Z"}}
    assert client.get("/scene/mijato/train_gsplat/status").json() == {
        "status": "processing", "scene_id": "mijato", "message": "Gaussian Splatting training in progress",
        "progress": "Iteration 15234/30000 | Loss: 0.0234"}
    # A second POST while one runs is accepted: it writes the same gsplat/, so the operator keeps it
    # Queued (OutputBusy) until the first ends (tests/operator_integration/test_outputs.py); no
    # check-then-create race here.
    assert client.post("/scene/mijato/train_gsplat").status_code == 200
    assert repo.items["mijato-2"]["spec"]["output"] == repo.items["mijato"]["spec"]["output"]
    del repo.items["mijato-2"]

    config = {"scene_id": "mijato", "data_factor": 1, "max_steps": 30000, "timestamp": 1699564821.234}
    repo.items["mijato"]["status"] = {"phase": "Succeeded", "modelPath": f"{ROOT}/mijato/gsplat/results.ply",
                                      "modelSizeMB": 127.45, "config": config}
    assert client.get("/scene/mijato/train_gsplat/status").json() == {
        "status": "complete", "scene_id": "mijato",
        "model_path": f"{mount}/{ROOT}/mijato/gsplat/results.ply", "model_size_mb": 127.45,
        "config": config, "download_url": "/scene/mijato/gsplat/model"}

    assert client.post("/scene/mijato/train_gsplat", params={"max_steps": 7000}).status_code == 200
    assert sorted(repo.items) == ["mijato", "mijato-2"]  # the first run and its result stay
    assert client.get("/scene/mijato/train_gsplat/status").json()["status"] == "processing"
    repo.items["mijato-2"]["status"] = {"phase": "Failed", "reason": "OutOfMemory",
                                        "message": "CUDA out of memory. Try reducing data_factor or image resolution."}
    assert client.get("/scene/mijato/train_gsplat/status").json() == {
        "status": "failed", "scene_id": "mijato",
        "error": "CUDA out of memory. Try reducing data_factor or image resolution."}


def test_model_download(env):
    client, _, mount = env
    make_scene(mount, "mijato", ply=b"ply\nformat binary_little_endian 1.0\n" + b"\1" * 1000)
    r = client.get("/scene/mijato/gsplat/model")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert 'filename="mijato_gaussian_splatting.ply"' in r.headers["content-disposition"]
    assert r.content.startswith(b"ply\n") and len(r.content) == 1036
    make_scene(mount, "empty")
    assert client.get("/scene/empty/gsplat/model").status_code == 404


def test_openapi_lists_the_original_endpoints(env):
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    assert {"/scene/{scene_id}/train_gsplat", "/scene/{scene_id}/train_gsplat/status",
            "/scene/{scene_id}/gsplat/model"} <= set(spec["paths"])
    params = {p["name"] for p in spec["paths"]["/scene/{scene_id}/train_gsplat"]["post"]["parameters"]}
    assert params == {"scene_id", "data_factor", "max_steps"}


@pytest.mark.parametrize("env_vars, field, value", [
    ({"SPLATOPS_GATEWAY_CLAIM_NAME": "scenes"}, "claim_name", "scenes"),
    ({"SPLATOPS_GATEWAY_SCENES_ROOT": "/data/recon/"}, "scenes_root", "data/recon"),
    ({"SPLATOPS_GATEWAY_MOUNT_PATH": "/vol"}, "mount_path", "/vol"),
    ({"SPLATOPS_GATEWAY_NAMESPACE": "team-a"}, "namespace", "team-a"),
])
def test_settings_from_env(monkeypatch, env_vars, field, value):
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    assert getattr(GatewaySettings(), field) == value


@pytest.mark.parametrize("env_vars", [{"SPLATOPS_GATEWAY_CLAIM_NAME": "Bad_Name"}, {"SPLATOPS_GATEWAY_SCENES_ROOT": "../x"}])
def test_bad_settings_are_rejected(monkeypatch, env_vars):
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError):
        GatewaySettings()


async def test_against_the_embedded_api_server(tmp_path):
    mount = tmp_path / "mnt"
    make_scene(mount, "fox")
    settings = GatewaySettings(mount_path=str(mount), claim_name="heritage", scenes_root=ROOT)
    async with c.running_cluster(tmp_path / "kubeconfig") as cluster:
        async with connect(Target(kubeconfig=str(cluster.kubeconfig))) as kube:
            app = create_app(settings, KubeRepository(kube))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                r = await http.post("/scene/fox/train_gsplat", params={"data_factor": 2, "max_steps": 500})
                assert r.status_code == 200, r.text
                obj = cluster.emulator.read(c.TRAINING_RESOURCE, "default", "fox")
                assert obj["spec"]["dataFactor"] == 2 and obj["spec"]["strategy"] == "default"  # CRD default
                assert obj["metadata"]["labels"][original.LABEL_SCENE] == "fox"
                r = await http.get("/scene/fox/train_gsplat/status")
                assert r.json()["status"] == "processing"
                await cluster.emulator.patch(c.TRAINING_RESOURCE, "default", "fox", {"status": {
                    "phase": "Succeeded", "modelPath": f"{ROOT}/fox/gsplat/results.ply", "modelSizeMB": 2.0}},
                    subresource="status")
                assert (await http.get("/scene/fox/train_gsplat/status")).json()["model_size_mb"] == 2.0
                assert (await http.post("/scene/fox/train_gsplat")).status_code == 200
                runs = cluster.emulator.list_objects(c.TRAINING_RESOURCE, "default")
                assert sorted(r["metadata"]["name"] for r in runs) == ["fox", "fox-2"]
                assert all(r["kind"] == names.KIND for r in runs)
