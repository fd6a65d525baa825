"""Typed scene data handed from scene loading (scene.py) to training (train.py).

Interface between the two halves of the trainer; extend it, do not replace it.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class View:
    """One undistorted, already downscaled pinhole view."""

    name: str  # image file name relative to images/
    K: torch.Tensor  # [3, 3] float32 intrinsics at this resolution
    viewmat: torch.Tensor  # [4, 4] float32 world-to-camera (OpenCV convention, like COLMAP)
    image: torch.Tensor  # [H, W, 3] uint8, kept on the CPU; moved to the device per step

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclasses.dataclass
class SceneData:
    train: list[View]
    test: list[View]  # held out: every `test_every`-th image by default
    points: torch.Tensor  # [N, 3] float32 sparse COLMAP points (initialisation)
    colors: torch.Tensor  # [N, 3] float32 in [0, 1]
    scene_scale: float  # radius of the camera centres around their mean, times 1.1 (3DGS norm)
    fingerprint: str = ""  # the scene content's identity (scene.scene_fingerprint); in the resume key
