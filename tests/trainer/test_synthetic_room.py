"""The benchmark room scene (splatops_trainer.synthetic_room): loads in the trainer, its specular
highlights depend on the view, its COLMAP model agrees with its images, it is a function of the
seed, and a short CPU training learns it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image  # before pycolmap (see tests/conftest.py)
import pycolmap
import pytest
import torch
from splatops_trainer import synthetic_room as room_mod
from splatops_trainer.config import TrainerConfig
from splatops_trainer.scene import load_scene
from splatops_trainer.train import train

CPU = torch.device("cpu")
SIZE = {"n_views": 16, "width": 96, "height": 54, "n_points": 2000}


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> room_mod.RoomScene:
    return room_mod.make_room_scene(tmp_path_factory.mktemp("room") / "scene", seed=7, device="cpu", **SIZE)


def _cfg(scene_dir: Path, out: Path, **kw: object) -> TrainerConfig:
    return TrainerConfig(scene_dir=scene_dir, output_dir=out, device="cpu", metrics_port=0, **kw)  # type: ignore[arg-type]


def test_the_trainer_loads_it_with_the_reference_layout(room: room_mod.RoomScene, tmp_path: Path) -> None:
    assert (room.root / "sparse" / "0" / "points3D.bin").is_file()  # what gsplat's reference parser reads
    data = load_scene(_cfg(room.root, tmp_path, test_every=8))
    assert len(data.train) == 14 and len(data.test) == 2
    assert data.train[0].image.shape == (54, 96, 3)
    assert torch.allclose(data.train[0].K, room.K)
    assert len(data.points) == len(room.points) > 1000
    rec = pycolmap.Reconstruction(str(room.root / "sparse" / "0"))
    cam = rec.cameras[1]
    assert (rec.num_cameras(), cam.model.name, rec.num_reg_images()) == (1, "PINHOLE", 16)
    assert all(p.track.length() >= 2 for p in rec.points3D.values())


def _views_of_the_same_points(scene: room_mod.Room, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor):
    """Surface points seen from eye `a` around `target`, those also seen unoccluded from `b`, and
    their colours from a and from b."""
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(target + 0.25 * torch.randn(4000, 3, generator=gen) - a, dim=1)
    hits = scene.cast(a, d)
    to_b = hits.points - b
    dist = to_b.norm(dim=1)
    seen_b = scene.cast(b, to_b / dist[:, None]).t >= dist * (1 - 1e-4)
    return hits, seen_b, scene.shade(hits, a), scene.shade(hits, b)


def test_glossy_surfaces_change_colour_with_the_view_and_diffuse_ones_do_not() -> None:
    scene = room_mod.Room(seed=0, device=CPU)
    centre, radius, _ = room_mod.SPHERES[0]
    eye_a, eye_b = torch.tensor([2.5, 0.0, 1.45]), torch.tensor([0.0, -1.9, 1.6])
    hits, both, col_a, col_b = _views_of_the_same_points(scene, eye_a, eye_b, torch.tensor(centre))
    diff = (col_a - col_b).abs().max(dim=1).values
    glossy = torch.tensor([int(m) in room_mod.GLOSSY for m in hits.material]) & both
    sphere = glossy & ((hits.points - torch.tensor(centre)).norm(dim=1) - radius).abs().lt(1e-3)
    assert sphere.sum() > 50 and diff[sphere].max() > 0.3  # a highlight seen from one side only
    hits, both, col_a, col_b = _views_of_the_same_points(scene, eye_a, eye_b, torch.tensor([-4.0, 0.0, 1.5]))
    wall = both & (hits.material == 0)  # the -x wall: diffuse
    assert wall.sum() > 1000 and (col_a - col_b)[wall].abs().max() < 1e-5


def test_sparse_points_project_onto_pixels_of_their_colour(room: room_mod.RoomScene) -> None:
    rec = pycolmap.Reconstruction(str(room.root / "sparse" / "0"))
    cam = rec.cameras[1]
    images = {im.image_id: im for im in rec.images.values()}
    pixels = {i: np.asarray(PIL.Image.open(room.root / "images" / im.name), dtype=float) for i, im in images.items()}
    errs, shifted = [], []
    for p in rec.points3D.values():
        for el in p.track.elements:
            im = images[el.image_id]
            u, v = np.asarray(cam.img_from_cam(np.asarray(im.cam_from_world() * p.xyz)[None]))[0, :2]
            assert np.allclose(im.points2D[el.point2D_idx].xy, (u, v), atol=1e-3)  # the keypoint is the projection
            img = pixels[el.image_id]
            errs.append(np.abs(img[int(v), int(u)] - p.color).mean())
            shifted.append(np.abs(img[(int(v) + 4) % img.shape[0], (int(u) + 4) % img.shape[1]] - p.color).mean())
    errs, shifted = np.asarray(errs), np.asarray(shifted)
    assert len(errs) > 5000
    # Texture detail finer than a pixel at this size, JPEG, and highlights (the colour is the
    # sampling view's) make single observations differ; a wrong pose or a point off the surface
    # would make them no closer than pixels 4 px away.
    assert np.median(errs) < 0.5 * np.median(shifted) and np.mean(errs < 30) > 0.8, (
        np.median(errs), np.median(shifted), np.mean(errs < 30))


def test_the_seed_decides_the_scene(tmp_path: Path) -> None:
    kw = {"n_views": 2, "width": 32, "height": 18, "n_points": 100, "device": "cpu"}
    s1 = room_mod.make_room_scene(tmp_path / "a", seed=1, **kw)
    s2 = room_mod.make_room_scene(tmp_path / "b", seed=1, **kw)
    s3 = room_mod.make_room_scene(tmp_path / "c", seed=2, **kw)
    files = lambda s: [f.read_bytes() for d in ("images", "sparse/0") for f in sorted((s.root / d).iterdir())]
    assert files(s1) == files(s2)
    assert files(s1)[0] != files(s3)[0] and not np.array_equal(s1.points, s3.points)


def test_cli_writes_a_scene_and_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert room_mod.main([str(tmp_path / "bad"), "--views", "1"]) == 2
    assert "need >= 2 views" in capsys.readouterr().err
    assert room_mod.main([str(tmp_path / "s"), "--views", "3", "--width", "32", "--height", "18", "--points", "60",
                          "--device", "cpu"]) == 0
    assert len(list((tmp_path / "s" / "images").glob("*.jpg"))) == 3
    assert "3 views 32x18" in capsys.readouterr().out
    assert room_mod.main([str(tmp_path / "s"), "--views", "2", "--width", "32", "--height", "18", "--points", "60",
                          "--device", "cpu"]) == 0  # again, shorter: no view of the earlier walk is left behind
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir()) == ["frame_0000.jpg", "frame_0001.jpg"]


@pytest.mark.slow
def test_a_short_cpu_training_learns_it(tmp_path: Path) -> None:
    # MCMC: a fixed Gaussian budget keeps 60 CPU steps at a few seconds; the default strategy's
    # schedule, scaled down to a few dozen steps, resets opacities too close to the end to judge.
    scene = room_mod.make_room_scene(tmp_path / "scene", n_views=16, width=64, height=36, n_points=800, seed=7,
                                     device="cpu")
    cfg = _cfg(scene.root, tmp_path / "out", test_every=8, max_steps=60, eval_every=0, checkpoint_every=0,
               progress_every=20, sh_degree=1, sh_degree_interval=30, seed=1, strategy="mcmc", cap_max=1000)
    data = load_scene(cfg)

    class Hooks:
        def on_progress(self, p: object) -> None:
            pass

        def on_eval(self, p: object) -> None:
            pass

    untrained = train(cfg.replace(max_steps=1, output_dir=tmp_path / "one"), data, Hooks(), CPU)
    out = train(cfg, data, Hooks(), CPU)
    assert out.psnr is not None and untrained.psnr is not None
    assert out.psnr > untrained.psnr + 3.0, (untrained.psnr, out.psnr)  # on the held-out views
