"""Structure-from-motion in the trainer: photos in (a textured synthetic scene rendered without a
COLMAP model), `colmap/sparse_initial/` out, then training; the failure path; interruptions.

The trainer runs as a process (as in the pod). SfM on 12 photos of 320x240 takes a few seconds
on two cores;
the tests that run it three or four times are marked slow (they still run in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatops import contract
from splatops_trainer import reconstruct, scene as scene_mod
from splatops_trainer.config import TrainerConfig
from splatops_trainer.synthetic import make_textured_scene
from trainer_process import TrainerProcess, started_by

N_VIEWS = 12
FAST = ("--device", "cpu", "--metrics-port", "0", "--data-factor", "2", "--sh-degree", "0", "--test-every", "4")


@pytest.fixture(scope="module")
def photos_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "scene"
    make_textured_scene(root, n_views=N_VIEWS)
    return root


@pytest.fixture
def photos(photos_master: Path, tmp_path: Path) -> Path:
    """A scene folder with images/ only: no colmap/, no sparse/."""
    dst = tmp_path / "scene"
    shutil.copytree(photos_master, dst)
    return dst


class Trainer(TrainerProcess):
    def __init__(self, scene: Path, *args: str) -> None:
        self.term = scene.parent / f"term-{time.monotonic_ns()}"
        super().__init__(["--scene-dir", str(scene), "--termination-log", str(self.term), *FAST, *args],
                         scene.parent / f"stderr-{time.monotonic_ns()}.txt", 240)

    def wait_for_stage(self, prefix: str) -> contract.StageReport:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            stage = contract.parse_stage_line(line)
            if stage is not None and stage.message.startswith(prefix):
                return stage
        raise AssertionError(f"no stage {prefix!r} before the trainer ended: {self.stderr()[-3000:]}")

    def finish(self, timeout: float = 240) -> int:
        return super().finish(timeout)

    def stages(self) -> list[contract.StageReport]:
        return [s for s in map(contract.parse_stage_line, self.lines) if s is not None]

    def result(self) -> contract.Result:
        result = contract.parse_result(self.term.read_text())
        assert result is not None
        return result


trainers = started_by(Trainer)


@pytest.fixture(scope="module")
def reconstructed(photos_master: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Trainer]]:
    """The photos reconstructed, then trained 3 steps, by one trainer process (finished): the one
    structure-from-motion run the tests below read. Read-only: copy the scene to change it."""
    scene = tmp_path_factory.mktemp("reconstructed") / "scene"
    shutil.copytree(photos_master, scene)
    trainer = Trainer(scene, "--max-steps", "3")
    try:
        trainer.finish()
        yield scene, trainer
    finally:
        trainer.kill()


def _no_half_models(scene: Path) -> None:
    colmap = scene / "colmap"
    leftovers = [p.name for p in colmap.iterdir()] if colmap.is_dir() else []
    assert not [n for n in leftovers if n.startswith(".")], leftovers


# --- photos in, model out, training starts ------------------------------------------------------------


def test_photos_become_a_model_and_training_starts(reconstructed: tuple[Path, Trainer]) -> None:
    photos, trainer = reconstructed
    assert trainer.proc.returncode == 0, trainer.stderr()[-3000:]
    messages = [s.message for s in trainer.stages()]
    assert messages[0] == f"Extracting features 0/{N_VIEWS}"
    assert any(m.startswith("Matching (exhaustive)") for m in messages)
    assert any(m.startswith("Registered ") for m in messages)
    assert all(s.stage == contract.STAGE_RECONSTRUCTING for s in trainer.stages())
    # The stage events all come before training's progress: the operator shows them first.
    first_progress = next(i for i, line in enumerate(trainer.lines) if contract.parse_progress_line(line))
    assert max(i for i, line in enumerate(trainer.lines) if contract.parse_stage_line(line)) < first_progress

    model = photos / contract.COLMAP_DIR
    assert {p.name for p in model.iterdir()} >= {"cameras.bin", "images.bin", "points3D.bin"}
    assert os.readlink(photos / contract.SPARSE_DIR) == contract.SPARSE_LINK_TARGET
    recon = scene_mod.read_model(model)
    assert recon.num_reg_images() >= N_VIEWS - 2
    assert [c.model.name for c in recon.cameras.values()] == ["SIMPLE_RADIAL"]  # one shared camera
    _no_half_models(photos)

    result = trainer.result()
    assert result.succeeded and result.steps == 3
    numbers = result.reconstruction
    assert numbers is not None and numbers["registered"] == recon.num_reg_images() and numbers["images"] == N_VIEWS
    assert numbers["matcher"] == "exhaustive" and numbers["camera_mode"] == "single"
    assert numbers["points"] == recon.num_points3D() > 100 and 0 < numbers["mean_reprojection_error_px"] < 2
    config = json.loads((photos / "gsplat" / contract.CONFIG_FILE).read_text())
    assert config["reconstruction"]["registered"] == numbers["registered"]
    assert not (photos / "gsplat" / reconstruct.WORKSPACE).exists()  # the database is removed
    assert "Reconstruction | " in (photos / "gsplat" / contract.TRAINING_LOG).read_text()


@pytest.mark.slow
def test_a_scene_with_a_model_is_not_reconstructed(reconstructed: tuple[Path, Trainer], tmp_path: Path, trainers) -> None:
    source, first = reconstructed  # the model made by this output directory's own run
    assert first.proc.returncode == 0, first.stderr()[-3000:]
    photos = tmp_path / "scene"
    shutil.copytree(source, photos, symlinks=True)
    before = (photos / contract.COLMAP_DIR / "points3D.bin").read_bytes()
    again = trainers(photos, "--reconstruct-only")  # IfMissing: the model is there now
    assert again.finish() == 0, again.stderr()[-3000:]
    assert again.stages() == [] and again.result().reconstruction == first.result().reconstruction  # its numbers
    assert (photos / contract.COLMAP_DIR / "points3D.bin").read_bytes() == before
    # Always, by the same output directory (a retried pod): its own model is not redone ...
    retried = trainers(photos, "--reconstruct-only", "--reconstruct", "Always")
    assert retried.finish() == 0 and retried.stages() == []
    assert retried.result().reconstruction["registered"] == first.result().reconstruction["registered"]  # type: ignore[index]
    # ... but another training's Always does redo it, keeping the replaced one beside it.
    other = trainers(photos, "--reconstruct-only", "--reconstruct", "Always", "--output-dir", str(photos / "gsplat" / "other"))
    assert other.finish() == 0, other.stderr()[-3000:]
    assert other.stages() and scene_mod.has_model(photos / (contract.COLMAP_DIR + reconstruct.PREVIOUS_SUFFIX))
    _no_half_models(photos)


def test_never_keeps_colmap_not_found(photos: Path, trainers) -> None:
    trainer = trainers(photos, "--reconstruct", "Never")
    assert trainer.finish() == int(contract.ExitCode.INVALID_INPUT)
    assert trainer.result().reason == contract.Reason.COLMAP_NOT_FOUND.value and trainer.stages() == []


# --- failures ------------------------------------------------------------------------------------------


def test_unrelated_photos_fail_with_an_actionable_message(tmp_path: Path, trainers) -> None:
    scene = tmp_path / "noise"
    (scene / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):  # unrelated noise: features, but nothing matches geometrically
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(scene / "images" / f"n{i}.jpg")
    trainer = trainers(scene, "--max-steps", "3")
    assert trainer.finish() == int(contract.ExitCode.INVALID_INPUT)
    result = trainer.result()
    assert result.reason == contract.Reason.RECONSTRUCTION_FAILED.value
    assert "registered only 0 of 6 images" in (result.error or "") and "more overlap" in (result.error or "")
    assert "n0.jpg" in (result.error or "")
    assert not (scene / contract.COLMAP_DIR).exists() and not os.path.lexists(scene / contract.SPARSE_DIR)
    assert "ReconstructionFailed" in (scene / "gsplat" / contract.ERROR_LOG).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_reconstruction_leaves_no_model_and_restarts(photos: Path, trainers, sig: signal.Signals) -> None:
    trainer = trainers(photos, "--reconstruct-only")
    trainer.wait_for_stage("Matching")  # mid-SfM: features in the database, no model yet
    trainer.proc.send_signal(sig)
    code = trainer.finish()
    if sig == signal.SIGTERM:  # our handler cancels the pycolmap step and reports, promptly
        assert code == int(contract.ExitCode.TERMINATED), trainer.stderr()[-3000:]
        assert trainer.result().reason == contract.Reason.TERMINATED.value
    else:
        assert code == -signal.SIGKILL
    assert not (photos / contract.COLMAP_DIR).exists() and not os.path.lexists(photos / contract.SPARSE_DIR)
    assert (photos / "gsplat" / reconstruct.WORKSPACE / "database.db").exists()  # the half-done work
    again = trainers(photos, "--reconstruct-only")
    assert again.finish() == 0, again.stderr()[-3000:]
    assert again.stages()[0].message == f"Extracting features 0/{N_VIEWS}"  # started afresh
    assert again.result().reconstruction["registered"] >= N_VIEWS - 2  # type: ignore[index]
    _no_half_models(photos)


# --- pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "model_at", "expected"),
    [
        ("IfMissing", None, True),
        ("IfMissing", contract.COLMAP_DIR, False),
        ("IfMissing", contract.SPARSE_DIR, False),  # a user's own sparse/0 counts
        ("Always", contract.COLMAP_DIR, True),
        ("Never", None, False),
    ],
)
def test_when_to_reconstruct(tmp_path: Path, mode: str, model_at: str | None, expected: bool) -> None:
    (tmp_path / "images").mkdir()
    if model_at is not None:
        (tmp_path / model_at).mkdir(parents=True)
        for part in ("cameras", "images", "points3D"):
            (tmp_path / model_at / f"{part}.txt").write_text("")
    assert reconstruct.wanted(TrainerConfig(scene_dir=tmp_path, reconstruct=mode)) is expected  # type: ignore[arg-type]


def test_reconstruct_modes_match_the_contract() -> None:
    from typing import get_args

    from splatops_trainer.config import Reconstruct

    assert get_args(Reconstruct) == contract.RECONSTRUCT_MODES


def test_camera_mode_follows_size_and_exif(tmp_path: Path) -> None:
    names = []
    for i, (size, model) in enumerate([((64, 48), "A"), ((64, 48), "A"), ((64, 48), "B")]):
        exif = Image.Exif()
        exif[0x0110] = model
        Image.new("RGB", size).save(tmp_path / f"{i}.jpg", exif=exif)
        names.append(f"{i}.jpg")
    sizes = scene_mod.check_image_headers(tmp_path, names)
    assert reconstruct.camera_mode(tmp_path, names[:2], sizes)[1] == "single"
    assert reconstruct.camera_mode(tmp_path, names, sizes)[1] == "per-image"  # another camera model


def test_stale_publish_temps_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    stale, live = tmp_path / ".sparse_initial.abc.tmp", tmp_path / ".sparse_initial.def.tmp"
    stale.mkdir()
    live.mkdir()
    old = time.time() - 2 * reconstruct.STALE_TEMP_S
    os.utime(stale, (old, old))
    reconstruct.remove_stale_temps(tmp_path, "sparse_initial")
    assert not stale.exists() and live.exists()


def test_stage_events_round_trip_and_the_newest_report_wins() -> None:
    stage = contract.StageReport(stage=contract.STAGE_RECONSTRUCTING, message="Extracting features 12/50", done=12, total=50)
    assert contract.parse_stage_line(stage.to_json()) == stage
    assert contract.parse_progress_line(stage.to_json()) is None  # old operators ignore it
    progress = contract.Progress(step=100, max_steps=1000, loss=0.1)
    assert contract.last_report(stage.to_json()) == stage
    assert contract.last_report("\n".join([stage.to_json(), "noise", progress.to_json()])) == progress
    assert contract.last_report("\n".join([progress.to_json(), stage.to_json()])) == stage  # a retried pod reconstructing


def test_an_empty_scene_reports_no_images(tmp_path: Path, trainers) -> None:
    """Nothing to reconstruct from: the photos are what is missing, not the COLMAP model."""
    scene = tmp_path / "empty"
    scene.mkdir()
    trainer = trainers(scene)
    assert trainer.finish() == int(contract.ExitCode.INVALID_INPUT)
    assert trainer.result().reason == contract.Reason.NO_IMAGES.value and trainer.stages() == []


def test_a_stop_cancels_the_pycolmap_step_and_waits_for_it() -> None:
    """SIGTERM's Terminated (here: an exception from the progress poll, in the main thread) cancels
    the running step through its token and joins it before going on: the process never exits
    with pycolmap still running on the worker thread."""
    finished: list[bool] = []

    def step(token) -> None:  # noqa: ANN001 - a pycolmap.CancellationToken
        deadline = time.monotonic() + 30
        while not token.is_cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(token.is_cancelled)

    def poll() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reconstruct.run_cancellable(step, poll)
    assert finished == [True]
