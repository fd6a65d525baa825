"""A small synthetic scene with KNOWN Gaussians and cameras, rendered by the CPU rasterizer.

The object: a sphere of Gaussians coloured by surface direction, inside a ring coloured by angle
(a few hundred to a few thousand Gaussians, radius ~1 around the origin). The cameras orbit it at
radius 4 at varying elevations, all looking at the origin, and share one COLMAP camera. The scene
has the layout the trainer reads:

    OUT_DIR/images/view_000.png ...           rendered on a black background (Pillow, RGB)
    OUT_DIR/colmap/sparse_initial/            cameras, images, points3D (.bin, or .txt)

Sparse points imitate SfM: noisy samples of the true Gaussian centres with their colours, each
observed (a 2D keypoint and a track element) in every view it projects into.

Distorted camera models (SIMPLE_RADIAL, RADIAL, OPENCV) get small distortion coefficients and truly
distorted images: each view is rendered as a pinhole image with a margin, then every output pixel is
mapped through the camera's undistortion (pycolmap `cam_from_img`) and bilinearly resampled, so
undistorting the images with the written model recovers the pinhole rendering (up to resampling).

    python -m splatops_trainer.synthetic OUT_DIR [--views N --width W --height H --seed S
                                                  --gaussians N --camera-model M --text]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Pillow BEFORE pycolmap: pycolmap 4.2.1's wheel exports its own zlib symbols; if it loads first,
# Pillow's PNG encoder resolves deflate* to them and corrupts the heap (abort in deflateEnd).
from PIL import Image as PILImage

from .render import rasterize

SH_C0 = 0.28209479177387814  # degree-0 SH basis: rgb = SH_C0 * sh0 + 0.5
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
ORBIT_RADIUS = 4.0
OBJECT_RADIUS = 1.0  # the ring's outer edge; the sphere has radius 0.6
MODEL_SUBDIR = Path("colmap") / "sparse_initial"
# Small distortion, as from a well-corrected lens: at the image corner a pixel moves by ~0.5 px at
# 64x48 (the field of view is narrow); enough to tell a distorted from an undistorted image.
_DISTORTION = {
    "SIMPLE_RADIAL": [0.04],
    "RADIAL": [0.04, -0.01],
    "OPENCV": [0.04, -0.01, 0.002, -0.001],
}
_MARGIN = 0.15  # pinhole render margin around distorted views, as a fraction of the size


@dataclasses.dataclass(frozen=True)
class GroundTruthGaussians:
    """The Gaussians the images were rendered from (activated values, CPU float32)."""

    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4] unit (w, x, y, z)
    scales: torch.Tensor  # [N, 3] standard deviations (not log)
    opacities: torch.Tensor  # [N] in (0, 1) (not logit)
    rgb: torch.Tensor  # [N, 3] in [0, 1]

    @property
    def sh0(self) -> torch.Tensor:
        """[N, 1, 3] degree-0 SH coefficients, as `rasterize(..., sh_degree=0)` takes them."""
        return ((self.rgb - 0.5) / SH_C0)[:, None, :]


@dataclasses.dataclass(frozen=True)
class SyntheticScene:
    root: Path  # the scene directory (images/, colmap/sparse_initial/)
    image_names: list[str]  # file names in images/, in image-id order (id = index + 1)
    width: int
    height: int
    camera_model: str
    camera_params: list[float]  # COLMAP parameter order for camera_model
    Ks: torch.Tensor  # [V, 3, 3] pinhole intrinsics (for distorted models: of the undistorted view)
    viewmats: torch.Tensor  # [V, 4, 4] world-to-camera, OpenCV convention (= COLMAP cam_from_world)
    gaussians: GroundTruthGaussians
    points: np.ndarray  # [P, 3] float64 sparse points written to points3D
    point_colors: np.ndarray  # [P, 3] uint8
    duration_s: float

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_SUBDIR


def make_synthetic_scene(
    out_dir: Path,
    *,
    n_views: int = 12,
    width: int = 64,
    height: int = 48,
    n_gaussians: int = 1500,
    n_points: int | None = None,
    seed: int = 0,
    camera_model: str = "PINHOLE",
    text_model: bool = False,
) -> SyntheticScene:
    """Generate the scene into `out_dir` (created; files already there are replaced).

    n_points: sparse points to write (default n_gaussians // 3). The same arguments always give
    the same scene (all randomness comes from `seed`).
    """
    problems = _validate(n_views, width, height, n_gaussians, n_points, camera_model)
    if problems:
        raise ValueError("make_synthetic_scene: " + "; ".join(problems))
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    gen = torch.Generator().manual_seed(seed)
    gaussians = make_object(n_gaussians, gen)
    viewmats = orbit_viewmats(n_views, gen)
    focal = 1.4 * height  # the object spans ~70% of the image height
    params = colmap_camera_params(camera_model, focal, width, height)
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    Ks = K.expand(n_views, 3, 3).clone()

    images = render_views(gaussians, viewmats, K, width, height, camera_model, params)
    names = [f"view_{i:03d}.png" for i in range(n_views)]
    _write_images(out_dir / "images", names, images)

    n_pts = n_points if n_points is not None else max(1, n_gaussians // 3)
    pick = torch.randperm(n_gaussians, generator=gen)[:n_pts]
    noise = 0.02 * OBJECT_RADIUS * torch.randn(n_pts, 3, generator=gen)
    points = (gaussians.means[pick] + noise).double().numpy()
    point_colors = (gaussians.rgb[pick] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    write_colmap_model(
        out_dir / MODEL_SUBDIR, names, width, height, camera_model, params, viewmats, points, point_colors, text_model
    )
    return SyntheticScene(
        root=out_dir,
        image_names=names,
        width=width,
        height=height,
        camera_model=camera_model,
        camera_params=params,
        Ks=Ks,
        viewmats=viewmats,
        gaussians=gaussians,
        points=points,
        point_colors=point_colors,
        duration_s=time.perf_counter() - t0,
    )


def _validate(
    n_views: int, width: int, height: int, n_gaussians: int, n_points: int | None, camera_model: str
) -> list[str]:
    checks = [
        (n_views >= 1, f"n_views must be at least 1, got {n_views}"),
        (width >= 8 and height >= 8, f"width and height must be at least 8, got {width}x{height}"),
        (n_gaussians >= 10, f"n_gaussians must be at least 10, got {n_gaussians}"),
        (n_points is None or 1 <= n_points <= n_gaussians, f"n_points must be in 1..n_gaussians, got {n_points}"),
        (camera_model in CAMERA_MODELS, f"camera_model must be one of {', '.join(CAMERA_MODELS)}, got {camera_model!r}"),
    ]
    return [msg for ok, msg in checks if not ok]


def make_object(n: int, gen: torch.Generator) -> GroundTruthGaussians:
    """A colourful sphere (radius 0.6, 60% of the Gaussians) inside a ring (radius 0.9)."""
    n_sphere = (n * 3) // 5
    n_ring = n - n_sphere
    dirs = F.normalize(torch.randn(n_sphere, 3, generator=gen), dim=-1)
    sphere = dirs * (0.6 + 0.01 * torch.randn(n_sphere, 1, generator=gen))
    sphere_rgb = 0.5 + 0.45 * dirs
    angle = 2 * math.pi * torch.rand(n_ring, generator=gen)
    tube_a = 2 * math.pi * torch.rand(n_ring, generator=gen)
    r = 0.9 + 0.1 * torch.cos(tube_a)
    ring = torch.stack([r * torch.cos(angle), r * torch.sin(angle), 0.1 * torch.sin(tube_a)], dim=-1)
    hue = angle / (2 * math.pi)
    ring_rgb = torch.stack([_hue_channel(hue, k) for k in (0.0, 1 / 3, 2 / 3)], dim=-1)
    means = torch.cat([sphere, ring])
    rgb = torch.cat([sphere_rgb, ring_rgb]).clamp(0.02, 0.98)
    # log-normal sizes with mild anisotropy: 0.03..0.1 in a unit-radius object
    scales = 0.055 * torch.exp(0.25 * torch.randn(n, 1, generator=gen) + 0.2 * torch.randn(n, 3, generator=gen))
    quats = F.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    opacities = 0.6 + 0.35 * torch.rand(n, generator=gen)
    return GroundTruthGaussians(means=means, quats=quats, scales=scales, opacities=opacities, rgb=rgb)


def _hue_channel(h: torch.Tensor, offset: float) -> torch.Tensor:
    return 0.5 + 0.45 * torch.cos(2 * math.pi * (h - offset))


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """[4, 4] world-to-camera (OpenCV: x right, y down, z forward) looking from eye at target."""
    fwd = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(fwd, up), dim=0)
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd])  # rows: camera axes in world coordinates
    m = torch.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m


def orbit_viewmats(n_views: int, gen: torch.Generator) -> torch.Tensor:
    """[V, 4, 4] cameras on a circle of radius 4 around z, elevations 15..45 deg, slight jitter."""
    mats = []
    for i in range(n_views):
        az = 2 * math.pi * i / n_views + 0.1 * float(torch.rand((), generator=gen))
        el = math.radians(30.0 + 15.0 * math.sin(2 * math.pi * i / max(n_views, 1) * 2))
        eye = ORBIT_RADIUS * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        mats.append(look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])))
    return torch.stack(mats)


def colmap_camera_params(model: str, focal: float, width: int, height: int) -> list[float]:
    cx, cy = width / 2.0, height / 2.0
    if model == "SIMPLE_PINHOLE":
        return [focal, cx, cy]
    if model == "PINHOLE":
        return [focal, focal, cx, cy]
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        return [focal, cx, cy, *_DISTORTION[model]]
    return [focal, focal, cx, cy, *_DISTORTION[model]]  # OPENCV


def _pycolmap_camera(model: str, width: int, height: int, params: list[float]):  # -> pycolmap.Camera
    import pycolmap

    return pycolmap.Camera(model=model, width=width, height=height, params=params, camera_id=1)


@torch.no_grad()
def render_views(
    g: GroundTruthGaussians,
    viewmats: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    camera_model: str = "PINHOLE",
    params: list[float] | None = None,
) -> torch.Tensor:
    """[V, H, W, 3] float images in [0, 1]: the Gaussians on black, distorted for distorted models."""
    c = viewmats.shape[0]
    distorted = camera_model in _DISTORTION
    mx, my = (math.ceil(_MARGIN * width), math.ceil(_MARGIN * height)) if distorted else (0, 0)
    Kr = K.clone()
    Kr[0, 2] += mx
    Kr[1, 2] += my
    rw, rh = width + 2 * mx, height + 2 * my
    colors, _, _ = rasterize(
        g.means, g.quats, g.scales, g.opacities, g.sh0, viewmats, Kr.expand(c, 3, 3), rw, rh,
        sh_degree=0, backend="cpu",
    )  # fmt: skip
    colors = colors.clamp(0.0, 1.0)
    if not distorted:
        return colors
    assert params is not None
    cam = _pycolmap_camera(camera_model, width, height, params)
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float64)
    norm = np.asarray(cam.cam_from_img(pix), dtype=np.float64)  # undistorted normalised coordinates
    xr = K[0, 0].item() * norm[:, 0] + Kr[0, 2].item()  # where that ray lands in the pinhole render
    yr = K[1, 1].item() * norm[:, 1] + Kr[1, 2].item()
    grid = torch.from_numpy(np.stack([2 * xr / rw - 1, 2 * yr / rh - 1], axis=-1)).float()
    grid = grid.reshape(1, height, width, 2).expand(c, height, width, 2)
    out = F.grid_sample(colors.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous()


def write_image(images_dir: Path, name: str, rgb: np.ndarray, fmt: str = "PNG", quality: int = 95) -> None:
    """One [H, W, 3] float image in [0, 1] as an 8-bit PNG or JPEG, written atomically."""
    images_dir.mkdir(parents=True, exist_ok=True)
    tmp = images_dir / f".{name}.tmp"
    pixels = (np.asarray(rgb) * 255.0).round().clip(0, 255).astype(np.uint8)
    PILImage.fromarray(pixels).save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    os.replace(tmp, images_dir / name)


def _write_images(images_dir: Path, names: list[str], images: torch.Tensor) -> None:
    for name, rgb in zip(names, images.numpy(), strict=True):
        write_image(images_dir, name, rgb)


def write_colmap_model(
    model_dir: Path,
    names: list[str],
    width: int,
    height: int,
    camera_model: str,
    params: list[float],
    viewmats: torch.Tensor,
    points: np.ndarray,
    point_colors: np.ndarray,
    text_model: bool,
    visible: np.ndarray | None = None,
) -> None:
    """COLMAP model with one camera (trivial rig), one trivially-framed image per view, and the
    points with tracks; written to a temp dir beside model_dir, then swapped in.

    visible: [P, V] bool, which views see each point (occlusion); default every view it projects into."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    cam = _pycolmap_camera(camera_model, width, height, params)
    rec.add_camera_with_trivial_rig(cam)
    # Project the (undistorted) points into each view to make keypoints and tracks.
    P = np.asarray(points, dtype=np.float64)
    observations: list[list[tuple[int, int]]] = [[] for _ in range(len(P))]
    for i, name in enumerate(names):
        image_id = i + 1
        Rt = viewmats[i, :3, :4].double().numpy()
        pc = P @ Rt[:, :3].T + Rt[:, 3]
        in_front = pc[:, 2] > 1e-6
        xy = np.zeros((len(P), 2))
        xy[in_front] = np.asarray(cam.img_from_cam(pc[in_front]), dtype=np.float64)[:, :2]
        seen = in_front & (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        if visible is not None:
            seen &= visible[:, i]
        idx = np.nonzero(seen)[0]
        image = pycolmap.Image(name=name, keypoints=xy[idx], camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(Rt))
        for k, pid in enumerate(idx):
            observations[pid].append((image_id, k))
    for xyz, color, obs in zip(P, point_colors, observations, strict=True):
        track = pycolmap.Track([pycolmap.TrackElement(image_id, k) for image_id, k in obs])
        rec.add_point3D(xyz, track, color)

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared like the images
    try:
        (rec.write_text if text_model else rec.write_binary)(str(tmp))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# --- A textured scene for structure-from-motion ------------------------------------------------------
# The Gaussian object above is smooth colour gradients: too little texture for SIFT to match. This
# one is ray-cast (numpy, no rasterizer): a box standing on a ground plane, every face covered by a
# random blocky texture (sharp corners at several scales), photographed from an orbit. Images only,
# no COLMAP model: the trainer's reconstruction stage (reconstruct.py) must recover the cameras.

TEXTURE_SIZE = 256
_GROUND_HALF = 2.5  # the ground plane spans [-2.5, 2.5]^2 at z = 0
_BOX = (np.array([-0.6, -0.45, 0.0]), np.array([0.6, 0.45, 0.9]))  # axis-aligned box corners


def block_texture(rng: np.random.Generator) -> np.ndarray:
    """[T, T, 3] float texture: random coloured blocks at 3 scales plus fine grain."""
    tex = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3))
    for cells, weight in ((8, 0.45), (32, 0.35), (128, 0.2)):
        block = rng.random((cells, cells, 3))
        tex += weight * np.repeat(np.repeat(block, TEXTURE_SIZE // cells, axis=0), TEXTURE_SIZE // cells, axis=1)
    return np.clip(tex, 0.0, 1.0)


def _ray_cast(origin: np.ndarray, dirs: np.ndarray, textures: list[np.ndarray]) -> np.ndarray:
    """Colours [N, 3] of rays from `origin` along `dirs` [N, 3] hitting the box or the ground."""
    n = len(dirs)
    best_t, colour = np.full(n, np.inf), np.full((n, 3), 0.55)  # grey sky
    lo, hi = _BOX
    faces = [(axis, side) for axis in range(3) for side in (0, 1)]
    for k, (axis, side) in enumerate(faces):  # the box's 6 faces
        plane = (lo, hi)[side][axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (plane - origin[axis]) / dirs[:, axis]
        p = origin + t[:, None] * dirs
        u_ax, v_ax = [a for a in range(3) if a != axis]
        on = (t > 1e-6) & (t < best_t)
        on &= (p[:, u_ax] >= lo[u_ax]) & (p[:, u_ax] <= hi[u_ax]) & (p[:, v_ax] >= lo[v_ax]) & (p[:, v_ax] <= hi[v_ax])
        u = (p[:, u_ax] - lo[u_ax]) / (hi[u_ax] - lo[u_ax])
        v = (p[:, v_ax] - lo[v_ax]) / (hi[v_ax] - lo[v_ax])
        colour[on] = _sample(textures[1 + k % (len(textures) - 1)], u[on], v[on]) * (0.75 + 0.05 * k)
        best_t[on] = t[on]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origin[2] / dirs[:, 2]  # the ground, z = 0
    p = origin + t[:, None] * dirs
    on = (t > 1e-6) & (t < best_t) & (np.abs(p[:, 0]) <= _GROUND_HALF) & (np.abs(p[:, 1]) <= _GROUND_HALF)
    colour[on] = _sample(textures[0], (p[on, 0] / _GROUND_HALF + 1) / 2, (p[on, 1] / _GROUND_HALF + 1) / 2)
    return colour


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of texture coordinates u, v in [0, 1]."""
    x = np.clip(u, 0, 1) * (TEXTURE_SIZE - 1)
    y = np.clip(v, 0, 1) * (TEXTURE_SIZE - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, TEXTURE_SIZE - 1), np.minimum(y0 + 1, TEXTURE_SIZE - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def make_textured_scene(
    out_dir: Path, *, n_views: int = 16, width: int = 320, height: int = 240, seed: int = 0, arc_deg: float = 150.0
) -> list[str]:
    """Render `n_views` JPEG photos of the textured box into `out_dir/images/` (no COLMAP model).

    The cameras sweep `arc_deg` degrees of an orbit (radius 3.2, elevation 25..40 degrees) looking
    at the box, so neighbouring views overlap as a walk-around capture does. Returns the names.
    """
    if n_views < 2 or width < 32 or height < 32:
        raise ValueError(f"make_textured_scene: need at least 2 views of 32x32, got {n_views} of {width}x{height}")
    rng = np.random.default_rng(seed)
    textures = [block_texture(rng) for _ in range(4)]
    focal = 0.9 * width
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    rays_cam = np.stack([(u - width / 2) / focal, (v - height / 2) / focal, np.ones_like(u)], axis=-1).reshape(-1, 3)
    images_dir = Path(out_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n_views):
        az = math.radians(-arc_deg / 2 + arc_deg * i / (n_views - 1)) + 0.3
        el = math.radians(32.0 + 7.0 * math.sin(3.0 * i / n_views * math.pi))
        eye = 3.2 * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        m = look_at(eye, torch.tensor([0.0, 0.0, 0.35]), torch.tensor([0.0, 0.0, 1.0])).double().numpy()
        dirs = rays_cam @ m[:3, :3]  # camera-to-world rotation is R^T: rows of R map back
        rgb = _ray_cast(eye.double().numpy(), dirs, textures).reshape(height, width, 3)
        name = f"photo_{i:03d}.jpg"
        write_image(images_dir, name, rgb, "JPEG", quality=92)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m splatops_trainer.synthetic",
        description="Generate a small synthetic COLMAP scene (images/ + colmap/sparse_initial/).",
    )
    ap.add_argument("out_dir", type=Path, help="scene directory to create (existing files are replaced)")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--gaussians", type=int, default=1500)
    ap.add_argument("--points", type=int, default=None, help="sparse points (default: gaussians // 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--camera-model", default="PINHOLE", choices=CAMERA_MODELS)
    ap.add_argument("--text", action="store_true", help="write the COLMAP model as .txt instead of .bin")
    args = ap.parse_args(argv)
    try:
        scene = make_synthetic_scene(
            args.out_dir,
            n_views=args.views,
            width=args.width,
            height=args.height,
            n_gaussians=args.gaussians,
            n_points=args.points,
            seed=args.seed,
            camera_model=args.camera_model,
            text_model=args.text,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"synthetic scene: {scene.root} ({len(scene.image_names)} views {scene.width}x{scene.height}, "
        f"{scene.camera_model}, {len(scene.points)} points) in {scene.duration_s:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
