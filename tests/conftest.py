"""Shared fixtures for every test directory.

`synthetic_scene`: the directory of a small synthetic COLMAP scene (splatops_trainer.synthetic),
generated once per session; treat it as read-only. `synthetic_scene_info`: the same scene's
SyntheticScene (ground-truth Gaussians, cameras, points). `scene_copy`: a private copy of the
directory in tmp_path, free to modify.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import PIL.Image  # noqa: F401  (before pycolmap: pycolmap's zlib symbols break Pillow's PNG encoder)
import pytest

# tests/helpers/testkit.py (the manifest builder, the fake Kube's Protocol) importable by name from
# every directory, as the directories' own helpers are (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).parent / "helpers"))


@pytest.fixture(scope="session")
def synthetic_scene_info(tmp_path_factory: pytest.TempPathFactory):  # -> SyntheticScene
    """The default synthetic scene (12 views, 64x48, PINHOLE, binary model, seed 0)."""
    from splatops_trainer import synthetic

    return synthetic.make_synthetic_scene(tmp_path_factory.mktemp("synthetic") / "scene", seed=0)


@pytest.fixture(scope="session")
def synthetic_scene(synthetic_scene_info) -> Path:
    """The synthetic scene's directory (images/, colmap/sparse_initial/); read-only."""
    return Path(synthetic_scene_info.root)


@pytest.fixture
def scene_copy(synthetic_scene, tmp_path: Path) -> Path:
    """A fresh copy of the synthetic scene directory, private to the test (modify freely)."""
    dst = tmp_path / "scene"
    shutil.copytree(synthetic_scene, dst, symlinks=True)
    return dst
