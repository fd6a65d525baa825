"""How much a model format loses: render held-out views from decoded files, compare PSNRs.

`python -m splatops_trainer.fidelity SCENE_DIR OUTPUT_DIR [--data-factor N]` renders the held-out
views (every `test_every`-th image, as training held them out) from results.ply and from every
other model file in OUTPUT_DIR that this module can decode (results.spz, results.splat), and
prints each file's size and its PSNR against the ground truth and against the PLY's render.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from splatops import contract

from . import spz
from .config import TrainerConfig
from .dataset import View
from .image_metrics import psnr
from .ply import read_ply
from .render import default_backend, rasterize

SH_C0 = 0.28209479177387814


def decode_splat(data: bytes) -> dict[str, np.ndarray]:
    """The 32-byte-per-Gaussian .splat layout: xyz, linear scales (f32), RGBA, quaternion (u8)."""
    n = len(data) // 32
    rec = np.frombuffer(data, dtype=np.dtype([("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("q", "u1", 4)]), count=n)
    rgba = rec["c"].astype(np.float32) / 255.0
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 254.5 / 255)
    return {
        "means": rec["p"].astype(np.float32),
        "scales": np.log(np.maximum(rec["s"], 1e-12)).astype(np.float32),
        "quats": (rec["q"].astype(np.float32) - 128.0) / 128.0,
        "opacities": np.log(alpha / (1 - alpha)),
        "sh0": ((rgba[:, :3] - 0.5) / SH_C0)[:, None, :],
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def load_model(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".spz":
        return spz.decode(path.read_bytes())[1]
    if path.suffix == ".splat":
        return decode_splat(path.read_bytes())
    return read_ply(path).splats()


def render(splats: Mapping[str, np.ndarray], view: View) -> torch.Tensor:
    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in splats.items()}
    n = t["means"].shape[0]
    colors = torch.cat([t["sh0"].reshape(n, 1, 3), t["shN"].reshape(n, -1, 3)], dim=1)
    degree = int(round(colors.shape[1] ** 0.5)) - 1
    out, _, _ = rasterize(
        means=t["means"], quats=torch.nn.functional.normalize(t["quats"], dim=-1), scales=torch.exp(t["scales"]),
        opacities=torch.sigmoid(t["opacities"].reshape(n)), colors=colors, viewmats=view.viewmat[None].float(),
        Ks=view.K[None].float(), width=view.width, height=view.height, sh_degree=degree,
        backend=default_backend("cpu"),
    )
    return out.clamp(0, 1)


@dataclasses.dataclass(frozen=True)
class FormatFidelity:
    file: str
    bytes: int
    psnr_vs_truth: float  # mean over held-out views
    psnr_vs_ply: float  # the decoded file's render against results.ply's


@torch.no_grad()
def compare(views: list[View], out_dir: Path) -> list[FormatFidelity]:
    ply_path = out_dir / contract.RESULT_PLY
    reference = [render(load_model(ply_path), v) for v in views]
    truths = [(v.image.float() / 255.0)[None] for v in views]
    rows = []
    for name in (contract.RESULT_PLY, contract.FORMAT_FILES["spz"], contract.FORMAT_FILES["splat"]):
        path = out_dir / name
        if not path.is_file():
            continue
        images = reference if name == contract.RESULT_PLY else [render(load_model(path), v) for v in views]
        vs_truth = float(np.mean([float(psnr(a, b)) for a, b in zip(images, truths)]))
        vs_ply = float(np.mean([min(float(psnr(a, b)), 99.0) for a, b in zip(images, reference)]))
        rows.append(FormatFidelity(name, path.stat().st_size, round(vs_truth, 3), round(vs_ply, 2)))
    return rows


def main(argv: list[str] | None = None) -> int:
    from .scene import load_scene

    parser = argparse.ArgumentParser(prog="python -m splatops_trainer.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("scene_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--data-factor", type=int, default=1)
    parser.add_argument("--test-every", type=int, default=8)
    parser.add_argument("--max-views", type=int, default=0, help="only the first N held-out views (0: all)")
    args = parser.parse_args(argv)
    cfg = TrainerConfig(scene_dir=args.scene_dir, output_dir=args.output_dir, data_factor=args.data_factor,
                        test_every=args.test_every, device="cpu", metrics_port=0)
    views = load_scene(cfg).test
    views = views[: args.max_views] if args.max_views else views
    for row in compare(views, args.output_dir):
        print(json.dumps(dataclasses.asdict(row)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
