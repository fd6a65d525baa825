"""Scene checking and loading: COLMAP model + images in, `dataset.SceneData` out.

`check_scene` decides everything that can be wrong with the input (exit code 2) on the CPU,
before the GPU is touched, with the original pipeline's messages (and fingerprints the scene's
content for the checkpoint resume key). `load_scene` then reads the
images: undistorted (SIMPLE_RADIAL, RADIAL, OPENCV) and downscaled by `data_factor` once, into a
cache under the output directory that later runs (and resumed pods) reuse.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image  # before pycolmap: its bundled zlib symbols can break Pillow's PNG encoder

import pycolmap  # noqa: I001 (order matters, see above)
import torch

from splatops import contract

from . import atomic
from .config import TrainerConfig
from .dataset import SceneData, View
from .errors import TrainerError

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
PINHOLE_MODELS = frozenset({"SIMPLE_PINHOLE", "PINHOLE"})
UNDISTORTED_MODELS = frozenset({"SIMPLE_RADIAL", "RADIAL", "OPENCV"})
CACHE_VERSION = 2  # 2: 16-bit greyscale scaled, not clipped white (version 1 entries are rebuilt)
_LISTED_MISSING = 5  # how many missing image names an error message lists
QUAT_NORM_TOLERANCE = 1e-3  # COLMAP writes unit quaternions; an all-zero one would read as identity


@dataclasses.dataclass(frozen=True)
class SceneCheck:
    """What `check_scene` found: enough to load the scene without re-deciding anything."""

    scene_dir: Path
    model_dir: Path
    images_dir: Path
    reconstruction: pycolmap.Reconstruction
    image_names: tuple[str, ...]  # registered images, sorted by name
    camera_models: dict[int, str]
    fingerprint: str = ""  # scene_fingerprint(): the model files' content + the images' stats
    image_sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (width, height)


# --- Checks --------------------------------------------------------------------------------------


def has_model(directory: Path) -> bool:
    return contract.has_colmap_model(directory)  # the layout check the CLI and gateway make too


def ensure_sparse_link(scene_dir: Path) -> None:
    """Create `sparse/0 -> ../colmap/sparse_initial` (as the original pipeline did) if missing.

    Never replaces an existing sparse/0 (file, directory or link, even a dangling one). A
    read-only volume only costs the link, not the run: the model is read from its real path.
    """
    link = scene_dir / contract.SPARSE_DIR
    if os.path.lexists(link) or not has_model(scene_dir / contract.COLMAP_DIR):
        return
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(contract.SPARSE_LINK_TARGET, link, target_is_directory=True)
    except FileExistsError:
        pass  # another process made it between our check and now: theirs stands
    except OSError as exc:
        print(f"warning: could not create {link}: {exc}", file=sys.stderr)


def find_model_dir(scene_dir: Path) -> Path:
    """sparse/0 when it holds a model (what gsplat's parser, and so the original pipeline, read:
    our link to colmap/sparse_initial, or a user's own model), else colmap/sparse_initial."""
    sparse, initial = scene_dir / contract.SPARSE_DIR, scene_dir / contract.COLMAP_DIR
    if has_model(sparse):
        return sparse
    if has_model(initial):
        if os.path.lexists(sparse):
            log.warning("%s holds no COLMAP model (cameras, images, points3D): using %s", sparse, initial)
        return initial
    raise TrainerError(
        contract.Reason.COLMAP_NOT_FOUND,
        f"{contract.MSG_COLMAP_NOT_FOUND}: expected cameras, images and points3D (.bin or .txt) "
        f"in {initial} or {sparse}. Run the COLMAP conversion for this scene first, or let the trainer "
        "reconstruct it from the photos (--reconstruct IfMissing, the default; spec.reconstruct).",
    )


def _escaping_link(link: Path, scene_dir: Path) -> TrainerError:
    return TrainerError(
        contract.Reason.INVALID_IMAGE,
        f"{link} is a symbolic link to {link.resolve()}, outside the scene directory {scene_dir}. Links "
        "in images/ are followed only when they stay inside the scene: copy the file (or folder) "
        "into the scene instead.",
    )


def allowed_roots(scene_dir: Path, images_dir: Path) -> tuple[Path, ...]:
    """Where links under images/ may lead: the scene directory, and the folder images/ itself
    resolves to (`splatops local` links a scene's images/ folder in from elsewhere)."""
    return scene_dir.resolve(), images_dir.resolve()


def inside(path: Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, with every symbolic link resolved, lies inside one of `roots` (resolved)."""
    real = path.resolve()
    return any(real.is_relative_to(root) for root in roots)


def list_images(images_dir: Path, scene_dir: Path | None = None) -> set[str]:
    """Image files under images/ (names relative to it), following symbolic links (files and
    folders) only while they resolve inside the scene (`allowed_roots`); a link that leads
    elsewhere is refused (InvalidImage, naming the link), so nothing outside is read or cached."""
    scene_dir = scene_dir if scene_dir is not None else images_dir.parent
    if not images_dir.is_dir():
        return set()
    roots = allowed_roots(scene_dir, images_dir)
    found: set[str] = set()
    pending, visited = [images_dir], {images_dir.resolve()}
    while pending:
        for entry in sorted(os.scandir(pending.pop()), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_symlink() and not inside(path, roots):
                raise _escaping_link(path, scene_dir)
            if entry.is_dir():
                real = path.resolve()
                if real not in visited:  # a link back up the tree is listed once, not forever
                    visited.add(real)
                    pending.append(path)
            elif entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                found.add(path.relative_to(images_dir).as_posix())
    return found


def read_model(model_dir: Path) -> pycolmap.Reconstruction:
    try:
        recon = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError for corrupt files
        raise TrainerError(
            contract.Reason.INVALID_MODEL,
            f"COLMAP model in {model_dir} could not be read ({exc}). "
            "Re-run the COLMAP conversion; the files may be truncated or corrupt.",
        ) from exc
    if not [i for i in recon.images.values() if i.has_pose]:
        raise TrainerError(
            contract.Reason.INVALID_MODEL,
            f"COLMAP model in {model_dir} has no registered images. Re-run the COLMAP conversion.",
        )
    if recon.num_points3D() == 0:
        raise TrainerError(
            contract.Reason.INVALID_MODEL,
            f"COLMAP model in {model_dir} has no 3D points; the Gaussians are initialised from "
            "them. Re-run the COLMAP conversion (with triangulation).",
        )
    return recon


def check_cameras(recon: pycolmap.Reconstruction) -> dict[int, str]:
    models = {int(cid): cam.model.name for cid, cam in recon.cameras.items()}
    bad = {cid: m for cid, m in models.items() if m not in PINHOLE_MODELS | UNDISTORTED_MODELS}
    if bad:
        listed = ", ".join(f"camera {cid}: {m}" for cid, m in sorted(bad.items()))
        raise TrainerError(
            contract.Reason.UNSUPPORTED_CAMERA,
            f"Unsupported camera model ({listed}). Supported: PINHOLE, SIMPLE_PINHOLE directly; "
            "SIMPLE_RADIAL, RADIAL, OPENCV are undistorted by the trainer. Undistort the images "
            "first (colmap image_undistorter) and use the resulting PINHOLE model.",
        )
    return models


def _invalid_model(model_dir: Path, problem: str) -> TrainerError:
    return TrainerError(
        contract.Reason.INVALID_MODEL,
        f"COLMAP model in {model_dir}: {problem}. Fix the model or re-run the COLMAP conversion.",
    )


def check_intrinsics(recon: pycolmap.Reconstruction, model_dir: Path) -> None:
    """Every camera's size, focal lengths and principal point must be usable numbers."""
    for cid, cam in sorted(recon.cameras.items()):
        name = f"camera {cid} ({cam.model.name}, {cam.width}x{cam.height})"
        if cam.width <= 0 or cam.height <= 0:
            raise _invalid_model(model_dir, f"{name} has no size")
        focals = [float(cam.params[i]) for i in cam.focal_length_idxs()]
        if not all(np.isfinite(f) and f > 0 for f in focals):
            raise _invalid_model(model_dir, f"{name} has focal length {', '.join(f'{f:g}' for f in focals)}; it must be positive")
        if not np.all(np.isfinite(np.asarray(cam.params, dtype=np.float64))):
            raise _invalid_model(model_dir, f"{name} has non-finite parameters {list(cam.params)}")


def check_images_in_model(recon: pycolmap.Reconstruction, model_dir: Path) -> None:
    """Registered images: unique names, unit rotation quaternions, finite translations."""
    seen: dict[str, int] = {}
    for iid, image in sorted(recon.images.items()):
        if not image.has_pose:
            continue
        if image.name in seen:
            raise _invalid_model(model_dir, f"image {image.name} is registered twice (image ids {seen[image.name]} and {iid})")
        seen[image.name] = iid
        pose = image.cam_from_world()
        quat = np.asarray(pose.rotation.quat, dtype=np.float64)
        if not np.all(np.isfinite(quat)) or abs(float(np.linalg.norm(quat)) - 1.0) > QUAT_NORM_TOLERANCE:
            raise _invalid_model(
                model_dir, f"image {image.name} (id {iid}) has rotation quaternion {quat.tolist()}, not a unit quaternion"
            )
        if not np.all(np.isfinite(np.asarray(pose.translation, dtype=np.float64))):
            raise _invalid_model(model_dir, f"image {image.name} (id {iid}) has a non-finite translation")


def check_image_sizes(
    recon: pycolmap.Reconstruction, images_dir: Path, sizes: dict[str, tuple[int, int]]
) -> None:
    """An image may be stored smaller or larger than its camera (a pre-downscaled upload: the
    intrinsics are scaled to match), but only uniformly: another aspect ratio (a rotated photo,
    the wrong camera) would stretch the intrinsics, so it is refused."""
    for image in sorted(recon.images.values(), key=lambda i: i.name):
        if not image.has_pose:
            continue
        cam = recon.cameras[image.camera_id]
        w, h = sizes[image.name]
        if (w, h) == (cam.width, cam.height):
            continue
        # Uniform scale, up to rounding of either side to whole pixels.
        if abs(h - cam.height * w / cam.width) <= 1.0 or abs(w - cam.width * h / cam.height) <= 1.0:
            continue
        hint = " (rotated by 90 degrees?)" if (w, h) == (cam.height, cam.width) else ""
        raise TrainerError(
            contract.Reason.INVALID_IMAGE,
            f"Image {images_dir / image.name} is {w}x{h}{hint}, but its camera {image.camera_id} is "
            f"{cam.width}x{cam.height}: another aspect ratio, so its intrinsics do not fit it. Store the "
            "image as COLMAP saw it (no rotation or crop), or re-run the COLMAP conversion on these images.",
        )


def _invalid_image(images_dir: Path, name: str, problem: object) -> TrainerError:
    return TrainerError(
        contract.Reason.INVALID_IMAGE,
        f"Image {images_dir / name} cannot be read as an image ({problem}). The file is damaged or "
        "not an image: re-upload it, or remove it and re-run the COLMAP conversion.",
    )


def check_image_headers(images_dir: Path, names: tuple[str, ...] | list[str]) -> dict[str, tuple[int, int]]:
    """Open each image's header (format, size; a few KiB read, not the pixels): garbage, empty or
    foreign files fail here, before the GPU is touched. A file damaged past its header is caught
    when the pixels are decoded (load_scene), with the same reason. Returns each (width, height)."""

    def one(name: str) -> tuple[int, int]:
        try:
            with Image.open(images_dir / name) as img:
                (width, height), mode = img.size, img.mode
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _invalid_image(images_dir, name, exc) from exc
        if width <= 0 or height <= 0:
            raise _invalid_image(images_dir, name, f"size {width}x{height}")
        if mode == "F":  # floating-point samples have no defined range to map to colours
            raise _invalid_image(images_dir, name, "32-bit floating-point pixels; save it as an 8- or 16-bit image")
        return width, height

    return dict(zip(names, map_in_threads(one, names)))


def map_in_threads(fn: Callable[[str], T], names: Sequence[str]) -> list[T]:
    """fn over names on a few threads, results in order; re-raises the first failure in name
    order. On any exception (also SIGTERM's Terminated, raised in this thread) the images not yet
    started are cancelled, not all read first: a stopping pod must report within its grace period."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        return list(pool.map(fn, names))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


MODEL_FILES = ("cameras", "images", "points3D", "rigs", "frames")


def scene_fingerprint(model_dir: Path, images_dir: Path, names: tuple[str, ...] | list[str]) -> str:
    """A cheap identity of the scene's content, for the checkpoint resume key: the SHA-256 of the
    COLMAP model files' bytes, plus each used image's name, size and mtime (not its pixels)."""
    h = hashlib.sha256(b"splatops-scene-v1\0")
    for stem in MODEL_FILES:
        for ext in (".bin", ".txt"):
            path = model_dir / f"{stem}{ext}"
            if path.is_file():
                h.update(f"model {stem}{ext}\0".encode())
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
    for name in sorted(names):
        st = (images_dir / name).stat()
        h.update(f"image {name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def check_scene(cfg: TrainerConfig, model_dir: Path | None = None) -> SceneCheck:
    """Every input check that needs no GPU; raises TrainerError (exit code 2) on bad input.

    `model_dir`: read the model there (the one this run just reconstructed), not `find_model_dir`'s."""
    scene_dir = cfg.scene_dir
    if not scene_dir.is_dir():
        raise TrainerError(
            contract.Reason.COLMAP_NOT_FOUND,
            f"{contract.MSG_COLMAP_NOT_FOUND}: scene directory {scene_dir} does not exist.",
        )
    ensure_sparse_link(scene_dir)
    model_dir = model_dir if model_dir is not None else find_model_dir(scene_dir)
    images_dir = scene_dir / contract.IMAGES_DIR
    on_disk = list_images(images_dir, scene_dir)
    if not on_disk:
        raise TrainerError(
            contract.Reason.NO_IMAGES,
            f"{contract.MSG_NO_IMAGES} in {images_dir}. Upload the scene's images first.",
        )
    recon = read_model(model_dir)
    models = check_cameras(recon)
    check_intrinsics(recon, model_dir)
    check_images_in_model(recon, model_dir)
    names = sorted(i.name for i in recon.images.values() if i.has_pose)
    missing = [n for n in names if n not in on_disk]
    if missing:
        shown = ", ".join(missing[:_LISTED_MISSING]) + (", ..." if len(missing) > _LISTED_MISSING else "")
        raise TrainerError(
            contract.Reason.MISSING_IMAGES,
            f"{len(missing)} of {len(names)} images named in the COLMAP model are missing from "
            f"{images_dir}: {shown}. Upload them or re-run the COLMAP conversion.",
        )
    sizes = check_image_headers(images_dir, names)
    check_image_sizes(recon, images_dir, sizes)
    return SceneCheck(
        scene_dir=scene_dir,
        model_dir=model_dir,
        images_dir=images_dir,
        reconstruction=recon,
        image_names=tuple(names),
        camera_models=models,
        fingerprint=scene_fingerprint(model_dir, images_dir, names),
        image_sizes=sizes,
    )


# --- Loading -------------------------------------------------------------------------------------


def _needs_undistortion(cam: pycolmap.Camera) -> bool:
    if cam.model.name in PINHOLE_MODELS:
        return False
    # Distortion coefficients that are all zero (common for generated models) are a pinhole.
    extra = np.asarray(cam.params)[list(cam.extra_params_idxs())]
    return bool(np.any(extra != 0.0))


def _pinhole_k(cam: pycolmap.Camera) -> np.ndarray:
    return np.array(
        [[cam.focal_length_x, 0.0, cam.principal_point_x], [0.0, cam.focal_length_y, cam.principal_point_y], [0, 0, 1]],
        dtype=np.float64,
    )


def _camera_signature(cam: pycolmap.Camera) -> list[Any]:
    return [cam.model.name, int(cam.width), int(cam.height), [float(p) for p in cam.params]]


def _scaled_size(width: int, height: int, factor: int) -> tuple[int, int]:
    return max(1, round(width / factor)), max(1, round(height / factor))


def to_rgb8(img: Image.Image) -> np.ndarray:
    """uint8 HxWx3 of any image Pillow reads. 16-bit greyscale ("I;16", or "I" holding 16-bit
    values) is scaled to 8 bits (x 255/65535); Pillow's own convert("RGB") clips it to white.
    16-bit RGB PNGs already arrive as 8-bit "RGB" (Pillow keeps the high byte)."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        grey = np.asarray(img, dtype=np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def process_image(path: Path, cam: pycolmap.Camera, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one image; undistort if its camera needs it; downscale. Returns (uint8 HxWx3, K)."""
    with Image.open(path) as img:
        rgb = to_rgb8(img)
    cam = pycolmap.Camera(model=cam.model.name, width=cam.width, height=cam.height, params=cam.params)
    h, w = rgb.shape[:2]
    if (w, h) != (cam.width, cam.height):
        # Images stored at another resolution than the model's (e.g. pre-downscaled): follow them.
        cam.rescale(w, h)
    if _needs_undistortion(cam):
        bitmap, cam = pycolmap.undistort_image(
            pycolmap.UndistortCameraOptions(), pycolmap.Bitmap.from_array(rgb), cam
        )
        rgb = np.asarray(bitmap.to_array())
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    k = _pinhole_k(cam)
    h, w = rgb.shape[:2]
    if factor > 1:
        nw, nh = _scaled_size(w, h, factor)
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS))
        k[0, :] *= nw / w
        k[1, :] *= nh / h
    return np.ascontiguousarray(rgb, dtype=np.uint8), k


