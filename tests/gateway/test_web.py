"""The gateway's web page and its JSON API: pure views, and over HTTP against the embedded API server."""

from __future__ import annotations

import json
import pathlib

import httpx
import pytest

from splatops import contract
from splatops.api import layout
from splatops.client.kube import Target, connect
from splatops.gateway import web
from splatops.gateway.app import create_app
from splatops.gateway.settings import GatewaySettings
from splatops.local import cluster as c


def line(event: str, step: int, **kw: object) -> str:
    return json.dumps({"event": event, "step": step, "max_steps": 100, "loss": 0.1, **kw})


@pytest.mark.parametrize("lines, steps", [
    ([line("progress", 10), line("progress", 20), line("eval", 20, psnr=25.0)], [10, 20, 20]),
    # resumed from a checkpoint at 10: the repeated steps replace the first run's
    ([line("progress", 10), line("progress", 20), line("progress", 30), line("progress", 20)], [10, 20]),
    # a fresh run in the same directory starts over
    ([line("progress", 50), line("eval", 50, psnr=20.0), line("progress", 5)], [5]),
    (["garbage", "{not json", line("progress", 1)], [1]),
])
def test_metrics_points(lines: list[str], steps: list[int]) -> None:
    assert [p["step"] for p in web.parse_metrics("\n".join(lines))] == steps


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "", "a/../../x", "link/secret"])
def test_inside_never_leaves_the_root(tmp_path: pathlib.Path, rel: str) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_text("s")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert web.inside(tmp_path / "root", rel) is None


FOX = {
    "apiVersion": "splatops.dev/v1alpha1", "kind": "GaussianSplatTraining",
    "metadata": {"name": "fox", "namespace": "default"},
    "spec": {"scene": {"claimName": "scenes", "path": "scenes/fox"}, "maxSteps": 100},
}
# Where the operator's layout puts this training's outputs (asked of the one function that knows).
FOX_DIR = layout.location_of(FOX).directory


def _fox(mount: pathlib.Path) -> pathlib.Path:
    out = mount / FOX_DIR
    out.mkdir(parents=True)
    (out / "results.ply").write_bytes(b"ply\n" + b"\0" * 100)
    (out / "results.spz").write_bytes(b"\x1f\x8b" + b"\0" * 10)
    (out / contract.PREVIEW_PNG).write_bytes(b"\x89PNG" + b"\0" * 20)
    (out / contract.METRICS_JSONL).write_text("\n".join([line("progress", 50), line("eval", 100, psnr=27.5)]) + "\n")
    return out


async def test_web_api_against_the_embedded_api_server(tmp_path: pathlib.Path) -> None:
    mount = tmp_path / "mnt"
    _fox(mount)
    settings = GatewaySettings(mount_path=str(mount), claim_name="scenes", scenes_root="scenes")
    async with c.running_cluster(tmp_path / "kubeconfig") as cluster:
        async with connect(Target(kubeconfig=str(cluster.kubeconfig))) as kube:
            app = create_app(settings, target=Target(kubeconfig=str(cluster.kubeconfig)))
            await kube.create_training(FOX)
            await cluster.emulator.patch(c.TRAINING_RESOURCE, "default", "fox", {"status": {
                "phase": "Running", "progress": {"step": 50, "maxSteps": 100, "percent": 50.0, "loss": 0.1,
                                                  "psnr": 27.5, "message": "Iteration 50/100 | Loss: 0.1000",
                                                  "updatedAt": "2026-01-01T00:00:00Z"}}}, subresource="status")
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                listing = (await http.get("/api/trainings")).json()
                (row,) = listing["items"]
                assert (row["name"], row["phase"], row["percent"], row["step"], row["psnr"]) == ("fox", "Running", 50.0, 50, 27.5)
                page = await http.get("/trainings/default/fox")
                assert page.status_code == 200 and 'data-api="../../api/trainings/default/fox"' in page.text
                assert (await http.get("/trainings/default/nope")).status_code == 404
                assert "trainings" in (await http.get("/")).text
                # Still running: status.outputs is empty; the live preview and metrics beside the
                # model are served (the model's place is found through the status/spec, not the URL).
                t = (await http.get("/api/trainings/default/fox")).json()
                assert t["outputs"] == [] and t["preview"].startswith("../../api/trainings/default/fox/files/preview")
                points = (await http.get("/api/trainings/default/fox/metrics")).json()["points"]
                assert [(p["step"], p["psnr"]) for p in points] == [(50, None), (100, 27.5)]

                await cluster.emulator.patch(c.TRAINING_RESOURCE, "default", "fox", {"status": {
                    "phase": "Succeeded", "modelPath": f"{FOX_DIR}/results.ply",
                    "outputs": [{"name": "ply", "path": f"{FOX_DIR}/results.ply", "bytes": 104},
                                {"name": "spz", "path": f"{FOX_DIR}/results.spz", "bytes": 12},
                                {"name": "preview", "path": f"{FOX_DIR}/preview.png", "bytes": 24},
                                {"name": "evil", "path": "../../etc/passwd", "bytes": 1}]}}, subresource="status")
                t = (await http.get("/api/trainings/default/fox")).json()
                assert [(o["name"], o["download"]) for o in t["outputs"]] == [("ply", "fox.ply"), ("spz", "fox.spz")]
                r = await http.get("/api/trainings/default/fox/files/spz")
                assert r.status_code == 200 and r.content == b"\x1f\x8b" + b"\0" * 10
                assert 'filename="fox.spz"' in r.headers["content-disposition"]
                assert (await http.get("/api/trainings/default/fox/files/evil")).status_code == 404
                assert (await http.get("/api/trainings/default/fox/files/splat")).status_code == 404
                assert (await http.get("/static/../web.py")).status_code == 404


async def test_file_view_shows_a_model_directory(tmp_path: pathlib.Path) -> None:
    out = _fox(tmp_path)
    (out / contract.TRAINING_LOG).parent.mkdir()
    (out / contract.TRAINING_LOG).write_text("Iteration 100/100 | Loss: 0.1000\n")
    for target, outputs in ((out, ["ply", "spz"]), (out / "results.spz", ["spz"])):
        app = web.file_app(target)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://v") as http:
            page = await http.get("/" + app.state.page)
            assert page.status_code == 200
            t = (await http.get(page.text.split('data-api="../../')[1].split('"')[0])).json()
            assert t["phase"] == "Succeeded" and [o["name"] for o in t["outputs"]] == outputs
            assert t["logs"] == ["Iteration 100/100 | Loss: 0.1000"] and t["preview"]
            assert t["progress"]["psnr"] == 27.5
