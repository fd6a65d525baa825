"""Differentiable rasterization of 3D Gaussians, on the GPU (gsplat CUDA) or the CPU (pure PyTorch).

`rasterize()` takes gsplat 1.5.3 `gsplat.rasterization()`'s argument names and semantics. Its info
dict carries the keys gsplat's `DefaultStrategy` and `MCMCStrategy` read, with gsplat's shapes, so
the strategies run unchanged on both backends:

    means2d   [C, N, 2] (packed: [nnz, 2]), in the autograd graph (the strategy calls retain_grad())
    radii     [C, N, 2] int32 (packed: [nnz, 2]); 0 where a Gaussian is not visible in a camera
    depths, conics, opacities, tiles_per_gauss, isect_ids, flatten_ids, isect_offsets,
    width, height, tile_size, tile_width, tile_height, n_cameras, n_batches,
    camera_ids / gaussian_ids (packed only, else None), batch_ids (None)

backend "cuda" is `gsplat.rasterization` itself (imported lazily: importing this module never loads
gsplat's CUDA extension). backend "cpu" projects and evaluates SH with gsplat's pure-PyTorch reference
functions (`gsplat.cuda._torch_impl`), bins Gaussians into tiles with a vectorised equivalent of
`_isect_tiles` (same isect_ids encoding; the reference loops in Python per Gaussian, far too slow to
train with) and composites front to back, tile by tile, with plain autograd ops. It follows gsplat's
CUDA kernel: pixel centres at +0.5, alpha = min(0.999, opacity * exp(-sigma)), Gaussians with
alpha < 1/255 or sigma < 0 skipped, a pixel stops at the Gaussian that would push its transmittance
to <= 1e-4 (that Gaussian excluded).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

Backend = Literal["cuda", "cpu"]

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
# Upper bound on [tiles, pixels, Gaussians] elements composited at once on the CPU backend: bounds
# the autograd memory (a dozen float32 tensors of this size are kept for backward).
_CHUNK_ELEMENTS = 1 << 22


def default_backend(device: torch.device | str) -> Backend:
    """The backend for tensors on `device`: "cuda" on a CUDA device, else "cpu"."""
    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None,
    backend: Backend,
    backgrounds: Tensor | None = None,
    absgrad: bool = False,
    packed: bool = False,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N Gaussians into C pinhole cameras.

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations (w, x, y, z), need not be normalised.
        scales: [N, 3] standard deviations (already exp'd).
        opacities: [N] in [0, 1] (already sigmoid'ed).
        colors: SH coefficients [N, K, 3] with (sh_degree + 1)**2 <= K, or, with sh_degree=None,
            post-activation colours [N, D] or [C, N, D].
        viewmats: [C, 4, 4] world-to-camera (OpenCV convention: x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics (pixels; pixel (0, 0)'s centre is at (0.5, 0.5)).
        width, height: image size in pixels.
        sh_degree: active SH degree (0..4), or None for plain colours.
        backend: "cuda" (gsplat's CUDA kernels) or "cpu" (pure PyTorch); see `default_backend`.
        backgrounds: [C, D] colour behind the Gaussians; None = black.
        absgrad: also accumulate `info["means2d"].absgrad` (sum over pixels of |dL/dmeans2d|).
        packed: return per-(camera, Gaussian) data only for visible pairs (gsplat's packed mode).
        near_plane, far_plane, eps2d, tile_size, rasterize_mode: as in `gsplat.rasterization`.

    Returns:
        (colors [C, H, W, D], alphas [C, H, W, 1], info) - info as described in the module doc.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds)
    if backend == "cuda":
        from gsplat import rasterization  # lazy: loads (or JIT-builds) the CUDA extension

        return rasterization(
            means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats, Ks=Ks,
            width=width, height=height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
            sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds, absgrad=absgrad,
            rasterize_mode=rasterize_mode,
        )
    if backend != "cpu":
        raise ValueError(f"backend must be 'cuda' or 'cpu', got {backend!r}")
    return _rasterize_cpu(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        sh_degree=sh_degree, backgrounds=backgrounds, absgrad=absgrad, packed=packed,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, tile_size=int(tile_size),
        rasterize_mode=rasterize_mode,
    )  # fmt: skip


def _check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    backgrounds: Tensor | None,
) -> None:
    n = means.shape[0] if means.dim() == 2 else -1
    c = viewmats.shape[0] if viewmats.dim() == 3 else -1
    problems = []
    if means.dim() != 2 or means.shape[1] != 3:
        problems.append(f"means must be [N, 3], got {list(means.shape)}")
    if tuple(quats.shape) != (n, 4):
        problems.append(f"quats must be [N, 4] = [{n}, 4], got {list(quats.shape)}")
    if tuple(scales.shape) != (n, 3):
        problems.append(f"scales must be [N, 3] = [{n}, 3], got {list(scales.shape)}")
    if tuple(opacities.shape) != (n,):
        problems.append(f"opacities must be [N] = [{n}], got {list(opacities.shape)}")
    if viewmats.dim() != 3 or tuple(viewmats.shape[1:]) != (4, 4):
        problems.append(f"viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    if tuple(Ks.shape) != (c, 3, 3):
        problems.append(f"Ks must be [C, 3, 3] = [{c}, 3, 3], got {list(Ks.shape)}")
    if width < 1 or height < 1:
        problems.append(f"width and height must be positive, got {width}x{height}")
    if sh_degree is not None:
        if colors.dim() != 3 or colors.shape[0] != n or colors.shape[2] != 3:
            problems.append(f"colors must be SH coefficients [N, K, 3] with N={n}, got {list(colors.shape)}")
        elif not 0 <= sh_degree <= 4 or (sh_degree + 1) ** 2 > colors.shape[1]:
            problems.append(f"sh_degree {sh_degree} needs (sh_degree+1)**2 <= K={colors.shape[1]} and <= 4")
    elif not (colors.dim() == 2 and colors.shape[0] == n) and not (colors.dim() == 3 and colors.shape[:2] == (c, n)):
        problems.append(f"colors without sh_degree must be [N, D] or [C, N, D], got {list(colors.shape)}")
    if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != c):
        problems.append(f"backgrounds must be [C, D] with C={c}, got {list(backgrounds.shape)}")
    if problems:
        raise ValueError("rasterize: " + "; ".join(problems))


def _rasterize_cpu(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None,
    backgrounds: Tensor | None,
    absgrad: bool,
    packed: bool,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    tile_size: int,
    rasterize_mode: str,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    n, c = means.shape[0], viewmats.shape[0]
    radii, means2d, depths, conics, opac = _project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, antialiased=rasterize_mode == "antialiased",
    )  # fmt: skip
    rgb = _view_colors(means, colors, viewmats, sh_degree)
    camera_ids = gaussian_ids = None
    if packed:
        camera_ids, gaussian_ids = (radii > 0).all(dim=-1).nonzero(as_tuple=True)
        radii, means2d, depths, conics, opac, rgb = (
            t[camera_ids, gaussian_ids] for t in (radii, means2d, depths, conics, opac, rgb)
        )
        image_ids = camera_ids
        flat = (means2d, radii, depths, conics, opac, rgb)
    else:
        image_ids = torch.arange(c, device=means.device).repeat_interleave(n)
        flat = (means2d.reshape(c * n, 2), radii.reshape(c * n, 2), depths.reshape(c * n),
                conics.reshape(c * n, 3), opac.reshape(c * n), rgb.reshape(c * n, -1))  # fmt: skip
    flat_means2d, flat_radii, flat_depths, flat_conics, flat_opac, flat_rgb = flat

    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(
        flat_means2d, flat_radii, flat_depths, image_ids, tile_size, tile_width, tile_height, n_images=c
    )
    if not packed:
        tiles_per_gauss = tiles_per_gauss.reshape(c, n)

    absgrad_sink = means2d if absgrad and means2d.requires_grad else None
    render_colors, render_alphas = composite(
        flat_means2d, flat_conics, flat_opac, flat_rgb, isect_ids, flatten_ids,
        n_images=c, width=width, height=height, tile_size=tile_size, backgrounds=backgrounds,
        absgrad_sink=absgrad_sink,
    )  # fmt: skip
    info: dict[str, Any] = {
        "batch_ids": None, "camera_ids": camera_ids, "gaussian_ids": gaussian_ids, "radii": radii,
        "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac,
        "tile_width": tile_width, "tile_height": tile_height, "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids, "flatten_ids": flatten_ids,
        "isect_offsets": _isect_offsets(isect_ids, c, tile_width, tile_height),  # [C, th, tw]
        "width": width, "height": height, "tile_size": tile_size, "n_batches": 1, "n_cameras": c,
    }
    return render_colors, render_alphas, info


def visible_gaussians(info: dict[str, Any], n: int) -> Tensor:
    """[N] bool of a render's `info`: the Gaussians some camera saw (a radius above 0)."""
    if info["gaussian_ids"] is not None:  # packed
        seen = torch.zeros(n, dtype=torch.bool, device=info["radii"].device)
        return seen.index_fill_(0, info["gaussian_ids"], True)
    return (info["radii"] > 0).all(dim=-1).any(dim=0)


