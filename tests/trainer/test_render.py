"""The CPU rasterizer (splatops_trainer.render): geometry, compositing, gradients, strategy info."""

from __future__ import annotations

import math

import pytest
import torch

from splatops_trainer.render import default_backend, rasterize, visible_gaussians

SH_C0 = 0.28209479177387814
W, H = 40, 30
K = torch.tensor([[50.0, 0.0, 20.0], [0.0, 50.0, 15.0], [0.0, 0.0, 1.0]])


def _rot_y(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    m = torch.eye(4)
    m[0, 0], m[0, 2], m[2, 0], m[2, 2] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    return m


def _random_scene(n: int, seed: int, sh_degree: int = 1, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    p = {
        "means": torch.randn(n, 3, generator=gen) * 0.6,
        "quats": torch.randn(n, 4, generator=gen),
        "log_scales": torch.log(0.04 + 0.1 * torch.rand(n, 3, generator=gen)),
        "logit_opacities": torch.randn(n, generator=gen),
        "sh": torch.randn(n, k, 3, generator=gen) * 0.5,
    }
    return {name: t.requires_grad_(requires_grad) for name, t in p.items()}


def _render(p: dict[str, torch.Tensor], viewmats: torch.Tensor, sh_degree: int = 1, **kw):
    Ks = K.expand(viewmats.shape[0], 3, 3)
    return rasterize(
        p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["logit_opacities"]), p["sh"],
        viewmats, Ks, W, H, sh_degree=sh_degree, backend="cpu", **kw,
    )  # fmt: skip


def _cam(distance: float = 4.0) -> torch.Tensor:
    m = torch.eye(4)
    m[2, 3] = distance
    return m


@pytest.mark.parametrize(
    ("pixel", "depth", "yaw_deg"),
    [((20, 15), 5.0, 0.0), ((31, 7), 4.0, 0.0), ((8, 22), 6.0, 30.0), ((0, 0), 5.0, -20.0)],
)
def test_single_gaussian_lands_where_its_projection_predicts_with_its_colour(pixel, depth, yaw_deg):
    j, i = pixel  # column, row; the pixel centre is at (j + 0.5, i + 0.5)
    pc = torch.tensor([(j + 0.5 - 20.0) * depth / 50.0, (i + 0.5 - 15.0) * depth / 50.0, depth])
    viewmat = _rot_y(yaw_deg)
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 0.3])
    world = torch.linalg.solve(viewmat, torch.cat([pc, torch.ones(1)]))[:3]  # camera -> world
    rgb = torch.tensor([0.8, 0.2, 0.4])
    sigma3d, opacity = 0.01 * depth, 0.9
    colors, alphas, info = rasterize(
        world[None], torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), sigma3d),
        torch.tensor([opacity]), ((rgb - 0.5) / SH_C0)[None, None, :], viewmat[None], K[None], W, H,
        sh_degree=0, backend="cpu",
    )  # fmt: skip
    assert torch.allclose(info["means2d"][0, 0], torch.tensor([j + 0.5, i + 0.5]), atol=1e-3)
    assert info["radii"].shape == (1, 1, 2) and info["radii"].dtype == torch.int32
    assert (info["radii"] > 0).all()
    # the whole alpha image follows the EWA-projected 2D Gaussian: s^2 J J^T + eps2d (0.3) I
    x, y, z = pc.tolist()
    J = torch.tensor([[50.0 / z, 0.0, -50.0 * x / z**2], [0.0, 50.0 / z, -50.0 * y / z**2]])
    cov2d = sigma3d**2 * J @ J.T + 0.3 * torch.eye(2)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = torch.stack([xs - j - 0.5, ys - i - 0.5], dim=-1)
    expect = opacity * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2d), d))
    expect = torch.where(expect >= 1 / 255, expect, torch.zeros_like(expect))
    assert torch.allclose(alphas[0, ..., 0], expect, atol=2e-4)
    assert torch.allclose(colors[0, i, j], opacity * rgb, atol=1e-4)
    assert colors[0].amax(dim=-1).argmax().item() == i * W + j


