"""The chart's gateway Role against what the real gateway does: every API call of a POST, a status
poll, a download and a readiness probe (recorded by the emulator, with the settings the chart
gives it) is granted, in the gateway's namespace only, and every granted rule is used."""

from __future__ import annotations

import httpx
import pytest

from helm_env import one
from splatops.client.kube import Target
from splatops.gateway.app import create_app
from splatops.gateway.settings import GatewaySettings
from splatops.local import cluster as c
from test_rbac_runtime import RecordingEmulator, _rules

pytestmark = pytest.mark.timeout(120)


async def test_the_chart_grants_exactly_what_the_gateway_calls(renders, tmp_path, monkeypatch) -> None:
    objects = renders.objects("gateway")
    container = one(objects, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"].removeprefix("SPLATOPS_GATEWAY_").lower(): e["value"] for e in container["env"]}
    mount = tmp_path / "mnt"
    scene = mount / env["scenes_root"] / "fox"
    (scene / "colmap/sparse_initial").mkdir(parents=True)
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        (scene / "colmap/sparse_initial" / f).write_bytes(b"\0")
    (scene / "images").mkdir()
    (scene / "images/0001.jpg").write_bytes(b"\xff\xd8")
    settings = GatewaySettings(**{**env, "mount_path": str(mount)})
    role = one(objects, "Role", "-gateway")
    namespace = role["metadata"]["namespace"]
    monkeypatch.setattr(c, "SplatopsEmulator", RecordingEmulator)
    async with c.running_cluster(tmp_path / "kubeconfig", namespace=namespace) as cluster:
        emu: RecordingEmulator = cluster.emulator  # type: ignore[assignment]
        app = create_app(settings, target=Target(kubeconfig=str(cluster.kubeconfig)))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                assert (await http.get("/readyz")).status_code == 200
                assert (await http.post("/scene/fox/train_gsplat")).status_code == 200
                assert (await http.get("/scene/fox/train_gsplat/status")).json()["status"] == "processing"
                assert (await http.get("/scene/fox/gsplat/model")).status_code == 409
                # The web page's JSON: the list, one training with its Events and last log lines.
                listed = (await http.get("/api/trainings")).json()
                assert listed["items"], listed
                item = listed["items"][0]
                assert (await http.get(f"/api/trainings/{namespace}/{item['name']}")).status_code == 200
        calls = set(emu.calls)
    assert calls, "the gateway made no API call"
    assert {ns for ns, *_ in calls} == {namespace}, f"calls outside the gateway's namespace: {sorted(calls, key=str)}"
    used = {call[1:] for call in calls}
    # The web page reads a trainer pod's log only when the training has a pod; this scenario has none
    # (tests/gateway/test_web.py reads one).
    not_exercised = {("", "pods/log", "get")}
    assert used == _rules(role) - not_exercised, f"used {sorted(used)} vs granted {sorted(_rules(role))}"