def _project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, *, eps2d: float, near_plane: float, far_plane: float, antialiased: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Every Gaussian in every camera, with gsplat's reference projection: radii [C, N, 2],
    means2d [C, N, 2], depths [C, N], conics [C, N, 3], opacities [C, N] (antialiased: compensated)."""
    from gsplat.cuda._torch_impl import (  # pure PyTorch: never touches the CUDA extension
        _fully_fused_projection,
        _quat_scale_to_covar_preci,
    )

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
        far_plane=far_plane, calc_compensations=antialiased,
    )  # fmt: skip
    opac = opacities[None, :].expand(viewmats.shape[0], means.shape[0])
    if compensations is not None:
        opac = opac * compensations
    return radii, means2d, depths, conics, opac


def _view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """[C, N, D] colours: SH evaluated towards each camera (sh_degree set), else the given colours."""
    from gsplat.cuda._torch_impl import _spherical_harmonics

    n, c = means.shape[0], viewmats.shape[0]
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        n_bases = (sh_degree + 1) ** 2
        shs = colors[None, :, :n_bases, :].expand(c, n, n_bases, 3)
        return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)  # gsplat's offset
    if colors.dim() == 2:
        return colors[None].expand(c, n, colors.shape[-1])
    return colors


def _isect_offsets(isect_ids: Tensor, n_images: int, tile_width: int, tile_height: int) -> Tensor:
    from gsplat.cuda._torch_impl import _isect_offset_encode

    return _isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    image_ids: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    *,
    n_images: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Vectorised `gsplat.cuda._torch_impl._isect_tiles` over a flat list of projected Gaussians.

    Args: means2d [X, 2], radii [X, 2] (0 = invisible), depths [X], image_ids [X] (which image each
    entry belongs to).
    Returns (tiles_per_gauss [X] int32, isect_ids [M] int64 sorted, flatten_ids [M] int32), with
    gsplat's encoding: isect_id = image_id << (tile_bits + 32) | tile_id << 32 | float32 depth bits,
    so sorting orders by image, then tile, then depth; flatten_ids index the X entries.
    """
    device = means2d.device
    visible = (radii > 0).all(dim=-1)
    tile_xy = means2d.detach().float() / tile_size
    tile_r = radii.float() / tile_size
    lo = torch.floor(tile_xy - tile_r).long()
    hi = torch.ceil(tile_xy + tile_r).long()
    limits = torch.tensor([tile_width, tile_height], device=device)
    lo = torch.minimum(lo.clamp(min=0), limits)
    hi = torch.minimum(hi.clamp(min=0), limits)
    span = hi - lo  # [X, 2] tiles covered along x and y
    tiles_per_gauss = torch.where(visible, span[:, 0] * span[:, 1], 0)

    src = torch.repeat_interleave(torch.arange(means2d.shape[0], device=device), tiles_per_gauss)
    starts = torch.cumsum(tiles_per_gauss, 0) - tiles_per_gauss
    k = torch.arange(src.shape[0], device=device) - starts[src]  # index of the tile within the box
    w = span[src, 0]
    tx = lo[src, 0] + k % w
    ty = lo[src, 1] + k // w
    tile_ids = ty * tile_width + tx
    tile_bits = (tile_width * tile_height).bit_length()
    if n_images.bit_length() + tile_bits + 32 > 64:
        raise ValueError(f"too many images x tiles to encode: {n_images} x {tile_width * tile_height}")
    depth_bits = depths.detach().float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (image_ids[src].long() << (tile_bits + 32)) | (tile_ids << 32) | depth_bits[src]
    isect_ids, order = torch.sort(isect_ids)
    flatten_ids = src[order].int()
    return tiles_per_gauss.int(), isect_ids, flatten_ids