def _reference_composite(means2d, conics, opac, rgb, depths, radii) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel loop: gsplat's CUDA forward rules, written independently of render.py."""
    out = torch.zeros(H, W, 3, dtype=torch.float64)
    acc = torch.zeros(H, W, dtype=torch.float64)
    order = [int(k) for k in torch.argsort(depths) if (radii[k] > 0).all()]
    for i in range(H):
        for j in range(W):
            t = 1.0
            for k in order:
                dx, dy = float(means2d[k, 0]) - (j + 0.5), float(means2d[k, 1]) - (i + 0.5)
                a, b, c = (float(v) for v in conics[k])
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, float(opac[k]) * math.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if t * (1 - alpha) <= 1e-4:
                    break
                out[i, j] += alpha * t * rgb[k].double()
                acc[i, j] += alpha * t
                t *= 1 - alpha
    return out, acc


def test_compositing_matches_a_per_pixel_reference():
    p = _random_scene(25, seed=3, sh_degree=0)
    p["logit_opacities"] = p["logit_opacities"] + 3.0  # dense enough to hit the transmittance cut-off
    with torch.no_grad():
        colors, alphas, info = _render(p, _cam()[None], sh_degree=0)
    rgb = torch.clamp_min(p["sh"][:, 0] * SH_C0 + 0.5, 0.0)
    ref_c, ref_a = _reference_composite(
        info["means2d"][0], info["conics"][0], info["opacities"][0], rgb, info["depths"][0], info["radii"][0]
    )
    assert torch.allclose(colors[0].double(), ref_c, atol=2e-4)
    assert torch.allclose(alphas[0, ..., 0].double(), ref_a, atol=2e-4)
    assert alphas.max() > 0.99  # some pixel did saturate


@pytest.mark.parametrize("tile_size", [4, 8, 32])
def test_tile_size_does_not_change_the_image(tile_size):
    p = _random_scene(300, seed=4)
    viewmats = torch.stack([_cam(), _rot_y(25.0) @ _cam(5.0)])
    backgrounds = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    with torch.no_grad():
        c16, a16, _ = _render(p, viewmats, backgrounds=backgrounds)
        c, a, info = _render(p, viewmats, backgrounds=backgrounds, tile_size=tile_size)
    assert info["tile_size"] == tile_size and info["tile_width"] == math.ceil(W / tile_size)
    assert torch.allclose(c, c16, atol=2e-5) and torch.allclose(a, a16, atol=2e-5)  # float32 rounding
    assert a16.mean() > 0.1  # the scene really covers the image


@pytest.mark.parametrize("packed", [False, True])
def test_gradients_reach_every_parameter_and_means2d(packed):
    p = _random_scene(200, seed=5, requires_grad=True)
    colors, alphas, info = _render(p, torch.stack([_cam(), _rot_y(40.0) @ _cam()]), packed=packed)
    info["means2d"].retain_grad()
    target = torch.rand(colors.shape, generator=torch.Generator().manual_seed(0))
    ((colors - target) ** 2).mean().add(alphas.mean()).backward()
    for name, t in p.items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
    g = info["means2d"].grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    if packed:
        n_vis = int((info["radii"] > 0).all(dim=-1).sum())
        assert info["means2d"].shape == (n_vis, 2) and info["gaussian_ids"].shape == (n_vis,)
        assert info["camera_ids"].max() == 1
    else:
        assert info["means2d"].shape == (2, 200, 2) and info["gaussian_ids"] is None


def test_absgrad_bounds_the_gradient_norm():
    p = _random_scene(150, seed=6, requires_grad=True)
    colors, _, info = _render(p, _cam()[None], absgrad=True)
    info["means2d"].retain_grad()
    (colors * torch.rand(colors.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    g, ag = info["means2d"].grad, info["means2d"].absgrad
    assert ag.shape == g.shape and (ag >= g.abs() - 1e-4).all() and ag.sum() > 0


@pytest.mark.parametrize("packed", [False, True])
def test_nothing_visible_gives_the_background_and_still_backpropagates(packed):
    means = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, -5.0]], requires_grad=True)
    colors, alphas, info = rasterize(
        means, torch.tensor([[1.0, 0, 0, 0]]).repeat(2, 1), torch.full((2, 3), 0.1), torch.full((2,), 0.9),
        torch.zeros(2, 1, 3), torch.eye(4)[None], K[None], W, H, sh_degree=0, backend="cpu",
        backgrounds=torch.tensor([[0.2, 0.4, 0.6]]), packed=packed,
    )  # fmt: skip
    assert torch.allclose(colors, torch.tensor([0.2, 0.4, 0.6]).expand(1, H, W, 3)) and alphas.max() == 0
    colors.sum().backward()
    assert means.grad is not None and (means.grad == 0).all()


