"""`splatops local` end to end on the CPU: synthetic scene, embedded API, operator, executor, trainer.

Runs the installed command as a user would (a subprocess with a timeout) and checks its output and
results.ply. Training is tiny (a few dozen steps) to respect the CI budget.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from splatops.local import run as local_run

SPLATOPS = pathlib.Path(sys.executable).with_name("splatops")
E2E_STEPS = 30
E2E_TIMEOUT = 130


def splatops(*argv: str, cwd: pathlib.Path, timeout: float = E2E_TIMEOUT) -> subprocess.CompletedProcess[str]:
    assert SPLATOPS.exists(), f"{SPLATOPS} is not installed (bash scripts/setup: pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run([str(SPLATOPS), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT + 20)
def test_local_trains_a_synthetic_scene_end_to_end(tmp_path):
    proc = splatops("local", "--max-steps", str(E2E_STEPS), "--device", "cpu", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    workdir = tmp_path / local_run.DEFAULT_WORKDIR  # the default, relative to where it runs
    ply = workdir / "volume" / "scenes" / "synthetic" / "gsplat" / "synthetic" / "results.ply"  # its own output
    # What a cluster user sees: the resource, its phases, the original progress words, the outcome.
    assert "gaussiansplattrainings.splatops.dev/synthetic created" in out
    assert "synthetic: phase: Running" in out and "synthetic: phase: Succeeded" in out
    assert re.search(rf"Iteration \d+/{E2E_STEPS} \| Loss: \d+\.\d{{4}}", out)
    assert '"status": "complete"' in out
    assert f"results.ply: {ply} (" in out
    # It ends with the web page of the trained model (and how to open it again once it has stopped).
    assert re.search(r"^web page: http://127\.0\.0\.1:\d+/trainings/default/synthetic$", out.rstrip().splitlines()[-1])
    assert f"splatops view {ply.parent}" in out
    assert (ply.parent / "results.spz").is_file() and (ply.parent / "preview.png").is_file()
    assert ply.is_file() and ply.read_bytes().startswith(b"ply\n") and ply.stat().st_size > 1000
    assert (workdir / "kubeconfig").is_file() and (workdir / "volumes.json").is_file()


@pytest.mark.parametrize("layout, message", [
    ([], "No images found"),  # (photos without a model are fine: the trainer reconstructs)
    (["colmap/sparse_initial/cameras.bin", "colmap/sparse_initial/images.bin", "colmap/sparse_initial/points3D.bin"],
     "No images found"),
])
def test_local_rejects_a_scene_without_inputs_before_starting(tmp_path, layout, message):
    scene = tmp_path / "myscene"
    scene.mkdir()
    for rel in layout:
        (scene / rel).parent.mkdir(parents=True, exist_ok=True)
        (scene / rel).write_bytes(b"\0")
    before = sorted(str(p.relative_to(scene)) for p in scene.rglob("*"))
    proc = splatops("local", "--scene", str(scene), "--workdir", str(tmp_path / "w"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and message in proc.stderr
    assert sorted(str(p.relative_to(scene)) for p in scene.rglob("*")) == before  # never written to


@pytest.mark.parametrize("scene, device, has_gpu, steps, factor", [
    (None, "auto", False, 100, 1),
    (None, "auto", True, 300, 1),
    ("fox", "auto", False, 2000, 4),
    ("fox", "auto", True, 7000, 2),
    ("fox", "cpu", True, 2000, 4),
])
def test_plan_quick_defaults(tmp_path, scene, device, has_gpu, steps, factor):
    import argparse

    parser = argparse.ArgumentParser()
    local_run.add_arguments(parser)
    argv = ["--workdir", str(tmp_path / "w"), "--device", device] + (["--scene", str(tmp_path / scene)] if scene else [])
    p = local_run.plan(parser.parse_args(argv), has_gpu=has_gpu)
    assert (p.max_steps, p.data_factor) == (steps, factor)
    assert p.scene_path == f"scenes/{scene or 'synthetic'}"
    assert p.scene_dir == (tmp_path / "w" / "volume" / p.scene_path)
    assert p.device == ("cuda" if has_gpu and device != "cpu" else "cpu")


@pytest.mark.timeout(90)
def test_local_reports_a_training_failure_with_its_message(tmp_path):
    """A scene that passes the quick checks but whose COLMAP model is garbage: the trainer
    fails, the resource goes Failed, and `splatops local` exits 1 with the actionable message."""
    scene = tmp_path / "broken"
    for rel in ("colmap/sparse_initial/cameras.bin", "colmap/sparse_initial/images.bin",
                "colmap/sparse_initial/points3D.bin", "images/a.jpg"):
        (scene / rel).parent.mkdir(parents=True, exist_ok=True)
        (scene / rel).write_bytes(b"junk")
    proc = splatops("local", "--scene", str(scene), "--workdir", str(tmp_path / "w"), "--device", "cpu",
                    cwd=tmp_path, timeout=80)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "broken: phase: Failed" in proc.stdout and '"status": "failed"' in proc.stdout
    assert "error: training failed:" in proc.stderr


def test_link_scene_links_inputs_and_never_writes_the_source(tmp_path):
    src = tmp_path / "src"
    for rel in ("colmap/sparse_initial/cameras.bin", "colmap/sparse_initial/images.bin",
                "colmap/sparse_initial/points3D.bin", "images/a.jpg"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"\0")
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    target = tmp_path / "vol" / "scenes" / "src"
    local_run.link_scene(src, target)
    local_run.link_scene(src, target)  # idempotent
    assert (target / "images").resolve() == (src / "images").resolve()
    assert (target / "colmap").is_symlink() and (target / "colmap/sparse_initial/cameras.bin").is_file()
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT + 20)
def test_local_trains_a_plain_folder_of_photos(tmp_path):
    """Photos in, model out: a folder of JPEGs (no images/, no COLMAP model) is reconstructed by
    the trainer (status shows it), then trained; the folder itself is never written to."""
    from splatops_trainer.synthetic import make_textured_scene

    make_textured_scene(tmp_path / "shoot", n_views=12)
    photos = tmp_path / "shoot" / "images"  # used as a plain folder of photos
    before = sorted(p.name for p in photos.iterdir())
    proc = splatops("local", "--scene", str(photos), "--workdir", str(tmp_path / "w"), "--device", "cpu",
                    "--max-steps", "5", "--data-factor", "2", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert "images: phase: Running (Reconstructing the scene from its photos: " in out
    assert re.search(r"Registered \d+/12 images", out) and "images: phase: Succeeded" in out
    scene = tmp_path / "w" / "volume" / "scenes" / "images"
    assert (scene / "colmap" / "sparse_initial" / "points3D.bin").is_file() and not (scene / "colmap").is_symlink()
    assert (scene / "gsplat" / "images" / "results.ply").is_file()
    assert sorted(p.name for p in photos.iterdir()) == before


@pytest.mark.parametrize("partial", [[], ["colmap/sparse_initial/cameras.bin"]])
def test_link_scene_of_photos_only_links_no_model(tmp_path, partial):
    """No model (or half of one) in the user's folder: colmap/ is not linked, so the trainer's
    reconstruction lands in the work scene, never in the user's folder."""
    src = tmp_path / "photos"
    src.mkdir()
    for rel in partial:
        (src / rel).parent.mkdir(parents=True)
        (src / rel).write_bytes(b"")
    (src / "a.jpg").write_bytes(b"\xff\xd8")
    target = tmp_path / "vol" / "scenes" / "photos"
    local_run.link_scene(src, target)
    assert (target / "images").resolve() == src.resolve() and not (target / "colmap").exists()
    (target / "colmap" / "sparse_initial").mkdir(parents=True)  # what the trainer reconstructs is kept
    local_run.link_scene(src, target)
    assert (target / "colmap" / "sparse_initial").is_dir()
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()) == sorted(["a.jpg", *partial])


async def test_operator_runs_on_its_own_thread_and_loop(tmp_path, monkeypatch):
    """`splatops local` runs kopf on its own thread and event loop: on stop, kopf cancels every task
    of its loop it did not start with, which must never be the emulator's or the executor's."""
    import asyncio
    import threading

    from splatops.local import cluster as c

    async with c.running_cluster(tmp_path / "kubeconfig", namespace=local_run.NAMESPACE) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))  # kopf logs in with it
        operator = local_run.OperatorHandle(local_run.operator_settings(local_run.LOCAL_OPERATOR_SETTINGS))
        operator.start()
        try:
            await operator.wait_ready(60.0)
            bystander = asyncio.create_task(asyncio.Event().wait())  # a task kopf did not see at startup
            assert "splatops-operator" in [t.name for t in threading.enumerate()]
        finally:
            await operator.shutdown()
        assert not bystander.done()  # kopf's stop left this loop alone
        bystander.cancel()
        assert "splatops-operator" not in [t.name for t in threading.enumerate()]  # stopped, not abandoned
