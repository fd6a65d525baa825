"""The pure mappings behind `splatops status`, `train`, `list` and the gateway: table-driven."""

from __future__ import annotations

import datetime

import pytest

from splatops import names
from splatops.api import layout
from splatops.client import original as o


def res(name="fox", phase=None, path="scenes/fox", annotations=None, created="2026-01-01T00:00:00Z", **status):
    body = {
        "apiVersion": names.API_VERSION, "kind": names.KIND,
        "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations or {}},
        "spec": {"scene": {"claimName": "scenes", "path": path}, "dataFactor": 2, "maxSteps": 7000},
    }
    if phase:
        body["status"] = {"phase": phase, **status}
    return body


PROGRESS = {"step": 15234, "maxSteps": 30000, "percent": 50.78, "loss": 0.0234,
            "message": "Iteration 15234/30000 | Loss: 0.0234", "updatedAt": "2026-01-01T00:01:00Z"}
CONFIG = {"scene_id": "mijato", "data_factor": 1, "max_steps": 30000, "timestamp": 1699564821.234}


@pytest.mark.parametrize("resource, root, expected", [
    # Running: the original's processing shape, progress in its words.
    (res("mijato", "Running", path="backend_data/reconstructions/mijato", progress=PROGRESS), None,
     {"status": "processing", "scene_id": "mijato", "message": "Gaussian Splatting training in progress",
      "progress": "Iteration 15234/30000 | Loss: 0.0234"}),
    # No status yet (the operator has not seen it): still processing, says Pending.
    (res("mijato", path="x/mijato"), None,
     {"status": "processing", "scene_id": "mijato", "message": "Gaussian Splatting training in progress",
      "progress": "Pending"}),
    (res("mijato", "Queued", path="x/mijato", message="waiting for a free GPU slot"), None,
     {"status": "processing", "scene_id": "mijato", "message": "Gaussian Splatting training in progress",
      "progress": "Queued: waiting for a free GPU slot"}),
    # Succeeded: model_path under the reader's mount, size, config, download_url.
    (res("mijato", "Succeeded", path="backend_data/reconstructions/mijato",
         modelPath="backend_data/reconstructions/mijato/gsplat/results.ply", modelSizeMB=127.45, config=CONFIG),
     "/mnt/volume",
     {"status": "complete", "scene_id": "mijato",
      "model_path": "/mnt/volume/backend_data/reconstructions/mijato/gsplat/results.ply",
      "model_size_mb": 127.45, "config": CONFIG, "download_url": "/scene/mijato/gsplat/model"}),
    # The trainer's in-pod path (/data/...) is made volume-relative; the CRD's modelSizeMb also read.
    (res("fox", "Succeeded", modelPath="/data/scenes/fox/gsplat/results.ply", modelSizeMb=1.5), None,
     {"status": "complete", "scene_id": "fox", "model_path": "scenes/fox/gsplat/results.ply",
      "model_size_mb": 1.5, "config": {"scene_id": "fox", "data_factor": 2, "max_steps": 7000},
      "download_url": "/scene/fox/gsplat/model"}),
    # status.outputs (model formats, preview, metrics) under the reader's mount.
    (res("fox", "Succeeded", modelPath="s/fox/gsplat/results.ply", modelSizeMB=1.5,
         outputs=[{"name": "spz", "path": "s/fox/gsplat/results.spz", "bytes": 150}]), "/mnt/v",
     {"status": "complete", "scene_id": "fox", "model_path": "/mnt/v/s/fox/gsplat/results.ply",
      "model_size_mb": 1.5, "config": {"scene_id": "fox", "data_factor": 2, "max_steps": 7000},
      "download_url": "/scene/fox/gsplat/model",
      "outputs": [{"name": "spz", "path": "/mnt/v/s/fox/gsplat/results.spz", "bytes": 150}]}),
    # Failed: the actionable message is the original's error.
    (res("mijato", "Failed", path="a/mijato", reason="OutOfMemory",
         message="CUDA out of memory. Try reducing data_factor or image resolution."), None,
     {"status": "failed", "scene_id": "mijato",
      "error": "CUDA out of memory. Try reducing data_factor or image resolution."}),
    (res("fox", "Failed", reason="DeadlineExceeded"), None,
     {"status": "failed", "scene_id": "fox", "error": "DeadlineExceeded"}),
])
def test_original_status(resource, root, expected):
    assert o.original_status(resource, volume_root=root) == expected


