"""The CLI as users run it: a separate process (`python -m splatops.cli.main`) against the
emulated API server: --version, kubectl's global flags before or after the verb, `list -A`,
`-o wide|yaml|json`, and `train --queue --gpus --memory`."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys

import pytest
import yaml

import splatops
from splatops import names
from splatops.local import cluster as c

PACKAGE_ROOT = str(pathlib.Path(splatops.__file__).resolve().parents[1])


async def splat(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in its own process; the emulator keeps serving in this loop meanwhile."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("KUBECONFIG", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "splatops.cli.main", *argv, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def cluster(tmp_path):
    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        yield cl


async def test_version() -> None:
    code, out, _ = await splat("--version")
    assert (code, out.strip()) == (0, f"splatops {splatops.__version__}")


async def test_train_with_global_flags_before_the_verb_and_list_all_namespaces(cluster) -> None:
    kc = str(cluster.kubeconfig)
    code, out, err = await splat("--kubeconfig", kc, "-n", "team-a", "train", "fox", "--pvc", "scenes", "--skip-pvc-check",
                                 "--queue", "gpu-a10g", "--gpus", "2", "--memory", "24Gi")
    assert code == 0, err
    assert f"{names.PLURAL}.{names.GROUP}/fox created" in out
    spec = cluster.emulator.read(c.TRAINING_RESOURCE, "team-a", "fox")["spec"]
    assert spec["queueName"] == "gpu-a10g" and spec["resources"] == {"gpus": 2, "memory": "24Gi"}
    # The same flags after the verb; and a mix.
    code, _, err = await splat("train", "lego", "--pvc", "scenes", "--skip-pvc-check", "-n", "team-b", "--kubeconfig", kc)
    assert code == 0, err
    code, _, err = await splat("-n", "team-b", "train", "chair", "--pvc", "scenes", "--skip-pvc-check", "--kubeconfig", kc)
    assert code == 0, err
    assert cluster.emulator.read(c.TRAINING_RESOURCE, "team-b", "chair") is not None

    code, out, err = await splat("list", "-A", "-o", "wide", "--kubeconfig", kc)
    assert code == 0, err
    header, *rows = [line.split() for line in out.splitlines()]
    assert header[:2] == ["NAMESPACE", "NAME"] and header[-4:] == ["REASON", "QUEUE", "GPUS", "JOB"]
    assert sorted((r[0], r[1]) for r in rows) == [("team-a", "fox"), ("team-b", "chair"), ("team-b", "lego")]
    assert [r[0] for r in rows] == ["team-a", "team-b", "team-b"]  # grouped by namespace
    assert rows[0][-3:-1] == ["gpu-a10g", "2"]

    code, out, _ = await splat("--kubeconfig", kc, "-n", "team-b", "list")
    assert code == 0 and sorted(line.split()[0] for line in out.splitlines()[1:]) == ["chair", "lego"]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
async def test_list_as_a_kubectl_list(cluster, fmt: str) -> None:
    kc = str(cluster.kubeconfig)
    assert (await splat("train", "fox", "--pvc", "scenes", "--skip-pvc-check", "--kubeconfig", kc))[0] == 0
    code, out, err = await splat("list", "-o", fmt, "--all-namespaces", "--kubeconfig", kc)
    assert code == 0, err
    listing = yaml.safe_load(out) if fmt == "yaml" else json.loads(out)
    assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
    (item,) = listing["items"]
    assert (item["kind"], item["metadata"]["name"], item["spec"]["scene"]["claimName"]) == (names.KIND, "fox", "scenes")


async def test_bad_output_format_is_a_usage_error() -> None:
    code, _, err = await splat("list", "-o", "xml")
    assert code == 2 and "invalid choice: 'xml'" in err
