"""Scene checks and loading: messages and reasons of every bad input, models, cameras, cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from splatops import contract
from splatops_trainer import scene as scene_mod
from splatops_trainer.config import TrainerConfig
from splatops_trainer.errors import TrainerError

W, H = 40, 30


def make_scene(
    root: Path,
    *,
    model: str = "PINHOLE",
    params: list[float] | None = None,
    n: int = 6,
    fmt: str = "bin",
    legacy_text: bool = True,
) -> Path:
    """A tiny COLMAP scene: n cameras on a line looking down +z at random points."""
    rng = np.random.default_rng(0)
    defaults = {
        "PINHOLE": [36.0, 35.0, W / 2, H / 2],
        "SIMPLE_PINHOLE": [36.0, W / 2, H / 2],
        "SIMPLE_RADIAL": [36.0, W / 2, H / 2, 0.08],
        "RADIAL": [36.0, W / 2, H / 2, 0.05, -0.01],
        "OPENCV": [36.0, 35.0, W / 2, H / 2, 0.06, -0.01, 0.001, 0.0],
        "OPENCV_FISHEYE": [36.0, 35.0, W / 2, H / 2, 0.01, 0.0, 0.0, 0.0],
    }
    recon = pycolmap.Reconstruction()
    recon.add_camera_with_trivial_rig(
        pycolmap.Camera(camera_id=1, model=model, width=W, height=H, params=params or defaults[model])
    )
    images = root / "images"
    images.mkdir(parents=True)
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        name = f"img_{i:03d}.png"
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([-0.2 * i, 0.0, 0.0]))
        recon.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=i + 1), pose)
        rgb = np.stack([(xx * 6 + i * 10) % 256, (yy * 8) % 256, np.full_like(xx, 40 * i % 256)], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(images / name)
    for _ in range(20):
        recon.add_point3D(rng.normal(size=3) + [0, 0, 4], pycolmap.Track(), rng.integers(0, 255, 3).astype(np.uint8))
    model_dir = root / contract.COLMAP_DIR
    model_dir.mkdir(parents=True)
    if fmt == "bin":
        recon.write_binary(str(model_dir))
    else:
        recon.write_text(str(model_dir))
    if legacy_text or fmt == "bin":  # the classic three-file model the original pipeline wrote
        for extra in ("rigs", "frames"):
            for ext in (".bin", ".txt"):
                (model_dir / f"{extra}{ext}").unlink(missing_ok=True)
    return root


def cfg_for(root: Path, **kw: object) -> TrainerConfig:
    return TrainerConfig(scene_dir=root, termination_log=root / "termination-log", metrics_port=0, **kw)


@pytest.mark.parametrize(("fmt", "legacy"), [("bin", True), ("txt", True), ("txt", False)])
def test_binary_and_text_models_load(tmp_path: Path, fmt: str, legacy: bool) -> None:
    root = make_scene(tmp_path / "s", fmt=fmt, n=6, legacy_text=legacy)
    data = scene_mod.load_scene(cfg_for(root, test_every=3))
    assert [v.name for v in data.test] == ["img_000.png", "img_003.png"]
    assert [v.name for v in data.train] == ["img_001.png", "img_002.png", "img_004.png", "img_005.png"]
    view = data.train[0]
    assert view.image.shape == (H, W, 3) and view.image.dtype.is_floating_point is False
    assert view.K.tolist() == [[36.0, 0.0, W / 2], [0.0, 35.0, H / 2], [0.0, 0.0, 1.0]]
    # world-to-camera of a camera at x = +0.2 (pose t = -0.2): a translation only
    assert view.viewmat[0, 3].item() == pytest.approx(-0.2) and view.viewmat[3].tolist() == [0, 0, 0, 1]
    assert data.points.shape == (20, 3) and float(data.colors.max()) <= 1.0
    # centres at x = 0 .. 1.0: mean 0.5, radius 0.5, times 1.1
    assert data.scene_scale == pytest.approx(0.55)


def test_sparse_link_created_relative(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    scene_mod.check_scene(cfg_for(root))
    link = root / "sparse" / "0"
    assert link.is_symlink() and os.readlink(link) == "../colmap/sparse_initial"
    assert scene_mod.has_model(link)


@pytest.mark.parametrize("kind", ["directory", "dangling_link"])
def test_existing_sparse_is_never_replaced(tmp_path: Path, kind: str) -> None:
    root = make_scene(tmp_path / "s")
    link = root / "sparse" / "0"
    link.parent.mkdir()
    if kind == "directory":
        link.mkdir()
        (link / "marker").write_text("mine")
    else:
        os.symlink("../nowhere", link)
    scene_mod.check_scene(cfg_for(root))
    if kind == "directory":
        assert not link.is_symlink() and (link / "marker").read_text() == "mine"
    else:
        assert os.readlink(link) == "../nowhere"


def test_model_only_in_sparse_0_is_used(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    (root / "sparse").mkdir()
    shutil.move(root / contract.COLMAP_DIR, root / "sparse" / "0")
    check = scene_mod.check_scene(cfg_for(root))
    assert check.model_dir == root / "sparse" / "0"


def test_own_sparse_0_wins_over_sparse_initial(tmp_path: Path) -> None:
    """Both present: gsplat's parser (the original pipeline) read sparse/0, so the trainer does too;
    the user's sparse/0 is neither replaced nor ignored."""
    root = make_scene(tmp_path / "s", n=6)
    own = make_scene(tmp_path / "own", n=3)  # a different model: 3 registered images
    (root / "sparse").mkdir()
    shutil.copytree(own / contract.COLMAP_DIR, root / "sparse" / "0")
    before = {p.name: p.read_bytes() for p in (root / "sparse" / "0").iterdir()}
    check = scene_mod.check_scene(cfg_for(root))
    assert check.model_dir == root / "sparse" / "0"
    assert check.image_names == ("img_000.png", "img_001.png", "img_002.png")
    assert not (root / "sparse" / "0").is_symlink()
    assert {p.name: p.read_bytes() for p in (root / "sparse" / "0").iterdir()} == before