@pytest.mark.parametrize("resource, expected", [
    (res("fox-3", annotations={o.ANNOTATION_SCENE_ID: "Fox_Scene"}), "Fox_Scene"),
    (res("fox-3", path="backend_data/reconstructions/fox/"), "fox"),
    (res("whole-volume", path="."), "whole-volume"),
])
def test_scene_id_of(resource, expected):
    assert o.scene_id_of(resource) == expected


@pytest.mark.parametrize("status, output, expected", [
    ({}, None, "scenes/fox/gsplat/fox-2/results.ply"),  # the training's own output directory
    ({}, "scenes/fox/gsplat", "scenes/fox/gsplat/results.ply"),  # the seed layout, named in spec.output.path
    ({"phase": "Succeeded", "modelPath": "scenes/fox/gsplat/results.ply"}, None, "scenes/fox/gsplat/results.ply"),
    ({"phase": "Succeeded", "modelPath": "/data/other/gsplat/results.ply"}, None, "other/gsplat/results.ply"),
    # A local run reports a host path: the layout's place inside the volume is used instead.
    ({"phase": "Succeeded", "modelPath": "/home/u/.local-run/volume/scenes/fox/gsplat/fox-2/results.ply"}, None,
     "scenes/fox/gsplat/fox-2/results.ply"),
])
def test_model_path(status, output, expected):
    resource = res("fox-2")
    resource["status"] = status
    if output is not None:
        resource["spec"]["output"] = {"path": output}
    assert o.model_path(resource) == expected
    if not status:  # not reported yet: the layout's own answer, as the operator's Job gets it
        assert expected == layout.location_of(resource).model_path


def test_no_model_path_without_a_report_or_a_valid_spec():
    resource = res("fox-2")
    resource["spec"]["dataFactor"] = 3  # not 1, 2, 4 or 8: no output location to compute
    assert layout.location_of(resource) is None and o.model_path(resource) is None
    resource["status"] = {"phase": "Succeeded", "modelPath": "/data/scenes/fox/out/results.ply"}
    assert o.model_path(resource) == "scenes/fox/out/results.ply"


@pytest.mark.parametrize("scene, existing, expected", [
    ("mijato", [], "mijato"),
    ("mijato", ["mijato"], "mijato-2"),
    ("mijato", ["mijato", "mijato-2", "mijato-7", "other-9"], "mijato-8"),
    ("Fox Scene_1", ["fox-scene-1"], "fox-scene-1-2"),
    ("a" * 80, [], "a" * 63),
    ("a" * 80, ["a" * 63], "a" * 61 + "-2"),
    ("___", [], "scene"),
])
def test_next_run_name(scene, existing, expected):
    name = o.next_run_name(scene, existing)
    assert name == expected and len(name) <= 63


@pytest.mark.parametrize("scene, name, expected", [
    ("fox", "fox", 1), ("fox", "fox-12", 12), ("fox", "fox-1", None), ("fox", "foxy-2", None),
    ("fox-2", "fox-2", 1), ("fox-2", "fox-2-3", 3),
])
def test_run_number(scene, name, expected):
    assert o.run_number(scene, name) == expected


def test_newest_prefers_highest_run_of_the_scene():
    runs = [res("fox", created="2026-01-01T00:00:09Z"), res("fox-10", created="2026-01-01T00:00:01Z"),
            res("fox-9", created="2026-01-01T00:00:05Z"), res("bear-99", path="scenes/bear")]
    assert o.newest(runs, "fox")["metadata"]["name"] == "fox-10"
    assert o.newest([], "fox") is None


