"""SPZ (v2) writer and reader: the bytes the format prescribes, and round trips within quantization."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from splatops_trainer import spz


def random_splats(n: int, degree: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return {
        "means": rng.uniform(-3, 3, (n, 3)).astype(np.float32),
        "scales": rng.uniform(-6, -1, (n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),  # not normalised: the writer does it
        "opacities": rng.uniform(-4, 4, n).astype(np.float32),
        "sh0": rng.uniform(-1.5, 1.5, (n, 1, 3)).astype(np.float32),
        "shN": rng.uniform(-0.9, 0.9, (n, k, 3)).astype(np.float32),
    }


def _w_positive(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def _same_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.abs((a * b).sum(axis=1))  # q and -q are the same rotation


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_within_quantization(degree: int) -> None:
    x = random_splats(500, degree, seed=degree)
    header, y = spz.decode(spz.encode(x))
    assert (header.num_points, header.sh_degree, header.version) == (500, degree, 2)
    step = 1.0 / (1 << header.fractional_bits)
    assert np.abs(y["means"] - x["means"]).max() <= step / 2 + 1e-6
    assert np.abs(y["scales"] - x["scales"]).max() <= 1 / 32 + 1e-6
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert np.abs(sig(y["opacities"]) - sig(x["opacities"])).max() <= 0.5 / 255 + 1e-6
    assert np.abs(y["sh0"] - x["sh0"]).max() <= 0.5 / 255 / spz.COLOR_SCALE + 1e-5
    # v2 keeps x, y, z of the w >= 0 unit quaternion to 8 bits and derives w (coarse when w is small).
    assert np.abs(y["quats"][:, 1:] - _w_positive(x["quats"])[:, 1:]).max() <= 0.5 / 127.5 + 1e-5
    assert _same_rotation(y["quats"], x["quats"]).mean() > 0.999
    assert y["shN"].shape == x["shN"].shape
    # degree 1 keeps SH1_BITS of 8 bits (buckets of 2**(8 - bits) / 128), higher degrees SH_REST_BITS
    if degree >= 1:
        bucket = 2 ** (8 - spz.SH1_BITS)
        assert np.abs(y["shN"][:, :3] - x["shN"][:, :3]).max() <= (bucket / 2 + 0.5) / 128 + 1e-6
    if degree >= 2:
        bucket = 2 ** (8 - spz.SH_REST_BITS)
        assert np.abs(y["shN"][:, 3:] - x["shN"][:, 3:]).max() <= (bucket / 2 + 0.5) / 128 + 1e-6


def test_bytes_follow_the_published_layout() -> None:
    """One known point, decoded by hand from the gzip stream, not by our reader."""
    splats = {
        "means": np.array([[1.0, 2.0, -0.5]], np.float32),
        "scales": np.array([[-10.0, 0.0, -5.0]], np.float32),
        "quats": np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),  # identity, wxyz
        "opacities": np.array([0.0], np.float32),  # sigmoid 0.5
        "sh0": np.array([[[0.0, 1.0, -1.0]]], np.float32),
        "shN": np.array([[[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.25]]], np.float32),
    }
    raw = gzip.decompress(spz.encode(splats))
    magic, version, n, degree, bits, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, bits, flags, reserved) == (0x5053474E, 2, 1, 1, 12, 0, 0)
    assert raw[:4] == b"NGSP"
    body = raw[16:]
    assert len(body) == 9 + 1 + 3 + 3 + 3 + 9
    # Right-up-back: y and z change sign. 1.0 * 4096 = 0x001000; -2 * 4096 = -8192 = 0xFFE000.
    ints = [int.from_bytes(body[i : i + 3], "little", signed=True) for i in (0, 3, 6)]
    assert ints == [4096, -8192, 2048]
    assert body[9] == 128  # alpha round(0.5 * 255)
    assert list(body[10:13]) == [128, round(0.15 * 255 + 127.5), round(-0.15 * 255 + 127.5)]
    assert list(body[13:16]) == [0, 160, 80]  # (s + 10) * 16
    assert list(body[16:19]) == [128, 128, 128]  # x, y, z of the identity, around 127.5
    # SH: the first degree-1 basis (y) flips sign in right-up-back; the third (x) does not.
    assert list(body[19:28]) == [64, 128, 128, 128, 128, 128, 128, 128, 160]


def test_degree_4_drops_its_last_band() -> None:
    header, y = spz.decode(spz.encode(random_splats(10, 4)))
    assert header.sh_degree == 3 and y["shN"].shape == (10, 15, 3)


def test_large_scene_keeps_every_coordinate() -> None:
    x = random_splats(20, 0)
    x["means"][0] = [5000.0, -4000.0, 100.0]
    header, y = spz.decode(spz.encode(x))
    assert header.fractional_bits < 12
    assert np.abs(y["means"] - x["means"]).max() <= 0.5 / (1 << header.fractional_bits) + 1e-3


@pytest.mark.parametrize(
    "data, words",
    [
        (b"not gzip", "not a gzip stream"),
        (gzip.compress(b"xx"), "shorter than"),
        (gzip.compress(struct.pack("<IIIBBBB", 0x12345678, 2, 0, 0, 12, 0, 0)), "not an SPZ file"),
        (gzip.compress(struct.pack("<IIIBBBB", spz.MAGIC, 3, 0, 0, 12, 0, 0)), "version 3"),
        (gzip.compress(struct.pack("<IIIBBBB", spz.MAGIC, 2, 5, 0, 12, 0, 0)), "expected 95"),
    ],
)
def test_rejects_what_it_cannot_read(data: bytes, words: str) -> None:
    with pytest.raises(spz.SpzError, match=words):
        spz.decode(data)
