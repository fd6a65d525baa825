"""A benchmark scene of realistic size with view-dependent effects: a furnished room, ray-cast.

Fox (43 training views, no specular surfaces) rewards over-fitting and never exercises SH degrees
above 0. This scene is generated, so nothing licence-restricted enters the repository: a closed
room (8 x 6 x 3 m) with procedurally textured walls, floor and ceiling, and a table, boxes and
spheres in it. Shading is Lambert plus Blinn-Phong specular from a point light: sharp highlights
on the glossy spheres, broad sheens on the floor, the table, the glossy boxes and two satin walls
change colour with the view direction (what SH degree > 0 must learn); the other two walls, the
ceiling, a matt sphere and the matt boxes are diffuse. The cameras walk a loop around the table at
varying height, looking at a wandering point on it, as a hand-held capture does. Layout:

    OUT/images/frame_0000.jpg ...    JPEG (quality 95)
    OUT/sparse/0/                    COLMAP model: one shared PINHOLE camera, posed images, sparse
                                     points sampled on visible surfaces, with colours and tracks
                                     (every view that sees the point, occlusion tested)

Rendering is vectorised torch ray casting, one ray per pixel (or NxN with --supersample), on CUDA
when present. Everything comes from `seed`; the same arguments on the same device give the same
files.

    python -m splatops_trainer.synthetic_room OUT [--views 150 --width 960 --height 540 --small ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .synthetic import (
    TEXTURE_SIZE,
    block_texture,
    colmap_camera_params,
    look_at,
    write_colmap_model,
    write_image,
)

ROOM_HALF = (4.0, 3.0)  # the room spans [-4, 4] x [-3, 3] in x, y
ROOM_HEIGHT = 3.0
LIGHT = (0.6, -0.4, 2.6)  # a point light below the ceiling
LIGHT_RGB = (1.0, 0.96, 0.88)
AMBIENT = 0.35
SPECULAR_GAIN = 1.6  # highlights may saturate, as in photos
EPS = 1e-4
MODEL_SUBDIR = Path("sparse") / "0"  # where gsplat's reference parser (and ours) looks first
CHUNK = 1 << 16  # rays per batch: the [rays, boxes, 3] temporaries stay in cache on a CPU
SMALL = {"n_views": 24, "width": 128, "height": 72, "n_points": 3000}


@dataclasses.dataclass(frozen=True)
class Material:
    texture: int  # index into the scene's textures
    repeat: float  # metres per texture repeat; spheres: 2 / repeat repeats around (whole: no seam)
    tint: tuple[float, float, float]  # base colour; the texture modulates it by +-contrast
    contrast: float
    ks: float = 0.0  # specular strength (0 = diffuse)
    shininess: float = 1.0


# Materials, by index. Room faces are 0..5 (-x, +x, -y, +y, floor, ceiling).
_WALL_A, _WALL_B = (0.85, 0.80, 0.70), (0.70, 0.78, 0.85)
MATERIALS = (
    Material(1, 1.6, _WALL_A, 0.6), Material(1, 1.6, _WALL_A, 0.6),  # walls x: matt paint
    Material(2, 1.6, _WALL_B, 0.6, ks=0.12, shininess=4.0),  # walls y: satin paint, a broad sheen
    Material(2, 1.6, _WALL_B, 0.6, ks=0.12, shininess=4.0),
    Material(0, 1.2, (0.62, 0.45, 0.30), 0.7, ks=0.35, shininess=10.0),  # varnished wooden floor
    Material(3, 2.0, (0.92, 0.92, 0.90), 0.3),  # ceiling
    Material(4, 0.8, (0.55, 0.38, 0.25), 0.8, ks=0.2, shininess=20.0),  # table
    Material(5, 0.5, (0.25, 0.45, 0.75), 0.7, ks=0.4, shininess=12.0),  # glossy box
    Material(3, 0.6, (0.75, 0.70, 0.45), 0.8),  # matt box
    Material(5, 2.0, (0.80, 0.25, 0.20), 0.6, ks=0.7, shininess=80.0),  # glossy spheres: sharp highlights
    Material(4, 1.0, (0.35, 0.70, 0.40), 0.8),  # matt sphere
)
GLOSSY = frozenset(i for i, m in enumerate(MATERIALS) if m.ks > 0)
# (lo corner, hi corner, material)
BOXES = (
    ((-0.8, -0.5, 0.0), (0.8, 0.5, 0.75), 6),  # table
    ((-0.55, -0.3, 0.75), (-0.15, 0.1, 1.05), 7),  # glossy box on the table
    ((3.3, -1.2, 0.0), (4.0, 0.6, 1.1), 8),  # cabinet against the +x wall
    ((-3.8, 1.6, 0.0), (-2.9, 2.9, 0.8), 7),  # glossy chest in a corner
    ((1.0, 1.2, 0.0), (1.5, 1.7, 0.5), 8),  # a crate on the floor
)
# (centre, radius, material)
SPHERES = (
    ((0.35, 0.1, 0.95), 0.2, 9),
    ((0.05, -0.3, 0.87), 0.12, 9),
    ((-1.3, -1.0, 0.35), 0.35, 9),
    ((-2.9, -2.2, 0.45), 0.45, 10),
)


@dataclasses.dataclass(frozen=True)
class Hits:
    """Where rays end: distance, point, unit normal (towards the ray) and material, per ray."""

    t: torch.Tensor  # [N]
    points: torch.Tensor  # [N, 3]
    normals: torch.Tensor  # [N, 3]
    material: torch.Tensor  # [N] long
    uv: torch.Tensor  # [N, 2] texture coordinates, in repeats


@dataclasses.dataclass(frozen=True)
class RoomScene:
    root: Path
    image_names: list[str]
    width: int
    height: int
    K: torch.Tensor  # [3, 3]
    viewmats: torch.Tensor  # [V, 4, 4] world-to-camera (OpenCV), as written
    points: np.ndarray  # [P, 3]
    point_colors: np.ndarray  # [P, 3] uint8
    visible: np.ndarray  # [P, V] bool: the tracks
    render_s: float  # rendering and writing the images, sampling the sparse points
    duration_s: float  # everything


class Room:
    """The scene's geometry and textures on one device; `cast` and `shade` work on ray batches."""

    def __init__(self, seed: int, device: torch.device) -> None:
        rng = np.random.default_rng(seed)
        tex = np.stack([block_texture(rng) for _ in range(6)])  # [T, S, S, 3]
        self.textures = torch.from_numpy(tex).float().to(device).reshape(-1, 3)  # texel (t, y, x) flat
        self.device = device
        f = lambda x: torch.tensor(x, dtype=torch.float32, device=device)
        self.box_lo, self.box_hi = f([b[0] for b in BOXES]), f([b[1] for b in BOXES])
        self.box_mat = torch.tensor([b[2] for b in BOXES], device=device)
        self.sph_c, self.sph_r = f([s[0] for s in SPHERES]), f([s[1] for s in SPHERES])
        self.sph_mat = torch.tensor([s[2] for s in SPHERES], device=device)
        self.room_lo = f([-ROOM_HALF[0], -ROOM_HALF[1], 0.0])
        self.room_hi = f([ROOM_HALF[0], ROOM_HALF[1], ROOM_HEIGHT])
        self.mat = {k: f([getattr(m, k) for m in MATERIALS]) for k in ("repeat", "tint", "contrast", "ks", "shininess")}
        self.mat_tex = torch.tensor([m.texture for m in MATERIALS], device=device)
        self.light, self.light_rgb = f(LIGHT), f(LIGHT_RGB)

    def cast(self, o: torch.Tensor, d: torch.Tensor) -> Hits:
        """Nearest hit of rays from o [N, 3] or [3] along unit d [N, 3]; every ray hits (closed room)."""
        o = o.expand_as(d)
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        # The room, from inside: the first wall each ray leaves through.
        t_room_axes = torch.where(d > 0, (self.room_hi - o) * inv, (self.room_lo - o) * inv)
        t_room, axis = t_room_axes.min(dim=1)
        room_mat = 2 * axis + (d.gather(1, axis[:, None])[:, 0] > 0).long()
        # Boxes (slab test): [N, B].
        t1 = (self.box_lo[None] - o[:, None]) * inv[:, None]
        t2 = (self.box_hi[None] - o[:, None]) * inv[:, None]
        t_near, near_axis = torch.minimum(t1, t2).max(dim=2)
        t_far = torch.maximum(t1, t2).min(dim=2).values
        t_box = torch.where((t_near <= t_far) & (t_near > EPS), t_near, torch.inf)
        # Spheres (the nearer root; no camera is inside one): [N, S].
        oc = o[:, None] - self.sph_c[None]
        b = (oc * d[:, None]).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.sph_r[None] ** 2)
        t_sph = -b - disc.clamp(min=0).sqrt()
        t_sph = torch.where((disc > 0) & (t_sph > EPS), t_sph, torch.inf)
        t, which = torch.cat([t_room[:, None], t_box, t_sph], dim=1).min(dim=1)
        return self._hits(o, d, t, which, axis, room_mat, near_axis)

    def _hits(self, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, which: torch.Tensor, room_axis: torch.Tensor,
              room_mat: torch.Tensor, box_axis: torch.Tensor) -> Hits:
        """Hit details for the winning primitive (`which`: 0 the room, then boxes, then spheres)."""
        n_box = len(BOXES)
        p = o + t[:, None] * d
        is_box = (which >= 1) & (which <= n_box)
        is_sph = which > n_box
        bi = (which - 1).clamp(0, n_box - 1)
        si = (which - 1 - n_box).clamp(0, len(SPHERES) - 1)
        axis = torch.where(is_box, box_axis.gather(1, bi[:, None])[:, 0], room_axis)
        normals = -torch.sign(d.gather(1, axis[:, None])) * F.one_hot(axis, 3).to(d.dtype)  # planes face the ray
        sph_n = F.normalize(p - self.sph_c[si], dim=1)
        normals = torch.where(is_sph[:, None], sph_n, normals)
        material = torch.where(is_box, self.box_mat[bi], torch.where(is_sph, self.sph_mat[si], room_mat))
        # Planar faces: the two in-plane world axes, in metres; spheres: longitude and latitude.
        u_ax, v_ax = torch.where(axis == 0, 1, 0), torch.where(axis == 2, 1, 2)
        uv = torch.stack([p.gather(1, u_ax[:, None])[:, 0], p.gather(1, v_ax[:, None])[:, 0]], dim=1)
        sph_uv = torch.stack([torch.atan2(sph_n[:, 1], sph_n[:, 0]) / math.pi, torch.acos(sph_n[:, 2].clamp(-1, 1)) / math.pi], 1)
        uv = torch.where(is_sph[:, None], sph_uv, uv) / self.mat["repeat"][material][:, None]
        return Hits(t=t, points=p, normals=normals, material=material, uv=uv)

    def albedo(self, hits: Hits) -> torch.Tensor:
        """Bilinear, wrapping texture lookup [N, 3]."""
        s = TEXTURE_SIZE
        xy = (hits.uv - torch.floor(hits.uv)) * s - 0.5
        x0, y0 = torch.floor(xy[:, 0]), torch.floor(xy[:, 1])
        fx, fy = (xy[:, 0] - x0)[:, None], (xy[:, 1] - y0)[:, None]
        x0, y0 = x0.long() % s, y0.long() % s
        x1, y1 = (x0 + 1) % s, (y0 + 1) % s
        base = self.mat_tex[hits.material] * s * s
        tex = lambda y, x: self.textures[base + y * s + x]
        rgb = (tex(y0, x0) * (1 - fx) + tex(y0, x1) * fx) * (1 - fy) + (tex(y1, x0) * (1 - fx) + tex(y1, x1) * fx) * fy
        m = hits.material
        return self.mat["tint"][m] * (1.0 + self.mat["contrast"][m][:, None] * (2.0 * rgb - 1.0))

    def shade(self, hits: Hits, eye: torch.Tensor) -> torch.Tensor:
        """[N, 3] colours in [0, 1] seen from `eye` ([3] or [N, 3]): Lambert + Blinn-Phong specular."""
        to_light = self.light - hits.points
        dist2 = (to_light * to_light).sum(1, keepdim=True)
        l_dir = to_light / dist2.sqrt()
        v_dir = F.normalize(eye - hits.points, dim=1)
        n = hits.normals
        falloff = 9.0 / (9.0 + dist2)  # softened inverse square: the room stays lit at the far walls
        diffuse = (n * l_dir).sum(1, keepdim=True).clamp(min=0) * falloff
        h = F.normalize(l_dir + v_dir, dim=1)
        m = hits.material
        spec = (n * h).sum(1, keepdim=True).clamp(min=0) ** self.mat["shininess"][m][:, None]
        spec = spec * self.mat["ks"][m][:, None] * falloff * ((n * l_dir).sum(1, keepdim=True) > 0)
        rgb = self.albedo(hits) * (AMBIENT + (1.0 - AMBIENT) * diffuse) + SPECULAR_GAIN * spec
        return (rgb * self.light_rgb).clamp(0.0, 1.0)

    def render(self, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, ss: int = 1) -> torch.Tensor:
        """[H, W, 3] image of one view (ss x ss rays per pixel, averaged)."""
        dev = self.device
        off = (torch.arange(ss, device=dev, dtype=torch.float32) + 0.5) / ss
        ys = (torch.arange(height, device=dev, dtype=torch.float32)[:, None] + off[None]).reshape(-1)
        xs = (torch.arange(width, device=dev, dtype=torch.float32)[:, None] + off[None]).reshape(-1)
        v, u = torch.meshgrid(ys, xs, indexing="ij")
        eye, d = camera_rays(viewmat.to(dev), K.to(dev), u.reshape(-1), v.reshape(-1))
        rgb = torch.cat([self.shade(self.cast(eye, c), eye) for c in d.split(CHUNK)]).reshape(height, ss, width, ss, 3)
        return rgb.mean(dim=(1, 3))


