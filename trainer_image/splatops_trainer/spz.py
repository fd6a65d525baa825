"""SPZ, Niantic's compressed Gaussian-splat format (version 2), written and read with numpy.

Implemented from the published description of the format (nianticlabs/spz, README "File Format"):
a gzip stream of a 16-byte little-endian header

    uint32 magic 0x5053474e ("NGSP") | uint32 version (2) | uint32 numPoints
    uint8 shDegree (0..3) | uint8 fractionalBits | uint8 flags (0x1 antialiased) | uint8 reserved (0)

then, attribute by attribute for all points: positions (x, y, z as 24-bit signed fixed point with
`fractionalBits` fractional bits), alphas (uint8, sigmoid(opacity) * 255), colours (uint8 per
channel, the DC coefficient times 0.15 around 127.5), scales (uint8, (log scale + 10) * 16),
rotations (uint8 x, y, z of the unit quaternion with w >= 0, around 127.5; w is derived), and
the higher SH coefficients (uint8, value * 128 + 128, coefficient-major with the colour channel
fastest; degree-1 values rounded to SH1_BITS significant bits, higher degrees to SH_REST_BITS).

SPZ stores right-up-back (three.js / OpenGL) coordinates; our splats are COLMAP's right-down-front.
The conversion is a 180-degree rotation about x: y and z change sign, so do the quaternion's y and
z and the SH basis functions odd in y xor z. `encode` converts, `decode` converts back.

Degree 4 SH (our sh_degree 4) has no place in version 2: its last band is dropped.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = 0x5053474E
VERSION = 2
HEADER = struct.Struct("<IIIBBBB")
MAX_SH_DEGREE = 3
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
# Significant bits kept of each 8-bit SH value (the rest rounded away, which gzips well). The
# format's reader does not need them; Niantic's encoder keeps 5 and 4 by default. On fox that
# zeroed nearly every coefficient of a CPU-trained model (0.77 dB lost); 7 and 6 lose 0.05 dB and
# the file is still ~10x smaller than the PLY (docs/trainer.md).
SH1_BITS, SH_REST_BITS = 7, 6
MAX_FRACTIONAL_BITS = 12  # ~0.24 mm when a unit is a metre; fewer when the scene is larger

# Sign of each SH basis function (3DGS order, bands 1..3) under the 180-degree turn about x.
_SH_FLIP = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float32)
_XYZ_FLIP = np.array([1, -1, -1], dtype=np.float32)


class SpzError(ValueError):
    """Not an SPZ file this reader understands."""


@dataclasses.dataclass(frozen=True)
class Header:
    num_points: int
    sh_degree: int
    fractional_bits: int
    flags: int = 0
    version: int = VERSION


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def sh_degree_for(num_rest: int) -> int:
    """SH degree from the number of higher coefficients per channel (0, 3, 8, 15, 24)."""
    for degree in range(5):
        if (degree + 1) ** 2 - 1 == num_rest:
            return degree
    raise ValueError(f"{num_rest} higher SH coefficients per channel is no SH degree")


def fractional_bits_for(means: np.ndarray) -> int:
    """The most fractional bits (<= 12) with which every coordinate fits in 24 signed bits."""
    extent = float(np.abs(means).max()) if means.size else 0.0
    bits = MAX_FRACTIONAL_BITS
    while bits > 0 and round(extent * (1 << bits)) > (1 << 23) - 1:
        bits -= 1
    return bits


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _quantize_sh(values: np.ndarray, bits: int) -> np.ndarray:
    q = np.rint(values * 128.0) + 128.0
    bucket = 1 << (8 - bits)
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _fixed24(means: np.ndarray, bits: int) -> np.ndarray:
    fixed = np.rint(means.astype(np.float64) * (1 << bits)).astype(np.int64)
    fixed = np.clip(fixed, -(1 << 23), (1 << 23) - 1).astype("<i4")
    return fixed.reshape(-1, 1).view(np.uint8)[:, :3]  # the low 3 bytes of each little-endian int


def _unit_quats_xyzw(quats_wxyz: np.ndarray) -> np.ndarray:
    q = quats_wxyz[:, [1, 2, 3, 0]].astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1), np.array([0, 0, 0, 1.0]))
    return np.where(q[:, 3:4] < 0, -q, q)


def encode(splats: Mapping[str, Any], *, antialiased: bool = False) -> bytes:
    """gsplat-style splats (means, scales [log], quats [wxyz], opacities [logit], sh0, shN) -> SPZ."""
    means = _np(splats["means"]).reshape(-1, 3)
    n = means.shape[0]
    sh0 = _np(splats["sh0"]).reshape(n, 3)
    shn = _np(splats["shN"]).reshape(n, -1, 3) if "shN" in splats else np.zeros((n, 0, 3), np.float32)
    degree = min(sh_degree_for(shn.shape[1]), MAX_SH_DEGREE)
    shn = shn[:, : (degree + 1) ** 2 - 1] * _SH_FLIP[: (degree + 1) ** 2 - 1, None]
    means = means * _XYZ_FLIP
    bits = fractional_bits_for(means)
    quats = _unit_quats_xyzw(_np(splats["quats"]).reshape(n, 4)) * np.array([1, -1, -1, 1])
    quats = np.where(quats[:, 3:4] < 0, -quats, quats)
    opacity = 1.0 / (1.0 + np.exp(-_np(splats["opacities"]).reshape(n).astype(np.float64)))
    flat_sh = shn.reshape(n, -1)
    sh = np.concatenate(
        [_quantize_sh(flat_sh[:, :9], SH1_BITS), _quantize_sh(flat_sh[:, 9:], SH_REST_BITS)], axis=1
    )
    header = HEADER.pack(MAGIC, VERSION, n, degree, bits, FLAG_ANTIALIASED if antialiased else 0, 0)
    body = b"".join(
        part.tobytes()
        for part in (
            _fixed24(means, bits),
            _u8(opacity * 255.0),
            _u8(sh0 * (COLOR_SCALE * 255.0) + 127.5),
            _u8((_np(splats["scales"]).reshape(n, 3) + 10.0) * 16.0),
            _u8(quats[:, :3] * 127.5 + 127.5),
            sh,
        )
    )
    return gzip.compress(header + body, compresslevel=9, mtime=0)


def read_header(raw: bytes) -> Header:
    if len(raw) < HEADER.size:
        raise SpzError("SPZ data shorter than its 16-byte header")
    magic, version, n, degree, bits, flags, _reserved = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SpzError(f"not an SPZ file (magic {magic:#010x}, expected {MAGIC:#010x})")
    if version != VERSION:
        raise SpzError(f"SPZ version {version} is not supported (only {VERSION})")
    if degree > MAX_SH_DEGREE or bits > 23:
        raise SpzError(f"SPZ header out of range: shDegree {degree}, fractionalBits {bits}")
    return Header(num_points=n, sh_degree=degree, fractional_bits=bits, flags=flags, version=version)


def decode(data: bytes) -> tuple[Header, dict[str, np.ndarray]]:
    """SPZ bytes -> (header, gsplat-style splats in COLMAP's frame, float32 arrays)."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise SpzError(f"not a gzip stream: {exc}") from exc
    h = read_header(raw)
    n, k = h.num_points, (h.sh_degree + 1) ** 2 - 1
    sizes = (n * 9, n, n * 3, n * 3, n * 3, n * k * 3)
    if len(raw) != HEADER.size + sum(sizes):
        raise SpzError(f"SPZ body has {len(raw) - HEADER.size} bytes, expected {sum(sizes)} for {n} points")
    parts, offset = [], HEADER.size
    for size in sizes:
        parts.append(np.frombuffer(raw, dtype=np.uint8, count=size, offset=offset))
        offset += size
    pos, alpha, color, scale, rot, sh = parts
    b = pos.reshape(n, 3, 3).astype(np.int32)
    fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign-extend 24 bits
    xyz = rot.reshape(n, 3).astype(np.float32) / 127.5 - 1.0
    w = np.sqrt(np.clip(1.0 - (xyz * xyz).sum(axis=1), 0.0, None))
    a = np.clip(alpha.astype(np.float32) / 255.0, 0.5 / 255.0, 254.5 / 255.0)  # finite logits
    splats = {
        "means": (fixed.astype(np.float32) / (1 << h.fractional_bits)) * _XYZ_FLIP,
        "opacities": np.log(a / (1.0 - a)),
        "sh0": ((color.reshape(n, 1, 3).astype(np.float32) / 255.0 - 0.5) / COLOR_SCALE),
        "scales": scale.reshape(n, 3).astype(np.float32) / 16.0 - 10.0,
        "quats": np.stack([w, xyz[:, 0], -xyz[:, 1], -xyz[:, 2]], axis=1),
        "shN": (sh.reshape(n, k, 3).astype(np.float32) - 128.0) / 128.0 * _SH_FLIP[:k, None],
    }
    return h, {key: value.astype(np.float32) for key, value in splats.items()}