@pytest.mark.parametrize("kwargs, spec", [
    ({}, {"scene": {"claimName": "pvc", "path": "scenes/fox"}}),
    ({"data_factor": 4, "max_steps": 7000, "strategy": "mcmc"},
     {"scene": {"claimName": "pvc", "path": "scenes/fox"}, "dataFactor": 4, "maxSteps": 7000, "strategy": "mcmc"}),
])
def test_build_training(kwargs, spec):
    manifest = o.build_training("fox", scene_id="fox", claim="pvc", path="scenes/fox", **kwargs)
    assert manifest["apiVersion"] == names.API_VERSION and manifest["kind"] == names.KIND
    assert manifest["spec"] == spec
    assert manifest["metadata"]["labels"][o.LABEL_SCENE] == "fox"
    assert manifest["metadata"]["annotations"][o.ANNOTATION_SCENE_ID] == "fox"


@pytest.mark.parametrize("kwargs", [
    {"data_factor": 3}, {"max_steps": 0}, {"strategy": "fast"}, {"path": "/abs"}, {"path": "../up"},
    {"claim": "Bad_Claim"},
])
def test_build_training_rejects_bad_values(kwargs):
    args = {"scene_id": "fox", "claim": "pvc", "path": "scenes/fox", **kwargs}
    with pytest.raises(ValueError):
        o.build_training("fox", **args)


NOW = datetime.datetime(2026, 1, 1, 3, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize("created, expected", [
    ("2026-01-01T02:59:15Z", "45s"), ("2026-01-01T02:48:00Z", "12m"), ("2025-12-31T00:00:00Z", "1d"),
    ("2026-01-01T00:00:00Z", "3h"), ("", "?"), ("garbage", "?"),
])
def test_age(created, expected):
    assert o.age(created, NOW) == expected


def test_table_rows_and_format():
    running = res("fox", "Running", created="2026-01-01T02:59:00Z", progress={**PROGRESS, "psnr": 29.12})
    done = res("bear", "Succeeded", path="scenes/bear", created="2026-01-01T00:00:00Z", modelSizeMB=12.5)
    rows = [o.table_row(running, NOW), o.table_row(done, NOW)]
    assert rows[0] == ("fox", "fox", "Running", "51%", "0.0234", "29.12", "-", "1m")
    assert rows[1] == ("bear", "bear", "Succeeded", "-", "-", "-", "12.50", "3h")
    lines = o.format_table(rows).splitlines()
    assert lines[0].split() == list(o.TABLE_COLUMNS)
    assert lines[1].split()[:3] == ["fox", "fox", "Running"]
    assert lines[0].index("PHASE") == lines[1].index("Running")  # aligned columns


@pytest.mark.parametrize("progress, expected", [
    (PROGRESS, "Iteration 15234/30000 | Loss: 0.0234"),
    ({**PROGRESS, "psnr": 29.1, "numGaussians": 812345, "stepsPerSec": 140.2, "etaSeconds": 105.3},
     "Iteration 15234/30000 | Loss: 0.0234 | PSNR: 29.10 dB | Gaussians: 812345 | 140.2 it/s | ETA 1:45"),
    ({**PROGRESS, "etaSeconds": 3725}, "Iteration 15234/30000 | Loss: 0.0234 | ETA 1:02:05"),
])
def test_progress_line(progress, expected):
    assert o.progress_line(res("fox", "Running", progress=progress)) == expected
    assert o.progress_line(res("fox", "Pending")) is None


@pytest.mark.parametrize("size_bytes, mb, ok", [
    (1048576, 1.0, True), (1048576 + 5000, 1.0, True), (1048576 + 20000, 1.0, False),
    (0, 127.45, False), (123, None, True),
])
def test_size_matches(size_bytes, mb, ok):
    assert o.size_matches(size_bytes, mb) is ok
