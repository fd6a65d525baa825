"""The gateway never serves what is outside a scene, and lets in only whom it should.

A "volume" in tmp_path with a secret next to it (a fake service-account token): links planted on
the volume in every place the gateway reads must never give its bytes back over HTTP.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from splatops.gateway.app import create_app
from splatops.gateway.repository import InMemoryRepository
from splatops.gateway.security import RateLimiter
from splatops.gateway.settings import GatewaySettings

from .test_app import ROOT, make_scene

SECRET = b"eyJhbGciOiJSUzI1NiJ9.fake-service-account-token"


def _gateway(tmp_path: pathlib.Path, **settings: object) -> tuple[TestClient, InMemoryRepository, pathlib.Path]:
    mount = tmp_path / "mnt"
    mount.mkdir(exist_ok=True)
    config = GatewaySettings(mount_path=str(mount), claim_name="heritage", scenes_root=ROOT, **settings)
    repo = InMemoryRepository()
    return TestClient(create_app(config, repo)), repo, mount


@pytest.fixture
def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory beside the mount holding the secret, as `token` and as `gsplat/results.ply`."""
    d = tmp_path / "secrets"
    (d / "gsplat").mkdir(parents=True)
    (d / "token").write_bytes(SECRET)
    (d / "gsplat/results.ply").write_bytes(SECRET)
    (d / "colmap/sparse_initial").mkdir(parents=True)
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        (d / "colmap/sparse_initial" / f).write_bytes(b"\0")
    (d / "images").mkdir()
    (d / "images/0001.jpg").write_bytes(SECRET)
    return d


def _link_ply(scene: pathlib.Path, outside: pathlib.Path) -> None:
    (scene / "gsplat").mkdir()
    (scene / "gsplat/results.ply").symlink_to(outside / "token")


def _link_gsplat(scene: pathlib.Path, outside: pathlib.Path) -> None:
    (scene / "gsplat").symlink_to(outside / "gsplat")


def _link_scene(scene: pathlib.Path, outside: pathlib.Path) -> None:
    scene.rmdir()
    scene.symlink_to(outside)


def _link_root(scene: pathlib.Path, outside: pathlib.Path) -> None:
    root = scene.parent.parent  # <mount>/backend_data
    scene.rmdir()
    root.rename(root.with_name("real"))
    (outside / "reconstructions/mijato").mkdir(parents=True)
    (outside / "reconstructions/mijato/gsplat").symlink_to(outside / "gsplat")  # one more link
    os.link(outside / "token", outside / "reconstructions/mijato/results.ply")  # same filesystem here
    root.symlink_to(outside)


def _link_inside(scene: pathlib.Path, outside: pathlib.Path) -> None:
    (scene / "gsplat").mkdir()
    (scene / "secret-copy").write_bytes(SECRET)  # even a link that stays on the volume
    (scene / "gsplat/results.ply").symlink_to("../secret-copy")


def _fifo(scene: pathlib.Path, outside: pathlib.Path) -> None:
    (scene / "gsplat").mkdir()
    os.mkfifo(scene / "gsplat/results.ply")  # a reader would block forever


def _directory(scene: pathlib.Path, outside: pathlib.Path) -> None:
    (scene / "gsplat/results.ply").mkdir(parents=True)


PLANTS: dict[str, tuple[Callable[[pathlib.Path, pathlib.Path], None], int, str]] = {
    "results.ply -> token outside": (_link_ply, 403, "gsplat/results.ply is a symbolic link"),
    "gsplat/ -> directory outside": (_link_gsplat, 403, "mijato/gsplat is a symbolic link"),
    "scene directory -> outside": (_link_scene, 403, "reconstructions/mijato is a symbolic link"),
    "scenes root component -> outside": (_link_root, 403, "backend_data is a symbolic link"),
    "results.ply -> file inside the volume": (_link_inside, 403, "results.ply is a symbolic link"),
    "results.ply is a FIFO": (_fifo, 403, "results.ply is not a regular file"),
    "results.ply is a directory": (_directory, 403, "results.ply is not a regular file"),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_download_never_follows_a_link_or_serves_a_non_file(tmp_path, outside, plant):
    client, _, mount = _gateway(tmp_path)
    scene = make_scene(mount, "mijato", colmap=False, images=False)
    action, status, reason = PLANTS[plant]
    action(scene, outside)
    with client:
        r = client.get("/scene/mijato/gsplat/model")
    assert SECRET not in r.content
    assert (r.status_code, r.headers["content-type"]) == (status, "application/json")
    assert reason in r.json()["detail"], r.json()


def test_the_same_file_without_links_is_served(tmp_path):
    client, _, mount = _gateway(tmp_path)
    make_scene(mount, "mijato", ply=SECRET)  # the control: the bytes come back when legitimately there
    with client:
        r = client.get("/scene/mijato/gsplat/model")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, SECRET, str(len(SECRET)))


