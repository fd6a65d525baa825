"""The model in the formats `--formats` asks for, beside results.ply (which cli.run writes first).

spz: our SPZ writer (spz.py); splat and ply_compressed: gsplat's exporter. Each file is written
atomically; only the Gaussians results.ply kept (finite rows) go into every file, so all formats
hold the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from splatops import contract

from . import atomic, spz
from .ply import splats_to_rows


def finite_splats(splats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """numpy copies of the splats without the rows that have a non-finite value."""
    keep = np.isfinite(splats_to_rows(splats)).all(axis=1)
    arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in splats.items()}
    return {k: np.ascontiguousarray(v[keep], dtype=np.float32) for k, v in arrays.items()}


def _gsplat_export(splats: Mapping[str, np.ndarray], fmt: str) -> bytes:
    import torch
    from gsplat.exporter import export_splats

    t = {k: torch.from_numpy(v) for k, v in splats.items()}
    n = t["means"].shape[0]
    return export_splats(
        means=t["means"], scales=t["scales"], quats=t["quats"], opacities=t["opacities"].reshape(n),
        sh0=t["sh0"].reshape(n, 1, 3), shN=t["shN"].reshape(n, -1, 3), format=fmt,  # type: ignore[arg-type]
    )


def encode(fmt: str, splats: Mapping[str, np.ndarray]) -> bytes:
    if fmt == "spz":
        return spz.encode(splats)
    if fmt in ("splat", "ply_compressed"):
        return _gsplat_export(splats, fmt)
    raise ValueError(f"unknown model format {fmt!r}")


def write_formats(out: Path, splats: Mapping[str, Any], formats: list[str]) -> list[dict[str, Any]]:
    """Write every format but ply; return the outputs entries (name, file, bytes) of those written."""
    extra = [f for f in formats if f != "ply"]
    if not extra:
        return []
    kept = finite_splats(splats)
    written = []
    for fmt in extra:
        data = encode(fmt, kept)
        name = contract.FORMAT_FILES[fmt]
        atomic.write_bytes(out / name, data)
        written.append({"name": fmt, "file": name, "bytes": len(data)})
    return written


def listed(out: Path, name: str, file: str) -> list[dict[str, Any]]:
    """An outputs entry for a file that exists (preview.png, metrics.jsonl), else nothing."""
    path = out / file
    return [{"name": name, "file": file, "bytes": path.stat().st_size}] if path.is_file() else []