class ImageCache:
    """`<output>/cache/images_<factor>/`: processed images plus a manifest of what made them.

    An entry is reused when the source file (size, mtime) and the camera are unchanged.
    Files and the manifest are written atomically, so a killed pod leaves no half entries.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest_path = root / "manifest.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        self.writable = True
        self._lock = threading.Lock()  # get() runs on a thread pool
        try:
            data = json.loads(self.manifest_path.read_text())
            if data.get("version") == CACHE_VERSION:
                self.entries = dict(data.get("entries", {}))
        except (OSError, ValueError):
            pass  # no or unreadable manifest: rebuild

    @staticmethod
    def _key(src: Path, cam: pycolmap.Camera) -> dict[str, Any]:
        st = src.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "camera": _camera_signature(cam)}

    def get(self, name: str, src: Path, cam: pycolmap.Camera, factor: int) -> tuple[np.ndarray, np.ndarray]:
        key = self._key(src, cam)
        entry = self.entries.get(name)
        cached = self.root / f"{name}.png"
        if entry and entry.get("key") == key and cached.is_file():
            try:
                with Image.open(cached) as img:
                    rgb = np.asarray(img.convert("RGB"))
                with self._lock:
                    self.hits += 1
                return rgb, np.asarray(entry["K"], dtype=np.float64)
            except OSError:
                pass  # damaged cache file: rebuild it
        rgb, k = process_image(src, cam, factor)
        with self._lock:
            self.misses += 1
        if self.writable:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
            try:
                atomic.write_bytes(cached, buf.getvalue())
                with self._lock:
                    self.entries[name] = {"key": key, "K": k.tolist()}
            except OSError as exc:  # read-only or full volume: train anyway, just uncached
                with self._lock:
                    if self.writable:
                        print(f"warning: image cache {self.root} not writable ({exc}); not caching", file=sys.stderr)
                    self.writable = False
        return rgb, k

    def save(self) -> None:
        if self.misses and self.writable:
            try:
                atomic.write_json(self.manifest_path, {"version": CACHE_VERSION, "entries": self.entries})
            except OSError as exc:
                print(f"warning: could not write {self.manifest_path}: {exc}", file=sys.stderr)


def cache_dir(cfg: TrainerConfig) -> Path:
    return cfg.out / "cache" / f"images_{cfg.data_factor}"


def uses_cache(cfg: TrainerConfig, check: SceneCheck) -> bool:
    """Images are cached when they are downscaled or undistorted (else read as they are)."""
    recon = check.reconstruction
    by_name = {i.name: i for i in recon.images.values() if i.has_pose}
    return cfg.data_factor > 1 or any(_needs_undistortion(recon.cameras[by_name[n].camera_id]) for n in check.image_names)


def cached_pixels(cfg: TrainerConfig, check: SceneCheck) -> int:
    """Pixels the image cache will hold (0 when there is none): for the disk-space estimate."""
    if not uses_cache(cfg, check):
        return 0
    sizes = (_scaled_size(w, h, cfg.data_factor) for w, h in check.image_sizes.values())
    return sum(w * h for w, h in sizes)


def split_names(names: list[str] | tuple[str, ...], test_every: int) -> tuple[list[str], list[str]]:
    """Every `test_every`-th image (sorted by name, starting with the first) is held out.

    0 holds out nothing; fewer than two images are all used for training.
    """
    ordered = sorted(names)
    if test_every <= 0 or len(ordered) < 2:
        return ordered, []
    test = [n for i, n in enumerate(ordered) if i % test_every == 0]
    train = [n for i, n in enumerate(ordered) if i % test_every != 0]
    return train, test


def camera_centres(recon: pycolmap.Reconstruction, names: list[str] | tuple[str, ...]) -> np.ndarray:
    by_name = {i.name: i for i in recon.images.values()}
    return np.stack([np.asarray(by_name[n].projection_center(), dtype=np.float64) for n in names])


def scene_scale(centres: np.ndarray) -> float:
    """1.1 x the largest distance of a camera centre from their mean (the 3DGS normalisation)."""
    radius = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max()) if len(centres) else 0.0
    return 1.1 * radius if radius > 0 else 1.0


def _viewmat(image: pycolmap.Image) -> torch.Tensor:
    m = np.eye(4, dtype=np.float32)
    m[:3, :4] = np.asarray(image.cam_from_world().matrix(), dtype=np.float32)
    return torch.from_numpy(m)


def load_scene(cfg: TrainerConfig, check: SceneCheck | None = None) -> SceneData:
    """Read, undistort and downscale the images (cached), and build the train/test split."""
    check = check or check_scene(cfg)
    recon = check.reconstruction
    by_name = {i.name: i for i in recon.images.values() if i.has_pose}
    cams = {n: recon.cameras[by_name[n].camera_id] for n in check.image_names}
    cache = ImageCache(cache_dir(cfg)) if uses_cache(cfg, check) else None

    roots = allowed_roots(check.scene_dir, check.images_dir)

    def one(name: str) -> View:
        src = check.images_dir / name
        if not inside(src, roots):  # a link changed since check_scene: still nothing from outside
            raise _escaping_link(src, check.scene_dir)
        try:
            if cache is not None:
                rgb, k = cache.get(name, src, cams[name], cfg.data_factor)
            else:
                rgb, k = process_image(src, cams[name], 1)
        except FileNotFoundError as exc:  # deleted since check_scene
            raise TrainerError(
                contract.Reason.MISSING_IMAGES,
                f"Image {src} named in the COLMAP model disappeared while loading: upload it again.",
            ) from exc
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated/corrupt pixels
            raise _invalid_image(check.images_dir, name, exc) from exc
        return View(
            name=name,
            K=torch.from_numpy(k.astype(np.float32)),
            viewmat=_viewmat(by_name[name]),
            image=torch.from_numpy(np.array(rgb, dtype=np.uint8)),
        )

    try:
        views = {v.name: v for v in map_in_threads(one, check.image_names)}
    finally:
        if cache is not None:
            cache.save()
    if cache is not None:
        log.info("image cache %s: %d reused, %d built", cache.root, cache.hits, cache.misses)

    train_names, test_names = split_names(check.image_names, cfg.test_every)
    pts = [p for p in recon.points3D.values()]
    points = torch.from_numpy(np.stack([np.asarray(p.xyz) for p in pts]).astype(np.float32))
    colors = torch.from_numpy(np.stack([np.asarray(p.color) for p in pts]).astype(np.float32) / 255.0)
    return SceneData(
        train=[views[n] for n in train_names],
        test=[views[n] for n in test_names],
        points=points,
        colors=colors,
        scene_scale=scene_scale(camera_centres(recon, check.image_names)),
        fingerprint=check.fingerprint,
    )