def camera_rays(viewmat: torch.Tensor, K: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera centre [3] and unit world directions [N, 3] through pixel coordinates u, v."""
    R, tr = viewmat[:3, :3], viewmat[:3, 3]
    cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], dim=1)
    return -R.T @ tr, F.normalize(cam @ R, dim=1)


def walk_viewmats(n_views: int, rng: np.random.Generator) -> torch.Tensor:
    """[V, 4, 4] a loop around the table (radii 2.5 x 1.9 m), eye height 1.1..1.8 m, looking at a
    point that wanders over the table, with a little hand-held jitter."""
    mats = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        jitter = rng.normal(0.0, 0.03, size=3)
        eye = torch.tensor([2.5 * math.cos(a), 1.9 * math.sin(a), 1.45 + 0.35 * math.sin(3 * a)]) + torch.from_numpy(jitter).float()
        target = torch.tensor([0.5 * math.sin(2 * a + 1.0), 0.35 * math.cos(5 * a), 0.8 + 0.25 * math.sin(4 * a)])
        mats.append(look_at(eye, target, torch.tensor([0.0, 0.0, 1.0])))
    return torch.stack(mats)


def _sample_points(room: Room, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int, n: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n surface points seen through random pixels of one view, with their colour in that view."""
    # pixel centres, as the rendered pixel shows (with --supersample 1) exactly that ray's colour
    uv = (torch.randint(0, width * height, (n,), generator=gen) + 0.0).to(room.device)
    uv = torch.stack([uv % width, torch.div(uv, width, rounding_mode="floor")], dim=1) + 0.5
    eye, d = camera_rays(viewmat.to(room.device), K.to(room.device), uv[:, 0], uv[:, 1])
    hits = room.cast(eye, d)
    return hits.points, room.shade(hits, eye)


def visibility(room: Room, points: torch.Tensor, viewmats: torch.Tensor, K: torch.Tensor, width: int,
               height: int) -> torch.Tensor:
    """[P, V] bool: the point projects into the view and nothing stands between it and the camera."""
    out = torch.zeros(len(points), len(viewmats), dtype=torch.bool, device=points.device)
    K = K.to(points.device)
    for j, vm in enumerate(viewmats.to(points.device)):
        pc = points @ vm[:3, :3].T + vm[:3, 3]
        z = pc[:, 2].clamp(min=1e-6)
        u, v = K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]
        inside = (pc[:, 2] > 1e-3) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        eye = -vm[:3, :3].T @ vm[:3, 3]
        to_p = points - eye
        dist = to_p.norm(dim=1)
        hits = room.cast(eye, to_p / dist[:, None])
        out[:, j] = inside & (hits.t >= dist * (1 - 1e-3) - 1e-3)
    return out


