"""results.ply: the exact 3DGS layout viewers load, NaN rows dropped (never an empty file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from splatops import contract
from splatops_trainer import ply
from splatops_trainer.errors import TrainerError


def make_splats(n: int, sh_degree: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    return {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k, 3, generator=g),
    }


def expected_names(sh_degree: int) -> list[str]:
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


@pytest.mark.parametrize(("sh_degree", "num_props"), [(3, 62), (1, 26), (0, 17)])
def test_exact_property_list_and_count(tmp_path: Path, sh_degree: int, num_props: int) -> None:
    path = tmp_path / "results.ply"
    stats = ply.write_ply(path, make_splats(7, sh_degree))
    assert (stats.written, stats.dropped) == (7, 0)
    assert stats.size_bytes == path.stat().st_size
    data = plyfile.PlyData.read(str(path))  # an independent reader, as viewers use
    assert data.elements[0].name == "vertex" and data["vertex"].count == 7
    assert not data.text and data.byte_order == "<"
    props = [(p.name, p.val_dtype) for p in data["vertex"].properties]
    assert [n for n, _ in props] == expected_names(sh_degree) and len(props) == num_props
    assert {t for _, t in props} == {"f4"}


def test_values_and_channel_major_sh(tmp_path: Path) -> None:
    splats = make_splats(3)
    path = tmp_path / "r.ply"
    ply.write_ply(path, splats)
    v = plyfile.PlyData.read(str(path))["vertex"]
    k = splats["shN"].shape[1]
    for c in range(3):  # f_rest_{c*K + j} is coefficient j of channel c
        for j in (0, k - 1):
            np.testing.assert_allclose(v[f"f_rest_{c * k + j}"], splats["shN"][:, j, c].numpy())
    np.testing.assert_allclose(v["opacity"], splats["opacities"].numpy())
    np.testing.assert_allclose(v["rot_0"], splats["quats"][:, 0].numpy())
    np.testing.assert_allclose(v["scale_2"], splats["scales"][:, 2].numpy())
    np.testing.assert_allclose(v["f_dc_1"], splats["sh0"][:, 0, 1].numpy())
    assert not np.any(v["nx"])
    back = ply.read_ply(path).splats()
    for key in ("means", "quats", "scales", "sh0", "shN"):
        np.testing.assert_allclose(back[key], splats[key].numpy())


@pytest.mark.parametrize(
    ("key", "index", "value"),
    [("opacities", (1,), float("nan")), ("means", (3, 2), float("inf")), ("shN", (0, 5, 2), float("-inf"))],
)
def test_non_finite_rows_are_dropped_not_the_file(tmp_path: Path, key: str, index: tuple, value: float) -> None:
    splats = make_splats(5)
    splats[key][index] = value
    stats = ply.write_ply(tmp_path / "r.ply", splats)
    assert (stats.written, stats.dropped) == (4, 1)
    v = plyfile.PlyData.read(str(tmp_path / "r.ply"))["vertex"]
    assert v.count == 4
    assert np.isfinite(np.stack([v[n] for n in expected_names(3)])).all()
    bad_row = index[0]
    kept = [i for i in range(5) if i != bad_row]
    np.testing.assert_allclose(v["x"], splats["means"][kept, 0].numpy())


def test_all_non_finite_refuses_and_keeps_the_earlier_file(tmp_path: Path) -> None:
    path = tmp_path / "results.ply"
    ply.write_ply(path, make_splats(4))
    before = path.read_bytes()
    splats = make_splats(4)
    splats["opacities"][:] = float("nan")
    with pytest.raises(TrainerError) as info:
        ply.write_ply(path, splats)
    assert info.value.reason is contract.Reason.TRAINING_DIVERGED
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.ply"]  # no temp files left


def test_read_ply_rejects_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "a.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        ply.read_ply(path)
