"""The seed REST API's `POST /scene/{id}/colmap_ba` and its status, over HTTP (TestClient), on
reconstruct-only trainings; train_gsplat's status and download ignore those runs."""

from __future__ import annotations

from splatops import contract

from .test_app import ROOT, env, make_scene  # noqa: F401  (env: the in-memory gateway fixture)


def test_colmap_ba_creates_a_reconstruct_only_training_and_reports_it(env):  # noqa: F811
    client, repo, mount = env
    make_scene(mount, "fox", colmap=False)
    r = client.post("/scene/fox/colmap_ba")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "processing", "scene_id": "fox", "message": "COLMAP reconstruction started in background",
                        "check_status_at": "/scene/fox/colmap_ba/status"}
    (res,) = repo.items.values()
    assert res["metadata"]["name"] == "fox-colmap"
    assert res["spec"]["reconstruct"] == "Always" and res["spec"]["reconstructOnly"] is True
    assert res["spec"]["scene"]["path"] == f"{ROOT}/fox"

    res["status"] = {"phase": "Running", "reason": "Reconstructing",
                     "progress": {"stage": "Reconstructing", "message": "Extracting features 12/50"}}
    status = client.get("/scene/fox/colmap_ba/status").json()
    assert status == {"status": "processing", "scene_id": "fox", "message": "COLMAP reconstruction in progress",
                      "progress": "Extracting features 12/50"}
    assert client.get("/scene/fox/train_gsplat/status").status_code == 404  # not a training

    numbers = {"images": 50, "registered": 48, "points": 9000}
    res["status"] = {"phase": "Succeeded", "reconstruction": numbers}
    status = client.get("/scene/fox/colmap_ba/status").json()
    assert status["status"] == "complete" and status["reconstruction"] == numbers
    assert status["model_path"] == f"{mount}/{ROOT}/fox/{contract.COLMAP_DIR}"

    assert client.post("/scene/fox/colmap_ba").status_code == 200  # again: a second run, the first kept
    assert sorted(repo.items) == ["fox-colmap", "fox-colmap-2"]
    assert client.get("/scene/fox/colmap_ba/status").json()["status"] == "processing"  # the newest


def test_colmap_ba_needs_images_not_a_model(env):  # noqa: F811
    client, repo, mount = env
    make_scene(mount, "empty", colmap=False, images=False)
    r = client.post("/scene/empty/colmap_ba")
    assert r.status_code == 400 and r.json()["detail"] == contract.MSG_NO_IMAGES
    assert client.post("/scene/nowhere/colmap_ba").status_code == 404
    assert client.get("/scene/empty/colmap_ba/status").status_code == 404
    assert repo.items == {}
