"""The gateway when the Kubernetes API is gone or slow (JSON 503, probes), and a download while a
new run of the scene trains (409, or the previous model with headers that say so)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from splatops.client.kube import Target
from splatops.gateway.app import create_app
from splatops.gateway.repository import InMemoryRepository
from splatops.gateway.settings import GatewaySettings
from splatops.local import cluster as c

from .test_app import ROOT, env, make_scene  # noqa: F401  (env: the in-memory gateway fixture)


def _settings(mount: pathlib.Path, **kw: object) -> GatewaySettings:
    return GatewaySettings(mount_path=str(mount), claim_name="heritage", scenes_root=ROOT, **kw)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_api_gives_json_503_and_probes_tell(tmp_path):
    mount = tmp_path / "mnt"
    make_scene(mount, "fox", ply=b"ply\n")
    kubeconfig = tmp_path / "kubeconfig"
    c.write_kubeconfig(kubeconfig, f"http://127.0.0.1:{_closed_port()}", "default")
    app = create_app(_settings(mount), target=Target(kubeconfig=str(kubeconfig)))
    with TestClient(app) as client:
        for method, url in [("POST", "/scene/fox/train_gsplat"), ("GET", "/scene/fox/train_gsplat/status"),
                            ("GET", "/scene/fox/gsplat/model")]:
            r = client.request(method, url)
            assert (r.status_code, r.headers["content-type"]) == (503, "application/json"), (url, r.text)
            assert "cannot reach the Kubernetes API at http://127.0.0.1" in r.json()["detail"]
        assert client.get("/healthz").json() == {"status": "ok"}  # alive: a restart would not help
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "cannot reach the Kubernetes API" in ready.json()["detail"]


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and never answers (an API server behind a black hole)."""
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_silent_api_is_a_503_after_the_timeout(tmp_path):
    mount = tmp_path / "mnt"
    make_scene(mount, "fox")
    async with silent_server() as url:
        kubeconfig = tmp_path / "kubeconfig"
        c.write_kubeconfig(kubeconfig, url, "default")
        app = create_app(_settings(mount, api_timeout=0.5), target=Target(kubeconfig=str(kubeconfig)))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                r = await asyncio.wait_for(http.get("/scene/fox/train_gsplat/status"), 30)
                assert r.status_code == 503 and "did not answer within 0.5 s" in r.json()["detail"]


async def test_readiness_against_the_embedded_api_server(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    async with c.running_cluster(tmp_path / "kubeconfig") as cluster:
        app = create_app(_settings(mount), target=Target(kubeconfig=str(cluster.kubeconfig)))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                assert (await http.get("/readyz")).json() == {"status": "ok"}


class CountingRepository(InMemoryRepository):
    def __init__(self) -> None:
        super().__init__()
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1


class BrokenRepository(InMemoryRepository):
    async def runs(self, scene_id: str) -> list[dict[str, Any]]:
        raise KeyError("a bug")


def test_an_unexpected_error_is_still_json(tmp_path):
    app = create_app(_settings(tmp_path), BrokenRepository())
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/scene/fox/train_gsplat/status")
    assert (r.status_code, r.headers["content-type"]) == (500, "application/json")
    assert "internal error of the gateway (KeyError) on GET /scene/fox/train_gsplat/status" in r.json()["detail"]


@pytest.mark.parametrize("ttl, pings", [(3600, 1), (0, 3)])
def test_readiness_is_cached_for_ready_cache_seconds(tmp_path, ttl, pings):
    repo = CountingRepository()
    with TestClient(create_app(_settings(tmp_path, ready_cache_seconds=ttl), repo)) as client:
        assert [client.get("/readyz").status_code for _ in range(3)] == [200] * 3
    assert repo.pings == pings


@pytest.mark.parametrize("phase, previous, status, served, header", [
    ("Running", False, 409, False, "processing"),
    ("Pending", False, 409, False, "processing"),
    ("Running", True, 200, True, "processing"),
    ("Succeeded", False, 200, True, "complete"),
    ("Failed", False, 200, True, "failed"),  # a failed run keeps the earlier results.ply
])
def test_download_while_a_new_run_trains(env, phase, previous, status, served, header):  # noqa: F811
    client, repo, mount = env
    old = b"ply\n" + b"\1" * 100  # the first run's model
    make_scene(mount, "mijato", ply=old)
    assert client.post("/scene/mijato/train_gsplat").status_code == 200
    repo.items["mijato"]["status"] = {"phase": "Succeeded"}
    assert client.post("/scene/mijato/train_gsplat", params={"max_steps": 7000}).status_code == 200
    repo.items["mijato-2"]["status"] = {"phase": phase, "progress": {"message": "Iteration 100/7000 | Loss: 0.1"}}
    r = client.get("/scene/mijato/gsplat/model", params={"previous": "true"} if previous else {})
    assert r.status_code == status
    assert (r.headers["x-splatops-training"], r.headers["x-splatops-training-status"]) == ("mijato-2", header)
    if served:
        assert r.content == old
    else:
        assert r.headers["content-type"] == "application/json" and old not in r.content
        detail = r.json()["detail"]
        assert "training in progress for scene mijato (mijato-2" in detail and "?previous=true" in detail
