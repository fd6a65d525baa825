"""The synthetic scene generator (splatops_trainer.synthetic): layout, COLMAP read-back, geometry."""

from __future__ import annotations

import numpy as np
import PIL.Image  # before pycolmap (see tests/conftest.py)
import pycolmap
import pytest
import torch

from splatops_trainer import synthetic
from splatops_trainer.render import rasterize


def _read(scene_dir) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(str(scene_dir / "colmap" / "sparse_initial"))


def test_default_scene_reads_back_with_its_cameras_and_points(synthetic_scene, synthetic_scene_info):
    info = synthetic_scene_info
    rec = _read(synthetic_scene)
    assert rec.num_images() == 12 and rec.num_reg_images() == 12 and rec.num_cameras() == 1
    assert rec.num_points3D() == 1500 // 3 == len(info.points)
    cam = rec.cameras[1]
    assert (cam.model.name, cam.width, cam.height) == ("PINHOLE", 64, 48)
    assert np.allclose(cam.calibration_matrix(), info.Ks[0].numpy(), atol=1e-6)
    names = sorted(p.name for p in (synthetic_scene / "images").iterdir())
    assert names == info.image_names == sorted(im.name for im in rec.images.values())
    for image in rec.images.values():
        i = info.image_names.index(image.name)
        assert np.allclose(image.cam_from_world().matrix(), info.viewmats[i, :3, :4].numpy(), atol=1e-5)
    pts = np.stack([p.xyz for p in rec.points3D.values()])
    assert np.abs(pts).max() < 1.5  # noisy samples of the object (radius 1)
    assert all(p.track.length() >= 1 for p in rec.points3D.values())


def test_read_back_poses_reproject_where_the_renderer_drew(synthetic_scene, synthetic_scene_info):
    info = synthetic_scene_info
    rec = _read(synthetic_scene)
    g = info.gaussians
    with torch.no_grad():
        _, _, rinfo = rasterize(
            g.means, g.quats, g.scales, g.opacities, g.sh0, info.viewmats, info.Ks, info.width, info.height,
            sh_degree=0, backend="cpu",
        )  # fmt: skip
    for image in rec.images.values():
        i = info.image_names.index(image.name)
        pc = np.asarray(image.cam_from_world() * g.means.double().numpy())
        uv = np.asarray(rec.cameras[image.camera_id].img_from_cam(pc))[:, :2]
        assert np.allclose(uv, rinfo["means2d"][i].double().numpy(), atol=1e-3)
        # the object's centre projects onto a lit pixel of the written image; the corners are black
        img = np.asarray(PIL.Image.open(synthetic_scene / "images" / image.name))
        u, v = np.asarray(rec.cameras[1].img_from_cam(np.asarray(image.cam_from_world() * np.zeros(3))))[:2]
        assert img[int(v), int(u)].sum() > 100
        assert img[0, 0].sum() == 0 and img[-1, -1].sum() == 0


@pytest.mark.parametrize(
    ("model", "n_params", "text"),
    [("SIMPLE_RADIAL", 4, False), ("OPENCV", 8, True), ("SIMPLE_PINHOLE", 3, True), ("RADIAL", 5, False)],
)
def test_camera_models_and_text_output(tmp_path, model, n_params, text):
    scene = synthetic.make_synthetic_scene(
        tmp_path / "s", n_views=2, width=32, height=24, n_gaussians=200, camera_model=model, text_model=text
    )
    ext = ".txt" if text else ".bin"
    assert all((scene.model_dir / f"{part}{ext}").is_file() for part in ("cameras", "images", "points3D"))
    cam = _read(scene.root).cameras[1]
    assert cam.model.name == model and len(cam.params) == n_params
    assert np.allclose(cam.params, scene.camera_params)
    assert cam.is_undistorted() == (model not in synthetic._DISTORTION)


def test_distorted_images_follow_the_distortion_model(tmp_path):
    """Each distorted pixel shows what the pinhole render shows along the same (undistorted) ray."""
    kw = {"n_views": 1, "width": 48, "height": 36, "n_gaussians": 300, "seed": 5}
    pin = synthetic.make_synthetic_scene(tmp_path / "pin", **kw)
    dist = synthetic.make_synthetic_scene(tmp_path / "dist", camera_model="OPENCV", **kw)
    a = np.asarray(PIL.Image.open(pin.images_dir / pin.image_names[0])).astype(float)
    b = np.asarray(PIL.Image.open(dist.images_dir / dist.image_names[0])).astype(float)
    assert np.abs(a - b).max() >= 4  # the (small) distortion is visible
    cam = _read(dist.root).cameras[1]
    # bilinearly sample the pinhole image where each distorted pixel's ray lands (interior pixels)
    v, u = np.mgrid[4:32, 4:44]
    norm = np.asarray(cam.cam_from_img(np.stack([u.ravel() + 0.5, v.ravel() + 0.5], -1).astype(float)))
    K = pin.Ks[0].numpy()
    x = K[0, 0] * norm[:, 0] + K[0, 2] - 0.5  # continuous pixel index (centres at integers)
    y = K[1, 1] * norm[:, 1] + K[1, 2] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    sampled = (
        a[y0, x0] * (1 - fx) * (1 - fy) + a[y0, x0 + 1] * fx * (1 - fy)
        + a[y0 + 1, x0] * (1 - fx) * fy + a[y0 + 1, x0 + 1] * fx * fy
    )  # fmt: skip
    got = b[v.ravel(), u.ravel()]
    err_model = np.abs(got - sampled).mean()
    err_identity = np.abs(got - a[v.ravel(), u.ravel()]).mean()
    assert err_model < 0.5 * err_identity and np.abs(got - sampled).max() <= 2.0  # PNG rounding


def test_same_seed_same_scene_and_other_seed_differs(tmp_path):
    kw = {"n_views": 2, "width": 24, "height": 16, "n_gaussians": 100}
    s1 = synthetic.make_synthetic_scene(tmp_path / "a", seed=1, **kw)
    s2 = synthetic.make_synthetic_scene(tmp_path / "b", seed=1, **kw)
    s3 = synthetic.make_synthetic_scene(tmp_path / "c", seed=2, **kw)
    img = lambda s: np.asarray(PIL.Image.open(s.images_dir / s.image_names[0]))  # noqa: E731
    assert np.array_equal(img(s1), img(s2)) and not np.array_equal(img(s1), img(s3))
    assert torch.equal(s1.gaussians.means, s2.gaussians.means)


def test_cli_writes_a_scene(tmp_path, capsys):
    rc = synthetic.main([str(tmp_path / "cli"), "--views", "3", "--width", "32", "--height", "24", "--seed", "4"])
    assert rc == 0
    assert len(list((tmp_path / "cli" / "images").glob("*.png"))) == 3
    assert _read(tmp_path / "cli").num_images() == 3
    assert "3 views 32x24" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--views", "0"], "n_views must be at least 1"),
        (["--width", "4"], "width and height"),
        (["--gaussians", "5"], "n_gaussians"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, capsys, args, message):
    assert synthetic.main([str(tmp_path / "bad"), *args]) == 2
    assert message in capsys.readouterr().err
