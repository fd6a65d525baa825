"""Standard 3DGS PLY (the layout of the original 3DGS code, which common viewers load).

Per vertex, float32, binary little-endian, in this order:
`x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3`
with K = (sh_degree+1)^2 - 1 higher-order SH coefficients per colour channel, stored
channel-major (all R coefficients, then all G, then all B); opacity as a logit, scales as logs,
rotation as a wxyz quaternion. The normals are zeros (viewers ignore them; the layout needs them).

Rows with any non-finite value are dropped (and counted) instead of poisoning the file:
gsplat's own exporter writes an empty file when a single opacity is NaN.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from .errors import TrainerError
from splatops import contract

_HEADER_END = b"end_header\n"


@dataclasses.dataclass(frozen=True)
class PlyStats:
    path: Path
    written: int  # Gaussians in the file
    dropped: int  # rows dropped for a non-finite value
    size_bytes: int

    @property
    def size_mb(self) -> float:
        return round(self.size_bytes / (1024 * 1024), 2)


def property_names(num_rest: int) -> list[str]:
    """The PLY vertex properties for `num_rest` = 3*K f_rest values."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def splats_to_rows(splats: Mapping[str, Any]) -> np.ndarray:
    """[N, 17 + 3K] float32 rows in PLY property order from gsplat-style splats."""
    means = _np(splats["means"]).reshape(-1, 3)
    n = means.shape[0]
    sh0 = _np(splats["sh0"]).reshape(n, -1, 3)  # [N, 1, 3]
    shn = _np(splats["shN"]).reshape(n, -1, 3) if "shN" in splats else np.zeros((n, 0, 3), np.float32)
    # [N, K, 3] -> [N, 3, K] -> [N, 3K]: channel-major, as the original 3DGS writes f_rest.
    f_rest = np.ascontiguousarray(shn.transpose(0, 2, 1)).reshape(n, -1)
    return np.concatenate(
        [
            means,
            np.zeros((n, 3), np.float32),
            sh0[:, 0, :],
            f_rest,
            _np(splats["opacities"]).reshape(n, 1),
            _np(splats["scales"]).reshape(n, 3),
            _np(splats["quats"]).reshape(n, 4),
        ],
        axis=1,
    ).astype(np.float32, copy=False)


def encode_ply(rows: np.ndarray, num_rest: int) -> bytes:
    names = property_names(num_rest)
    if rows.ndim != 2 or rows.shape[1] != len(names):
        raise ValueError(f"rows have shape {rows.shape}, expected [N, {len(names)}]")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {rows.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + rows.astype("<f4", copy=False).tobytes()


def write_ply(path: str | os.PathLike[str], splats: Mapping[str, Any]) -> PlyStats:
    """Write splats as a standard 3DGS PLY, atomically. Refuses to write an empty file."""
    rows = splats_to_rows(splats)
    finite = np.isfinite(rows).all(axis=1)
    dropped = int((~finite).sum())
    rows = rows[finite]
    if rows.shape[0] == 0:
        raise TrainerError(
            contract.Reason.TRAINING_DIVERGED,
            f"Training produced no finite Gaussians ({dropped} dropped for NaN/Inf values); "
            "results.ply not written. Try a lower learning rate, fewer steps or another strategy.",
        )
    num_rest = rows.shape[1] - 17
    data = encode_ply(rows, num_rest)
    atomic.write_bytes(path, data)
    return PlyStats(path=Path(path), written=int(rows.shape[0]), dropped=dropped, size_bytes=len(data))


@dataclasses.dataclass(frozen=True)
class PlyData:
    names: list[str]
    rows: np.ndarray  # [N, len(names)] float32

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, self.names.index(name)]

    def splats(self) -> dict[str, np.ndarray]:
        """Back to gsplat-style arrays (sh0 [N,1,3], shN [N,K,3])."""
        n = self.rows.shape[0]
        rest = [c for c in self.names if c.startswith("f_rest_")]
        f_rest = np.stack([self.column(c) for c in rest], axis=1) if rest else np.zeros((n, 0))
        take = lambda *cols: np.stack([self.column(c) for c in cols], axis=1)  # noqa: E731
        return {
            "means": take("x", "y", "z"),
            "sh0": take("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
            "shN": f_rest.reshape(n, 3, -1).transpose(0, 2, 1),
            "opacities": self.column("opacity"),
            "scales": take("scale_0", "scale_1", "scale_2"),
            "quats": take("rot_0", "rot_1", "rot_2", "rot_3"),
        }


def read_ply(path: str | os.PathLike[str]) -> PlyData:
    """Read a binary little-endian PLY whose vertex properties are all float (our layout)."""
    raw = Path(path).read_bytes()
    end = raw.find(_HEADER_END)
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    count, names = 0, []
    for line in io.StringIO(raw[:end].decode("ascii")):
        parts = line.split()
        if parts[:1] == ["format"] and parts[1] != "binary_little_endian":
            raise ValueError(f"{path}: only binary_little_endian is supported, not {parts[1]}")
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["property"]:
            if parts[1] != "float":
                raise ValueError(f"{path}: property {parts[-1]} is {parts[1]}, expected float")
            names.append(parts[2])
    body = np.frombuffer(raw, dtype="<f4", offset=end + len(_HEADER_END))
    if body.size != count * len(names):
        raise ValueError(f"{path}: {body.size} floats for {count} x {len(names)} properties")
    return PlyData(names=names, rows=body.reshape(count, len(names)).astype(np.float32))
