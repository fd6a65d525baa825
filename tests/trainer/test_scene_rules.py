"""Scenes that used to train "successfully" into garbage, and the symbolic-link rule for images/.

Each bad scene is the synthetic scene (splatops_trainer.synthetic, via conftest's `scene_copy`)
with one thing broken; it must be refused before the GPU is touched, with exit code 2 and a
message naming the image or camera, or (a 16-bit PNG) loaded correctly.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from splatops import contract
from splatops_trainer import scene as scene_mod
from splatops_trainer.config import TrainerConfig
from splatops_trainer.errors import TrainerError


def cfg_for(root: Path, **kw: object) -> TrainerConfig:
    return TrainerConfig(scene_dir=root, termination_log=root.parent / "termination-log", metrics_port=0, **kw)


def _edit_model(root: Path, edit) -> None:  # noqa: ANN001
    model_dir = root / contract.COLMAP_DIR
    recon = pycolmap.Reconstruction(str(model_dir))
    edit(recon)
    recon.write_binary(str(model_dir))


def _image(root: Path, name: str) -> Path:
    return root / contract.IMAGES_DIR / name


def _rotate_90(root: Path) -> None:
    path = _image(root, "view_003.png")
    with Image.open(path) as img:
        img.transpose(Image.Transpose.ROTATE_90).save(path)


def _other_aspect(root: Path) -> None:
    path = _image(root, "view_004.png")
    with Image.open(path) as img:
        img.resize((64, 40)).save(path)


def _focal_zero(root: Path) -> None:
    def edit(recon: pycolmap.Reconstruction) -> None:
        cam = recon.cameras[1]
        recon.cameras[1] = pycolmap.Camera(
            camera_id=1, model=cam.model.name, width=cam.width, height=cam.height,
            params=[0.0, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y],
        )

    _edit_model(root, edit)


def _zero_quaternion(root: Path) -> None:
    def edit(recon: pycolmap.Reconstruction) -> None:
        image = next(i for i in recon.images.values() if i.name == "view_002.png")
        frame = recon.frames[image.frame_id]
        frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(np.zeros(4)), frame.rig_from_world.translation)

    _edit_model(root, edit)


def _duplicate_name(root: Path) -> None:
    def edit(recon: pycolmap.Reconstruction) -> None:
        original = next(i for i in recon.images.values() if i.name == "view_005.png")
        twin = pycolmap.Image(name="view_005.png", camera_id=original.camera_id, image_id=99)
        recon.add_image_with_trivial_frame(twin, original.cam_from_world())

    _edit_model(root, edit)


BAD_SCENES = [
    ("rotated_90", _rotate_90, contract.Reason.INVALID_IMAGE,
     ["view_003.png is 48x64 (rotated by 90 degrees?), but its camera 1 is 64x48"]),
    ("other_aspect_ratio", _other_aspect, contract.Reason.INVALID_IMAGE, ["view_004.png is 64x40, but its camera 1 is 64x48"]),
    ("focal_length_zero", _focal_zero, contract.Reason.INVALID_MODEL, ["camera 1 (PINHOLE, 64x48) has focal length 0,"]),
    ("zero_quaternion", _zero_quaternion, contract.Reason.INVALID_MODEL,
     ["image view_002.png (id 3) has rotation quaternion [0.0, 0.0, 0.0, 0.0], not a unit quaternion"]),
    ("duplicate_name", _duplicate_name, contract.Reason.INVALID_MODEL, ["image view_005.png is registered twice (image ids 6 and 99)"]),
]


@pytest.mark.parametrize(("breaker", "reason", "words"), [b[1:] for b in BAD_SCENES], ids=[b[0] for b in BAD_SCENES])
def test_bad_scene_is_refused_naming_the_image_or_camera(scene_copy: Path, breaker, reason, words: list[str]) -> None:
    breaker(scene_copy)
    with pytest.raises(TrainerError) as info:
        scene_mod.check_scene(cfg_for(scene_copy))
    assert info.value.reason is reason and info.value.exit_code == 2
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("factor", [1, 2])
def test_uniformly_downscaled_upload_still_loads(scene_copy: Path, factor: int) -> None:
    """The rule is about the aspect ratio: a pre-shrunk image (33x25 for 64x48) keeps working."""
    path = _image(scene_copy, "view_006.png")
    with Image.open(path) as img:
        img.resize((33, 25)).save(path)
    data = scene_mod.load_scene(cfg_for(scene_copy, data_factor=factor, test_every=0))
    view = next(v for v in data.train if v.name == "view_006.png")
    assert view.K[0, 0] / view.K[1, 1] == pytest.approx(1.0, rel=0.02)  # still square pixels


def _png16(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): signature, IHDR, IDAT, IEND."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["grey16", "rgb16"])
@pytest.mark.parametrize("factor", [1, 2])
def test_16_bit_png_is_converted_not_whitened(scene_copy: Path, kind: str, factor: int) -> None:
    path = _image(scene_copy, "view_007.png")
    with Image.open(path) as img:
        rgb8 = np.asarray(img.convert("RGB")).astype(np.uint16)
    if kind == "grey16":
        grey8 = rgb8[..., 1]
        Image.fromarray((grey8 * 257).astype(np.uint16)).save(path)  # 16-bit greyscale PNG ("I;16")
        expected = np.repeat(grey8[..., None], 3, axis=2)
    else:
        _png16(path, rgb8 * 257)
        expected = rgb8
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I", "RGB")
    cfg = cfg_for(scene_copy, data_factor=factor, test_every=0)
    view = next(v for v in scene_mod.load_scene(cfg).train if v.name == "view_007.png")
    got = view.image.numpy().astype(np.int32)
    if factor == 1:
        assert np.abs(got - expected).max() <= 1
    else:  # downscaled: compare with the 8-bit image downscaled the same way
        small = np.asarray(Image.fromarray(expected.astype(np.uint8)).resize(got.shape[1::-1], Image.Resampling.LANCZOS))
        assert np.abs(got - small.astype(np.int32)).max() <= 1
    assert got.mean() < 200  # the old conversion made the greyscale one all white (255)


def test_cache_of_an_older_trainer_is_rebuilt(scene_copy: Path) -> None:
    """An image cache written before 16-bit images were converted properly (all white) is not reused."""
    import json

    path = _image(scene_copy, "view_007.png")
    with Image.open(path) as img:
        grey8 = np.asarray(img.convert("L")).astype(np.uint16)
    Image.fromarray(grey8 * 257).save(path)
    cfg = cfg_for(scene_copy, data_factor=2, test_every=0)
    cache = scene_mod.cache_dir(cfg)
    cache.mkdir(parents=True)
    cam = pycolmap.Reconstruction(str(scene_copy / contract.COLMAP_DIR)).cameras[1]
    Image.fromarray(np.full((24, 32, 3), 255, np.uint8)).save(cache / "view_007.png.png")  # the old, white result
    entry = {"key": scene_mod.ImageCache._key(path, cam), "K": np.eye(3).tolist()}
    (cache / "manifest.json").write_text(json.dumps({"version": 1, "entries": {"view_007.png": entry}}))
    view = next(v for v in scene_mod.load_scene(cfg).train if v.name == "view_007.png")
    assert view.image.numpy().mean() < 200


def test_bad_scene_exits_2_from_a_trainer_process(scene_copy: Path, tmp_path: Path) -> None:
    _rotate_90(scene_copy)
    term = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "splatops_trainer", "--scene-dir", str(scene_copy), "--metrics-port", "0",
         "--device", "cpu", "--termination-log", str(term)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    words = f"Image {scene_copy / 'images' / 'view_003.png'} is 48x64 (rotated by 90 degrees?)"
    result = contract.parse_result(term.read_text())
    assert result.reason == contract.Reason.INVALID_IMAGE.value and words in result.error
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert words in (scene_copy / contract.OUTPUT_DIR / contract.ERROR_LOG).read_text()


# --- symbolic links in images/: followed only inside the scene ----------------------------------


def _move_into(root: Path, names: list[str], store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(_image(root, name), store / name)


def _linked_subdir_inside(root: Path, outside: Path) -> None:
    """images/more -> ../store/more, with the model naming more/view_00N.png."""
    names = ["view_000.png", "view_001.png"]
    _move_into(root, names, root / "store" / "more")
    os.symlink("../store/more", _image(root, "more"), target_is_directory=True)

    def edit(recon: pycolmap.Reconstruction) -> None:
        for image in recon.images.values():
            if image.name in names:
                image.name = "more/" + image.name

    _edit_model(root, edit)


def _linked_file_inside(root: Path, outside: Path) -> None:
    _move_into(root, ["view_000.png"], root / "store")
    os.symlink("../store/view_000.png", _image(root, "view_000.png"))


def _linked_images_dir_inside(root: Path, outside: Path) -> None:
    os.replace(root / contract.IMAGES_DIR, root / "photos")
    os.symlink("photos", root / contract.IMAGES_DIR, target_is_directory=True)


def _images_dir_linked_in_from_elsewhere(root: Path, outside: Path) -> None:
    """What `splatops local` does (local.run.link_scene): images/ is a link to the user's folder;
    links under it may stay inside that folder."""
    outside.mkdir(parents=True)
    os.replace(root / contract.IMAGES_DIR, outside / "images")
    os.symlink(outside / "images", root / contract.IMAGES_DIR, target_is_directory=True)
    (outside / "images" / "kept").mkdir()
    os.replace(outside / "images" / "view_000.png", outside / "images" / "kept" / "view_000.png")
    os.symlink("kept/view_000.png", outside / "images" / "view_000.png")


@pytest.mark.parametrize(
    "make", [_linked_subdir_inside, _linked_file_inside, _linked_images_dir_inside, _images_dir_linked_in_from_elsewhere]
)
def test_links_inside_the_scene_are_followed(scene_copy: Path, tmp_path: Path, make) -> None:
    make(scene_copy, tmp_path / "outside")
    data = scene_mod.load_scene(cfg_for(scene_copy, test_every=0, data_factor=2))
    assert len(data.train) == 12


def _linked_file_outside(root: Path, outside: Path) -> Path:
    _move_into(root, ["view_000.png"], outside)
    link = _image(root, "view_000.png")
    os.symlink(outside / "view_000.png", link)
    return link


def _linked_subdir_outside(root: Path, outside: Path) -> Path:
    _linked_subdir_inside(root, outside)
    outside.mkdir(parents=True, exist_ok=True)
    os.replace(root / "store" / "more", outside / "more")
    link = _image(root, "more")
    link.unlink()
    os.symlink(outside / "more", link, target_is_directory=True)
    return link


def _linked_file_out_through_an_inside_link(root: Path, outside: Path) -> Path:
    """images/view_000.png -> ../store/view_000.png -> <outside>/view_000.png: resolved fully."""
    _move_into(root, ["view_000.png"], outside)
    (root / "store").mkdir()
    os.symlink(outside / "view_000.png", root / "store" / "view_000.png")
    link = _image(root, "view_000.png")
    os.symlink("../store/view_000.png", link)
    return link


def _link_out_of_a_linked_images_dir(root: Path, outside: Path) -> Path:
    """images/ linked in from elsewhere (as `splatops local` does) is no way out either."""
    _images_dir_linked_in_from_elsewhere(root, outside / "user")
    (outside / "user" / "images" / "view_001.png").rename(outside / "view_001.png")
    link = outside / "user" / "images" / "view_001.png"
    os.symlink(outside / "view_001.png", link)
    return root / contract.IMAGES_DIR / "view_001.png"


@pytest.mark.parametrize(
    "make",
    [_linked_file_outside, _linked_subdir_outside, _linked_file_out_through_an_inside_link, _link_out_of_a_linked_images_dir],
)
def test_links_leaving_the_scene_are_refused_naming_the_link(scene_copy: Path, tmp_path: Path, make) -> None:
    link = make(scene_copy, tmp_path / "outside")
    with pytest.raises(TrainerError) as info:
        scene_mod.check_scene(cfg_for(scene_copy, data_factor=2))
    assert info.value.reason is contract.Reason.INVALID_IMAGE and info.value.exit_code == 2
    assert f"{link} is a symbolic link to {tmp_path / 'outside'}" in info.value.message
    assert "outside the scene directory" in info.value.message
    assert not (scene_copy / contract.OUTPUT_DIR / "cache").exists()  # no pixels from outside cached