def _render_all(room: Room, images_dir: Path, names: list[str], viewmats: torch.Tensor, K: torch.Tensor, width: int,
                height: int, supersample: int, quality: int) -> None:
    """Render and write every view. On the CPU, one view per core, each single-threaded: a view's
    tensor ops scale poorly over threads (memory-bound), whole views do (the ops release the GIL)."""

    def one(i: int) -> None:
        rgb = room.render(viewmats[i], K, width, height, supersample).cpu().numpy()
        write_image(images_dir, names[i], rgb, "JPEG", quality)

    if room.device.type != "cpu":
        for i in range(len(names)):
            one(i)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(one, range(len(names))))
    finally:
        torch.set_num_threads(threads)


def make_room_scene(
    out_dir: Path, *, n_views: int = 150, width: int = 960, height: int = 540, n_points: int = 12_000,
    seed: int = 0, supersample: int = 1, quality: int = 95, device: str = "auto",
) -> RoomScene:
    """Render the room into `out_dir` (images/ and sparse/0/; existing files there are replaced)."""
    if n_views < 2 or width < 16 or height < 16 or n_points < n_views or supersample < 1:
        raise ValueError(f"make_room_scene: need >= 2 views of >= 16x16, n_points >= n_views and supersample >= 1, "
                         f"got {n_views} views of {width}x{height}, {n_points} points, supersample {supersample}")
    t0 = time.perf_counter()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    room = Room(seed, dev)
    viewmats = walk_viewmats(n_views, np.random.default_rng([seed, 1]))
    focal = 0.72 * width  # about 70 degrees across, a phone's main camera
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    names = [f"frame_{i:04d}.jpg" for i in range(n_views)]
    for stale in sorted((Path(out_dir) / "images").glob("frame_*.jpg")):  # an earlier, longer walk's views
        if stale.name not in names:
            stale.unlink()
    _render_all(room, Path(out_dir) / "images", names, viewmats, K, width, height, supersample, quality)
    gen = torch.Generator().manual_seed(seed)
    pts, cols = zip(*(_sample_points(room, viewmats[i], K, width, height, n_points // n_views + (i < n_points % n_views), gen)
                      for i in range(n_views)))
    render_s = time.perf_counter() - t0
    points, colors = torch.cat(pts), torch.cat(cols)
    vis = visibility(room, points, viewmats, K, width, height)
    keep = vis.sum(1) >= 2  # as SfM: a point is triangulated from two views at least
    points_np = points[keep].double().cpu().numpy()
    colors_np = (colors[keep] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    vis_np = vis[keep].cpu().numpy()
    params = colmap_camera_params("PINHOLE", focal, width, height)
    write_colmap_model(Path(out_dir) / MODEL_SUBDIR, names, width, height, "PINHOLE", params, viewmats, points_np,
                       colors_np, text_model=False, visible=vis_np)
    return RoomScene(root=Path(out_dir), image_names=names, width=width, height=height, K=K, viewmats=viewmats,
                     points=points_np, point_colors=colors_np, visible=vis_np, render_s=render_s,
                     duration_s=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splatops_trainer.synthetic_room", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, help="scene directory to create (existing files are replaced)")
    ap.add_argument("--views", type=int, default=150)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--points", type=int, default=12_000, help="sparse points sampled (those seen twice are kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--supersample", type=int, default=1, metavar="N", help="N x N rays per pixel (anti-aliasing)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--small", action="store_true", help=f"CI size: {SMALL}")
    args = ap.parse_args(argv)
    size = SMALL if args.small else {"n_views": args.views, "width": args.width, "height": args.height, "n_points": args.points}
    try:
        scene = make_room_scene(args.out_dir, seed=args.seed, supersample=args.supersample, quality=args.quality,
                                device=args.device, **size)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mb = sum(f.stat().st_size for f in (args.out_dir / "images").iterdir()) / 2**20
    print(f"room scene: {scene.root} ({len(scene.image_names)} views {scene.width}x{scene.height}, {len(scene.points)} "
          f"points, mean track {scene.visible.sum(1).mean():.1f}) in {scene.duration_s:.1f}s "
          f"(render {scene.render_s:.1f}s); images {mb:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
