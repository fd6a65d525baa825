"""`splatops train --reconstruct`: the spec field reaches the resource and validates against the
CRD; a photos-only scene on a local volume is accepted (the trainer reconstructs it)."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from splatops.cli import main as cli
from splatops.client import download as dl
from splatops.local import cluster as c

from .test_commands import NS, _strip_k8s_extensions, crd_schema, flags, kube, run  # noqa: F401 (kube: fixture)


@pytest.mark.parametrize("mode", ["IfMissing", "Always", "Never"])
async def test_dry_run_carries_reconstruct(capsys, mode):
    assert await run("train", "fox", "--pvc", "scenes", "--dry-run", "--reconstruct", mode) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    jsonschema.validate(doc, _strip_k8s_extensions(crd_schema()))
    assert doc["spec"]["reconstruct"] == mode


async def test_reconstruct_rejects_other_values(capsys):
    assert await run("train", "fox", "--pvc", "scenes", "--dry-run", "--reconstruct", "Sometimes") == cli.EXIT_USAGE


async def test_a_photos_only_scene_on_a_local_volume_is_trained(kube, tmp_path, capsys):
    volume = tmp_path / "volume"
    (volume / "fox" / "images").mkdir(parents=True)
    (volume / "fox" / "images" / "0001.jpg").write_bytes(b"\xff\xd8")
    dl.write_local_volumes(kube.kubeconfig.parent, {"scenes": str(volume)})
    assert await run("train", "fox", "--pvc", "scenes", *flags(kube)) == 0, capsys.readouterr().err
    (created,) = kube.emulator.list_objects(c.TRAINING_RESOURCE, NS)
    assert created["spec"]["reconstruct"] == "IfMissing"  # the schema's default: SfM in the pod