def test_our_link_is_what_is_read(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    check = scene_mod.check_scene(cfg_for(root))
    assert check.model_dir == root / "sparse" / "0" and (root / "sparse" / "0").is_symlink()
    assert check.model_dir.resolve() == (root / contract.COLMAP_DIR).resolve()


def test_sparse_0_without_a_model_falls_back_to_sparse_initial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_scene(tmp_path / "s")
    (root / "sparse" / "0").mkdir(parents=True)
    check = scene_mod.check_scene(cfg_for(root))
    assert check.model_dir == root / contract.COLMAP_DIR
    assert "holds no COLMAP model" in caplog.text


# --- scene fingerprint (checkpoint resume key) -----------------------------------------------------


def _fingerprint(root: Path) -> str:
    return scene_mod.check_scene(cfg_for(root)).fingerprint


def test_fingerprint_is_stable_and_ignores_unused_files(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    first = _fingerprint(root)
    assert len(first) == 64 and _fingerprint(root) == first
    (root / "images" / "notes.txt").write_text("not used")
    (root / "gsplat").mkdir()
    (root / "gsplat" / "results.ply").write_bytes(b"output, not input")
    assert _fingerprint(root) == first
    assert scene_mod.load_scene(cfg_for(root)).fingerprint == first


@pytest.mark.parametrize("change", ["model_bytes", "image_rewritten", "image_touched", "image_unregistered"])
def test_fingerprint_changes_with_the_scene(tmp_path: Path, change: str) -> None:
    root = make_scene(tmp_path / "s")
    first = _fingerprint(root)
    img = root / "images" / "img_001.png"
    if change == "model_bytes":  # same images, another model (e.g. re-run COLMAP)
        recon = pycolmap.Reconstruction(str(root / contract.COLMAP_DIR))
        recon.cameras[1].params = [40.0, 39.0, W / 2, H / 2]
        recon.write_binary(str(root / contract.COLMAP_DIR))
        for extra in ("rigs.bin", "frames.bin"):  # keep the classic three files: only cameras.bin differs
            (root / contract.COLMAP_DIR / extra).unlink(missing_ok=True)
        assert pycolmap.Reconstruction(str(root / contract.COLMAP_DIR)).cameras[1].params[0] == 40.0
    elif change == "image_rewritten":  # same name and size, new pixels (and mtime)
        data = np.asarray(Image.open(img)).copy()
        Image.fromarray(255 - data).save(img)
        os.utime(img, ns=(10**18, 10**18))
    elif change == "image_touched":
        st = img.stat()
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    else:  # a model with fewer images: the used images change
        shutil.rmtree(root / contract.COLMAP_DIR)
        shutil.copytree(make_scene(tmp_path / "fewer", n=5) / contract.COLMAP_DIR, root / contract.COLMAP_DIR)
    assert _fingerprint(root) != first


# --- image files -------------------------------------------------------------------------------------


def test_garbage_image_is_refused_before_loading(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    (root / "images" / "img_003.png").write_bytes(b"this is not a PNG at all")
    with pytest.raises(TrainerError) as info:
        scene_mod.check_scene(cfg_for(root))
    assert info.value.reason is contract.Reason.INVALID_IMAGE and info.value.exit_code == 2
    assert str(root / "images" / "img_003.png") in info.value.message
    assert "re-upload" in info.value.message


def test_empty_image_file_is_refused(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    (root / "images" / "img_000.png").write_bytes(b"")
    with pytest.raises(TrainerError, match=r"img_000\.png") as info:
        scene_mod.check_scene(cfg_for(root))
    assert info.value.reason is contract.Reason.INVALID_IMAGE


@pytest.mark.parametrize("factor", [1, 2])
def test_image_truncated_past_its_header_fails_at_load_with_its_name(tmp_path: Path, factor: int) -> None:
    root = make_scene(tmp_path / "s")
    img = root / "images" / "img_004.png"
    img.write_bytes(img.read_bytes()[:60])  # the header (IHDR) survives, the pixels do not
    cfg = cfg_for(root, data_factor=factor)
    check = scene_mod.check_scene(cfg)  # a header check cannot see it: cheap by design
    with pytest.raises(TrainerError) as info:
        scene_mod.load_scene(cfg, check)
    assert info.value.reason is contract.Reason.INVALID_IMAGE and info.value.exit_code == 2
    assert str(img) in info.value.message


def _no_colmap(root: Path) -> None:
    shutil.rmtree(root / "colmap")


def _no_images_dir(root: Path) -> None:
    shutil.rmtree(root / "images")


def _empty_images(root: Path) -> None:
    for p in (root / "images").iterdir():
        p.unlink()
    (root / "images" / "notes.txt").write_text("not an image")


def _missing_two(root: Path) -> None:
    (root / "images" / "img_002.png").unlink()
    (root / "images" / "img_004.png").unlink()


def _corrupt_model(root: Path) -> None:
    path = root / contract.COLMAP_DIR / "images.bin"
    path.write_bytes(path.read_bytes()[:37])


def _garbage_text_model(root: Path) -> None:
    d = root / contract.COLMAP_DIR
    for p in d.iterdir():
        p.unlink()
    for name in ("cameras", "images", "points3D"):
        (d / f"{name}.txt").write_text("1 NOT_A_MODEL x y z\n")


BAD_INPUTS = [
    (_no_colmap, contract.Reason.COLMAP_NOT_FOUND, contract.MSG_COLMAP_NOT_FOUND),
    (_no_images_dir, contract.Reason.NO_IMAGES, contract.MSG_NO_IMAGES),
    (_empty_images, contract.Reason.NO_IMAGES, contract.MSG_NO_IMAGES),
    (_missing_two, contract.Reason.MISSING_IMAGES, "2 of 6 images named in the COLMAP model are missing"),
    (_corrupt_model, contract.Reason.INVALID_MODEL, "could not be read"),
    (_garbage_text_model, contract.Reason.INVALID_MODEL, "could not be read"),
]


@pytest.mark.parametrize(("breaker", "reason", "words"), BAD_INPUTS, ids=[b[0].__name__ for b in BAD_INPUTS])
def test_bad_inputs(tmp_path: Path, breaker, reason: contract.Reason, words: str) -> None:
    root = make_scene(tmp_path / "s")
    breaker(root)
    with pytest.raises(TrainerError) as info:
        scene_mod.check_scene(cfg_for(root))
    assert info.value.reason is reason
    assert words in info.value.message
    assert info.value.exit_code == 2


def test_missing_images_are_named(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s")
    _missing_two(root)
    with pytest.raises(TrainerError, match=r"img_002\.png, img_004\.png"):
        scene_mod.check_scene(cfg_for(root))


def test_unsupported_camera_is_refused_clearly(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s", model="OPENCV_FISHEYE")
    with pytest.raises(TrainerError) as info:
        scene_mod.check_scene(cfg_for(root))
    assert info.value.reason is contract.Reason.UNSUPPORTED_CAMERA
    assert "OPENCV_FISHEYE" in info.value.message and "image_undistorter" in info.value.message


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "RADIAL", "OPENCV"])
@pytest.mark.parametrize("factor", [1, 2])
def test_distorted_cameras_are_undistorted(tmp_path: Path, model: str, factor: int) -> None:
    root = make_scene(tmp_path / "s", model=model, n=3)
    data = scene_mod.load_scene(cfg_for(root, data_factor=factor, test_every=0))
    recon = pycolmap.Reconstruction(str(root / contract.COLMAP_DIR))
    expected = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), recon.cameras[1])
    ew, eh = round(expected.width / factor), round(expected.height / factor)
    view = data.train[0]
    assert (view.width, view.height) == (ew, eh)
    k = expected.calibration_matrix()
    assert view.K[0, 0].item() == pytest.approx(k[0, 0] * ew / expected.width, rel=1e-5)
    assert view.K[1, 2].item() == pytest.approx(k[1, 2] * eh / expected.height, rel=1e-5)
    assert (scene_mod.cache_dir(cfg_for(root, data_factor=factor)) / "manifest.json").is_file()


def test_zero_distortion_needs_no_undistortion(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "s", model="SIMPLE_RADIAL", params=[36.0, W / 2, H / 2, 0.0], n=2)
    data = scene_mod.load_scene(cfg_for(root, test_every=0))
    assert (data.train[0].width, data.train[0].height) == (W, H)
    assert not (root / "gsplat" / "cache").exists()


def test_downscale_is_cached_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_scene(tmp_path / "s", n=4)
    cfg = cfg_for(root, data_factor=2, test_every=0)
    first = scene_mod.load_scene(cfg)
    assert first.train[0].image.shape == (H // 2, W // 2, 3)
    assert first.train[0].K[0, 0].item() == pytest.approx(18.0)
    cached = sorted(p.name for p in scene_mod.cache_dir(cfg).glob("*.png"))
    assert cached == [f"img_{i:03d}.png.png" for i in range(4)]

    calls: list[Path] = []
    real = scene_mod.process_image
    monkeypatch.setattr(scene_mod, "process_image", lambda p, c, f: calls.append(p) or real(p, c, f))
    second = scene_mod.load_scene(cfg)
    assert calls == []  # everything came from the cache
    assert all((a.image == b.image).all() for a, b in zip(first.train, second.train, strict=True))

    # A changed source image is rebuilt, the others are still reused.
    src = root / "images" / "img_001.png"
    Image.new("RGB", (W, H), (255, 0, 0)).save(src)
    os.utime(src, ns=(1, 1))
    third = scene_mod.load_scene(cfg)
    assert [p.name for p in calls] == ["img_001.png"]
    assert third.train[1].image[..., 0].float().mean() > 250


@pytest.mark.parametrize(
    ("n", "every", "test_idx"),
    [(10, 8, [0, 8]), (10, 0, []), (1, 8, []), (5, 2, [0, 2, 4]), (3, 10, [0])],
)
def test_split(n: int, every: int, test_idx: list[int]) -> None:
    names = [f"{i:02d}.jpg" for i in reversed(range(n))]  # unsorted input: the split sorts
    train, test = scene_mod.split_names(names, every)
    assert test == [f"{i:02d}.jpg" for i in test_idx]
    assert sorted(train + test) == sorted(names) and not set(train) & set(test)


@pytest.mark.parametrize(
    ("centres", "expected"),
    [([[0, 0, 0], [2, 0, 0]], 1.1), ([[1, 1, 1]], 1.0), ([[0, 0, 0], [0, 3, 0], [0, 0, 0]], 1.1 * 2)],
)
def test_scene_scale(centres: list[list[float]], expected: float) -> None:
    assert scene_mod.scene_scale(np.asarray(centres, dtype=float)) == pytest.approx(expected)


# --- against the synthetic scene's ground truth ----------------------------------------------------


def _psnr(a, b) -> float:
    import math

    mse = float(((a - b) ** 2)[2:-2, 2:-2].mean())  # borders: resampling edge effects
    return -10.0 * math.log10(max(mse, 1e-12))


@pytest.mark.parametrize("model", ["SIMPLE_RADIAL", "OPENCV"])
def test_undistortion_recovers_the_pinhole_view(tmp_path: Path, model: str) -> None:
    """The undistorted image matches a pinhole render of the true Gaussians at the loaded K
    better than the raw distorted image matches one at the original K."""
    import torch

    from splatops_trainer import synthetic

    syn = synthetic.make_synthetic_scene(tmp_path / "s", camera_model=model, n_views=2)
    view = scene_mod.load_scene(cfg_for(syn.root, test_every=0)).train[0]
    assert (view.width, view.height) != (syn.width, syn.height)  # cropped to the valid region
    ref = synthetic.render_views(syn.gaussians, view.viewmat[None], view.K, view.width, view.height)[0]
    undistorted = _psnr(ref, view.image.float() / 255)
    raw = torch.from_numpy(np.array(Image.open(syn.images_dir / view.name).convert("RGB"))).float() / 255
    pinhole = synthetic.render_views(syn.gaussians, view.viewmat[None], syn.Ks[0], syn.width, syn.height)[0]
    assert undistorted > 30 and undistorted > _psnr(pinhole, raw) + 2


def test_downscaled_intrinsics_match_the_image(tmp_path: Path) -> None:
    """A 2x-supersampled render at the scaled K, box-filtered, equals the downscaled image."""
    import torch.nn.functional as F

    from splatops_trainer import synthetic

    syn = synthetic.make_synthetic_scene(tmp_path / "s", n_views=1)
    view = scene_mod.load_scene(cfg_for(syn.root, test_every=0, data_factor=2)).train[0]
    assert (view.width, view.height) == (syn.width // 2, syn.height // 2)
    k2 = view.K.clone()
    k2[:2] *= 2
    hi = synthetic.render_views(syn.gaussians, view.viewmat[None], k2, view.width * 2, view.height * 2)[0]
    lo = F.avg_pool2d(hi.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    assert _psnr(lo, view.image.float() / 255) > 38  # half a pixel off gives ~29 dB
