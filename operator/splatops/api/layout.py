"""Where a training's outputs live on the volume: the one place that decides it.

Every training owns one output directory: `<scene.path>/gsplat/<training name>/` by default, or
`spec.output.path`. The Job builder (the trainer's SPLATOPS_OUTPUT_DIR), the status
(`status.modelPath`), the operator's OutputBusy queue, the CLI and the gateway all ask here.
The original REST API keeps the seed's single `<scene>/gsplat/` by naming it in `spec.output.path`
(`seed_output_path`).
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Mapping

from pydantic import ValidationError

from splatops import contract, names
from splatops.api.models import Spec, parse_spec

OutputKey = tuple[str, str, str]  # (namespace, claim name, output directory relative to the volume)


@dataclasses.dataclass(frozen=True)
class OutputLocation:
    """A training's resolved output directory on its claim."""

    claim: str
    directory: str  # relative to the volume root, normalised (no trailing '/')

    @property
    def model_path(self) -> str:
        """results.ply relative to the volume root (what status.modelPath reports)."""
        return posixpath.join(self.directory, contract.RESULT_PLY)

    @property
    def in_pod(self) -> str:
        """The directory as the trainer pod sees it (the claim is mounted at names.SCENE_MOUNT)."""
        return posixpath.normpath(posixpath.join(names.SCENE_MOUNT, self.directory))

    def key(self, namespace: str) -> OutputKey:
        return (namespace, self.claim, self.directory)


def seed_output_path(scene_path: str) -> str:
    """The original pipeline's single output directory, `<scene>/gsplat` (the REST gateway's)."""
    return posixpath.normpath(posixpath.join(scene_path, contract.OUTPUT_DIR))


def output_location(spec: Spec, training_name: str) -> OutputLocation:
    """`spec.output.path`, else `<scene.path>/gsplat/<training name>`."""
    explicit = spec.output.path if spec.output is not None else None
    directory = explicit if explicit is not None else posixpath.join(seed_output_path(spec.scene.path), training_name)
    return OutputLocation(claim=spec.scene.claim_name, directory=posixpath.normpath(directory))


def location_of(resource: Mapping[str, Any]) -> OutputLocation | None:
    """The output location of a whole resource (None if its spec is not valid)."""
    try:
        spec = parse_spec(dict(resource.get("spec") or {}))
    except ValidationError:
        return None
    return output_location(spec, str((resource.get("metadata") or {}).get("name") or ""))


def volume_relative(path: str) -> str:
    """A path relative to the volume root, whether the trainer reported it as seen in its pod
    (`/data/scenes/fox/gsplat/x/results.ply`) or it is relative already."""
    mount = names.SCENE_MOUNT.rstrip("/") + "/"
    if path.startswith(mount):
        path = path[len(mount):]
    return path.lstrip("/")


def in_volume(path: str) -> bool:
    """Whether a reported path names a file on the volume (relative, or under the pod's mount)."""
    return bool(path) and (not path.startswith("/") or path.startswith(names.SCENE_MOUNT.rstrip("/") + "/"))