def composite(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    colors: Tensor,
    isect_ids: Tensor,
    flatten_ids: Tensor,
    *,
    n_images: int,
    width: int,
    height: int,
    tile_size: int,
    backgrounds: Tensor | None = None,
    absgrad_sink: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of depth-sorted Gaussians, tile by tile, differentiable.

    Args: flat per-entry data means2d [X, 2], conics [X, 3], opacities [X], colors [X, D]; the
    sorted isect_ids / flatten_ids of `isect_tiles`; backgrounds [n_images, D] or None.
    absgrad_sink: the tensor whose `.absgrad` (its own shape, reshaped from [X, 2]) receives the
    per-pixel absolute means2d gradients during backward (gsplat's absgrad), or None.
    Returns (colors [I, H, W, D], alphas [I, H, W, 1]).
    """
    device, dtype = means2d.device, means2d.dtype
    x, d = means2d.shape[0], colors.shape[-1]
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_image = tile_width * tile_height
    n_tiles = n_images * tiles_per_image
    p = tile_size * tile_size
    layout = _TileLayout(isect_ids, flatten_ids, x, n_tiles, tiles_per_image, tile_width, tile_size, dtype)

    tile_colors = torch.zeros(n_tiles, p, d, device=device, dtype=dtype)
    tile_alphas = torch.zeros(n_tiles, p, 1, device=device, dtype=dtype)
    if layout.active.numel():
        out_c, out_a = _composite_active(layout, means2d, conics, opacities, colors, tile_size, absgrad_sink)
        tile_colors = tile_colors.index_copy(0, layout.active, out_c)
        tile_alphas = tile_alphas.index_copy(0, layout.active, out_a)
    else:  # nothing visible: stay in the graph (zero gradients) so loss.backward() still works
        zero = (means2d.sum() + conics.sum() + opacities.sum() + colors.sum()) * 0.0
        tile_colors, tile_alphas = tile_colors + zero, tile_alphas + zero

    if backgrounds is not None:
        bg = backgrounds.to(dtype).repeat_interleave(tiles_per_image, dim=0)  # [n_tiles, D]
        tile_colors = tile_colors + bg[:, None, :] * (1.0 - tile_alphas)

    def untile(t: Tensor) -> Tensor:
        t = t.reshape(n_images, tile_height, tile_width, tile_size, tile_size, t.shape[-1])
        t = t.permute(0, 1, 3, 2, 4, 5).reshape(n_images, tile_height * tile_size, tile_width * tile_size, -1)
        return t[:, :height, :width, :]

    return untile(tile_colors), untile(tile_alphas)


class _TileLayout:
    """Which entries each tile composites, front to back: the tiles with at least one Gaussian
    (`active`, busiest first), their entry counts, and `gather` [A, M], each active tile's entries
    padded with `x` (an extra entry of zero opacity) to the busiest tile's count."""

    @torch.no_grad()
    def __init__(self, isect_ids: Tensor, flatten_ids: Tensor, x: int, n_tiles: int, tiles_per_image: int,
                 tile_width: int, tile_size: int, dtype: torch.dtype) -> None:
        device = isect_ids.device
        tile_bits = tiles_per_image.bit_length()
        key = isect_ids >> 32
        g = (key >> tile_bits) * tiles_per_image + (key & ((1 << tile_bits) - 1))  # global tile index
        self.counts = counts = torch.bincount(g, minlength=n_tiles)
        active = counts.nonzero().squeeze(1)  # tiles with at least one Gaussian
        # busiest first: a chunk pads its tiles to its own first tile's count, not the global max
        self.active = active = active[torch.argsort(counts[active], descending=True, stable=True)]
        slot = torch.full((n_tiles,), -1, dtype=torch.long, device=device)
        slot[active] = torch.arange(active.shape[0], device=device)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(g.shape[0], device=device) - starts[g]
        m_max = int(counts.max()) if active.numel() else 0
        self.gather = torch.full((active.shape[0], max(m_max, 1)), x, dtype=torch.long, device=device)
        self.gather[slot[g], rank] = flatten_ids.long()
        self.x = x
        tile_ids = torch.arange(n_tiles, device=device) % tiles_per_image
        # tile centres: pixel coordinates relative to them stay within +-tile_size/2 (float32 headroom)
        self.origins = (torch.stack([tile_ids % tile_width, tile_ids // tile_width], dim=-1).to(dtype) + 0.5) * tile_size
        self.feats = _pixel_features(tile_size, device, dtype)  # [P, 6]


def _composite_active(
    layout: _TileLayout, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, tile_size: int,
    absgrad_sink: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """[A, P, D] colours and [A, P, 1] alphas of the active tiles, in chunks of similar counts."""
    pad = lambda t: torch.cat([t, t.new_zeros((1,) + t.shape[1:])])  # noqa: E731
    m_pad, con_pad, op_pad, col_pad = pad(means2d), pad(conics), pad(opacities), pad(colors)
    active, counts, p = layout.active, layout.counts, tile_size * tile_size
    out_c, out_a = [], []
    s = 0
    while s < active.shape[0]:
        m_here = max(int(counts[active[s]]), 1)
        per_chunk = max(1, _CHUNK_ELEMENTS // (p * m_here))
        # ...and stops where tiles have less than half as many (bounds the padding waste)
        per_chunk = min(per_chunk, int((counts[active[s:]] * 2 > m_here).sum()))
        idx = layout.gather[s : s + per_chunk, :m_here]
        tiles = active[s : s + per_chunk]
        s += per_chunk
        c_, a_ = _composite_tiles(
            m_pad[idx] - layout.origins[tiles][:, None, :], con_pad[idx], op_pad[idx], col_pad[idx], layout.feats,
            absgrad=(absgrad_sink, idx, layout.x) if absgrad_sink is not None else None,
        )  # fmt: skip
        out_c.append(c_)
        out_a.append(a_)
    return torch.cat(out_c), torch.cat(out_a)


def _pixel_features(tile_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[P, 6] monomials (u^2, v^2, u*v, u, v, 1) of the pixel centres relative to the tile centre,
    row-major."""
    c = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - tile_size / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


def _composite_tiles(
    m: Tensor,  # [A, M, 2] means2d relative to the tile centre, sorted front to back
    con: Tensor,  # [A, M, 3]
    op: Tensor,  # [A, M]
    col: Tensor,  # [A, M, D]
    feats: Tensor,  # [P, 6]
    absgrad: tuple[Tensor, Tensor, int] | None,
) -> tuple[Tensor, Tensor]:
    # log(opacity) - sigma is a quadratic in the pixel position (u, v): expand it into 6
    # coefficients per (tile, Gaussian) so the [A, P, M] logits are one matmul (and so is their
    # backward) instead of a dozen broadcast element-wise ops. Coordinates relative to the tile
    # centre keep the terms small enough for float32 (sigma error ~1e-5 for 16x16 tiles).
    mx, my = m[..., 0], m[..., 1]
    a, b, c = con[..., 0], con[..., 1], con[..., 2]
    # opacities below ALPHA_MIN can never pass the alpha test: clamping them (also the zero-opacity
    # padding) keeps log() finite without changing any kept alpha or gradient
    log_op = torch.log(op.clamp_min(ALPHA_MIN / 4))
    coef = torch.stack(
        [
            -0.5 * a,
            -0.5 * c,
            -b,
            a * mx + b * my,
            c * my + b * mx,
            log_op - (0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my),
        ],
        dim=1,
    )  # [A, 6, M]
    z = torch.matmul(feats, coef)  # [A, P, M] = log(opacity * exp(-sigma))
    if absgrad is not None:
        _hook_absgrad(z, m, con, feats, *absgrad)
    alpha = torch.exp(z).clamp_max(ALPHA_MAX)
    log_t = torch.log1p(-alpha)
    with torch.no_grad():
        # sigma < 0 only arises from rounding (conics are positive definite after eps2d)
        keep = z >= math.log(ALPHA_MIN)
        log_t_kept = torch.where(keep, log_t, torch.zeros_like(log_t))
        # the Gaussian that would drop T to <= 1e-4 ends the pixel (exclusive), as in gsplat
        keep &= torch.cumsum(log_t_kept, dim=-1) > math.log(TRANSMITTANCE_MIN)
    log_t = torch.where(keep, log_t, torch.zeros_like(log_t))
    # exclusive cumulative transmittance; entries past the cut-off have weight 0 anyway
    t_before = torch.exp(torch.cumsum(log_t, dim=-1) - log_t)
    weights = torch.where(keep, alpha * t_before, torch.zeros_like(alpha))  # [A, P, M]
    out_colors = torch.matmul(weights, col)  # [A, P, D]; far faster than einsum's bmm path on CPU
    out_alphas = weights.sum(dim=-1, keepdim=True)
    return out_colors, out_alphas


def _hook_absgrad(z: Tensor, m: Tensor, con: Tensor, feats: Tensor, sink: Tensor, idx: Tensor, x: int) -> None:
    """Accumulate sum over pixels of |dL/dmeans2d| into `sink.absgrad` during backward (gsplat's
    absgrad). dz/dmx = -(a*dx + b*dy) and dz/dmy = -(b*dx + c*dy) per pixel, with dx = mx - u."""
    if getattr(sink, "absgrad", None) is None:  # first chunk of this render: start from zero
        sink.absgrad = torch.zeros_like(sink).detach()  # type: ignore[attr-defined]
    flat = sink.absgrad.view(-1, 2)  # type: ignore[attr-defined]
    m, con = m.detach(), con.detach()

    def hook(grad: Tensor) -> None:
        with torch.no_grad():
            dx = m[:, None, :, 0] - feats[None, :, 3:4]  # [A, P, M]
            dy = m[:, None, :, 1] - feats[None, :, 4:5]
            a, b, c = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
            gx = (grad * (a * dx + b * dy)).abs().sum(dim=1).reshape(-1)  # [A*M]
            gy = (grad * (b * dx + c * dy)).abs().sum(dim=1).reshape(-1)
            ids = idx.reshape(-1)
            real = ids < x
            flat[:, 0].index_add_(0, ids[real], gx[real])
            flat[:, 1].index_add_(0, ids[real], gy[real])

    z.register_hook(hook)