def test_gaussians_behind_the_camera_or_off_screen_are_invisible():
    means = torch.tensor([[0.0, 0.0, -3.0], [100.0, 0.0, 4.0], [0.0, 0.0, 4.0]])
    colors, alphas, info = rasterize(
        means, torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1), torch.full((3, 3), 0.1), torch.full((3,), 0.9),
        torch.zeros(3, 1, 3), torch.eye(4)[None], K[None], W, H, sh_degree=0, backend="cpu",
    )  # fmt: skip
    assert (info["radii"][0, :2] == 0).all() and (info["radii"][0, 2] > 0).all()
    assert info["tiles_per_gauss"][0].tolist()[:2] == [0, 0]


@pytest.mark.parametrize("packed", [False, True])
def test_visible_gaussians_are_those_some_camera_sees(packed):
    """What visible_adam updates: behind both cameras, off both screens, seen by either, by both."""
    means = torch.tensor([[0.0, 0.0, -9.0], [100.0, 0.0, 4.0], [0.3, 0.0, 0.5], [-2.5, 0.0, 0.5], [-1.5, 0.0, 0.5]])
    n = len(means)
    shifted = _cam()
    shifted[0, 3] = 3.0  # the second camera stands 3 to the left: it sees x in about [-4.7, -1.3]
    viewmats = torch.stack([_cam(), shifted])
    _, _, info = rasterize(
        means, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), 0.1), torch.full((n,), 0.9),
        torch.zeros(n, 1, 3), viewmats, K.expand(2, 3, 3), W, H, sh_degree=0, backend="cpu", packed=packed,
    )  # fmt: skip
    seen = visible_gaussians(info, n)
    assert seen.dtype == torch.bool and seen.shape == (n,)
    per_camera = (info["radii"] > 0).all(dim=-1) if not packed else None
    if per_camera is not None:
        assert per_camera.tolist() == [[False, False, True, False, True], [False, False, False, True, True]]
    assert seen.tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("packed", [False, True])
def test_cpu_info_drives_gsplat_default_strategy(packed):
    from gsplat.strategy import DefaultStrategy

    raw = _random_scene(120, seed=7, sh_degree=1)
    params = torch.nn.ParameterDict(
        {
            "means": raw["means"],
            "quats": raw["quats"],
            "scales": raw["log_scales"],
            "opacities": raw["logit_opacities"],
            "sh0": raw["sh"][:, :1].clone(),
            "shN": raw["sh"][:, 1:].clone(),
        }
    )
    optimizers = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, reset_every=1000, grow_grad2d=1e-9)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    n0 = params["means"].shape[0]
    for step in range(3):  # step 2 refines: duplicates/splits with the accumulated stats
        colors, _, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1), torch.stack([_cam(), _rot_y(30.0) @ _cam()]),
            K.expand(2, 3, 3), W, H, sh_degree=1, backend="cpu", packed=packed,
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        colors.mean().backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        strategy.step_post_backward(params, optimizers, state, step, info, packed=packed)
        if step == 1:
            assert state["grad2d"] is not None and state["grad2d"].sum() > 0
            assert state["count"].max() == 4  # seen by both cameras in both steps
    assert params["means"].shape[0] > n0  # grew from the CPU means2d gradients


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda")])
def test_default_backend(device, expected):
    assert default_backend(torch.device(device)) == expected
    assert default_backend(device) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quats": torch.zeros(5, 3)}, "quats must be"),
        ({"sh_degree": 2}, "sh_degree 2"),
        ({"backend": "metal"}, "backend must be"),
        ({"Ks": torch.eye(3)}, "Ks must be"),
    ],
)
def test_bad_inputs_are_reported(change, message):
    args = {
        "means": torch.zeros(5, 3), "quats": torch.zeros(5, 4), "scales": torch.ones(5, 3),
        "opacities": torch.ones(5), "colors": torch.zeros(5, 4, 3), "viewmats": torch.eye(4)[None],
        "Ks": K[None], "width": W, "height": H, "sh_degree": 1, "backend": "cpu",
    }  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=message):
        rasterize(**args)