@pytest.mark.parametrize("plant, reason", [
    ("scene", "reconstructions/mijato is a symbolic link"),
    ("images", "images is a symbolic link"),
    ("colmap", "colmap is a symbolic link"),
])
def test_post_checks_follow_no_link_and_create_nothing(tmp_path, outside, plant, reason):
    client, repo, mount = _gateway(tmp_path)
    scene = make_scene(mount, "mijato", colmap=plant not in ("colmap", "scene"), images=plant not in ("images", "scene"))
    if plant == "scene":
        _link_scene(scene, outside)
    else:
        (scene / plant).symlink_to(outside / plant)
    with client:
        r = client.post("/scene/mijato/train_gsplat")
    assert r.status_code == 403 and reason in r.json()["detail"], r.json()
    assert repo.items == {}


def test_bearer_token_from_a_file_constant_time_and_rotated(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-1\n")
    client, _, mount = _gateway(tmp_path, auth_token_file=str(token))
    make_scene(mount, "mijato", ply=b"ply\n")
    with client:
        r = client.get("/scene/mijato/gsplat/model")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/scene/mijato/gsplat/model", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post("/scene/mijato/train_gsplat").status_code == 401
        ok = client.get("/scene/mijato/gsplat/model", headers={"Authorization": "Bearer s3cret-1"})
        assert (ok.status_code, ok.content) == (200, b"ply\n")
        token.write_text("s3cret-22\n")  # the Secret rotated (kubelet rewrites the mounted file)
        assert client.get("/scene/mijato/gsplat/model", headers={"Authorization": "Bearer s3cret-1"}).status_code == 401
        assert client.get("/scene/mijato/gsplat/model", headers={"Authorization": "bearer s3cret-22"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes need no token
        token.write_text("")  # emptied (or removed): nobody gets in, and the reason is given
        r = client.get("/scene/mijato/gsplat/model", headers={"Authorization": "Bearer s3cret-22"})
        assert r.status_code == 503 and "is empty" in r.json()["detail"]


def test_missing_token_file_fails_at_startup(tmp_path):
    with pytest.raises(OSError):
        _gateway(tmp_path, auth_token_file=str(tmp_path / "absent"))


def test_proxy_header_is_trusted_only_when_configured(tmp_path):
    client, _, mount = _gateway(tmp_path, auth_proxy_header="X-Forwarded-User")
    make_scene(mount, "mijato", ply=b"ply\n")
    with client:
        assert client.get("/scene/mijato/gsplat/model").status_code == 401
        assert client.get("/scene/mijato/gsplat/model", headers={"X-Forwarded-User": "ana"}).status_code == 200
    # Not configured: the header means nothing, a token is still required.
    token_only, _, _ = _gateway(tmp_path, auth_token="t0ken")
    with token_only:
        assert token_only.get("/scene/mijato/gsplat/model", headers={"X-Forwarded-User": "ana"}).status_code == 401


def test_post_rate_limit_per_client_with_retry_after(tmp_path):
    client, _, _ = _gateway(tmp_path, auth_proxy_header="X-Forwarded-User", post_rate_per_minute=1, post_burst=2)
    ana, bo = {"X-Forwarded-User": "ana"}, {"X-Forwarded-User": "bo"}
    with client:
        # The scene does not exist: each POST is a cheap 404, and still counts.
        assert [client.post("/scene/nope/train_gsplat", headers=ana).status_code for _ in range(2)] == [404, 404]
        limited = client.post("/scene/nope/train_gsplat", headers=ana)
        assert limited.status_code == 429 and "too many training requests" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.post("/scene/nope/train_gsplat", headers=bo).status_code == 404  # another client
        assert client.get("/scene/nope/train_gsplat/status", headers=ana).status_code == 404  # GETs are not limited


def test_token_bucket_refills_at_the_rate():
    now = [1000.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)  # 6/min: one token every 10 s
    now[0] += 10
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    assert RateLimiter(per_minute=0, burst=1).take("a") == 0.0  # 0: no limit
