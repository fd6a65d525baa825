"""A scene directory on this machine, checked as the original pipeline checked it before training
(`splatops train`/`upload` of a local directory or a local volume, and `splatops local --scene`).
The model test is the trainer's own (`splatops.contract.has_colmap_model`); the gateway makes the
same check on its volume without following links (`gateway.files.scene_problem`)."""

from __future__ import annotations

import pathlib

from splatops import contract


def scene_problem(scene_dir: pathlib.Path, *, need_model: bool = False) -> str | None:
    """The original pipeline's prerequisite checks on a scene directory (None: looks trainable).

    The model may be in colmap/sparse_initial or sparse/0, as the trainer reads either. It is
    needed only with `need_model` (spec.reconstruct Never): by default the trainer reconstructs a
    scene that has only photos."""
    colmap = scene_dir / contract.COLMAP_DIR
    if need_model and not (contract.has_colmap_model(scene_dir / contract.SPARSE_DIR) or contract.has_colmap_model(colmap)):
        return (f"{contract.MSG_COLMAP_NOT_FOUND} at {colmap} or {scene_dir / contract.SPARSE_DIR} "
                "(expected cameras/images/points3D .bin or .txt)")
    images = scene_dir / contract.IMAGES_DIR
    if not images.is_dir() or not any(p.is_file() and not p.name.startswith(".") for p in images.iterdir()):
        return f"{contract.MSG_NO_IMAGES} in {images}"
    return None
