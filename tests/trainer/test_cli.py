"""splatops-train end to end: options from flags and env, every failure's exit code and outputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from splatops import contract
from splatops_trainer import cli, config, ply
from splatops_trainer.config import TrainerConfig
from splatops_trainer.errors import Terminated, TrainerError
from splatops_trainer.train import TrainingDivergedError

from cpu_trainings import EARLIER_PLY, CpuTrainings



# --- options -------------------------------------------------------------------------------------


def _options(argv: list[str], env: dict[str, str]) -> TrainerConfig:
    """What main() builds: flags over the given env vars."""
    return TrainerConfig(**config.read_options(argv, env))


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({contract.ENV_DATA_FACTOR: "4"}, "data_factor", 4),
        ({contract.ENV_MAX_STEPS: "7000"}, "max_steps", 7000),
        ({contract.ENV_STRATEGY: "mcmc"}, "strategy", "mcmc"),
        ({contract.ENV_DEVICE: "cpu"}, "device", "cpu"),
        ({contract.ENV_SH_DEGREE: "2"}, "sh_degree", 2),
        ({contract.ENV_TEST_EVERY: "0"}, "test_every", 0),
        ({contract.ENV_CAP_MAX: "5000"}, "cap_max", 5000),
        ({contract.ENV_METRICS_PORT: "0"}, "metrics_port", 0),
        ({contract.ENV_TERMINATION_LOG: "/tmp/t"}, "termination_log", Path("/tmp/t")),
        ({contract.ENV_SCENE_ID: "mijato"}, "scene_id", "mijato"),
        ({contract.ENV_PROGRESS_EVERY: "10"}, "progress_every", 10),
        ({"SPLATOPS_SSIM_LAMBDA": "0.3"}, "ssim_lambda", 0.3),
        ({"SPLATOPS_RESUME": "false"}, "resume", False),
        ({"SPLATOPS_RANDOM_BACKGROUND": "yes"}, "random_background", True),
        ({"SPLATOPS_OUTPUT_DIR": "/tmp/out"}, "output_dir", Path("/tmp/out")),
        ({"SPLATOPS_SCENE_ID": ""}, "scene_id", "scene"),  # empty = unset: the default applies
    ],
)
def test_env_maps_to_options(env: dict[str, str], field: str, expected: object) -> None:
    cfg = _options([], {contract.ENV_SCENE_DIR: "/data/scene", **env})
    assert getattr(cfg, field) == expected


def test_every_field_has_a_flag_and_an_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    names = config.option_names()
    env_names = {v for k, v in vars(contract).items() if k.startswith("ENV_") and k != "ENV_PREFIX"}
    assert env_names <= {config.env_var(n) for n in names}  # the operator's names all exist
    assert (config.flag("max_steps"), config.env_var("max_steps")) == ("--max-steps", contract.ENV_MAX_STEPS)
    with pytest.raises(SystemExit):
        _options(["--help"], {})
    shown = capsys.readouterr().out
    assert all(config.flag(n) in shown for n in names), shown
    values = {"max_steps": "7", "random_background": "true", "scene_id": "x", "formats": "ply"}
    for name in names:  # every option reaches its field from a flag (booleans as --name / --no-name)
        if name in values:
            args = [config.flag(name), values[name]] if name != "random_background" else [config.flag(name)]
            assert getattr(_options(["--scene-dir", "/s", *args], {}), name) in (7, True, "x", "ply")


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--strategy", "fast"], {}, "strategy: Input should be 'default' or 'mcmc', got 'fast' from --strategy (or SPLATOPS_STRATEGY)"),
        ([], {contract.ENV_SEED: "x"}, "seed: Input should be a valid integer"),
        (["--max-steps", "0", "--sh-degree", "5"], {}, "max_steps must be at least 1, got 0; sh_degree must be between 0 and 4"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_named(argv: list[str], env: dict[str, str], words: str) -> None:
    with pytest.raises(TrainerError, match=re.escape(words)) as err:
        _options(["--scene-dir", "/s", *argv], env)
    assert err.value.reason is contract.Reason.INVALID_OPTIONS and err.value.message.startswith("Invalid options: ")


def test_built_in_code_reads_no_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.ENV_MAX_STEPS, "5")
    assert TrainerConfig(scene_dir=Path("/s")).max_steps == 30_000
    assert TrainerConfig(scene_dir=Path("/s")).replace(max_steps=9).max_steps == 9


def test_flags_win_over_env() -> None:
    env = {contract.ENV_SCENE_DIR: "/env/scene", contract.ENV_MAX_STEPS: "10", "SPLATOPS_RESUME": "false"}
    cfg = _options(["--scene-dir", "/flag/scene", "--max-steps", "20", "--resume"], env)
    assert (cfg.scene_dir, cfg.max_steps, cfg.resume) == (Path("/flag/scene"), 20, True)


# --- failures --------------------------------------------------------------------------------------


@pytest.fixture
def scene(scene_copy: Path) -> Path:
    """A valid synthetic scene (conftest's `scene_copy`) with an earlier results.ply that must survive failures."""
    out = scene_copy / contract.OUTPUT_DIR
    out.mkdir(exist_ok=True)
    (out / contract.RESULT_PLY).write_bytes(EARLIER_PLY)
    return scene_copy


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any CUDA query fails the test: input errors must be decided before the GPU is touched."""

    def forbidden(*a: object, **k: object) -> bool:
        raise AssertionError("torch.cuda used before the input was validated")

    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    monkeypatch.setattr(torch.cuda, "device_count", forbidden)


def run_main(scene: Path, *extra: str) -> tuple[int, contract.Result | None]:
    term = scene.parent / "termination-log"
    term.unlink(missing_ok=True)
    code = cli.main(["--scene-dir", str(scene), "--termination-log", str(term), "--metrics-port", "0", "--device", "cpu", *extra])
    return code, contract.parse_result(term.read_text()) if term.exists() else None


def _rm(rel: str):
    return lambda s: shutil.rmtree(s / rel)


def _empty_images(s: Path) -> None:
    for p in (s / contract.IMAGES_DIR).iterdir():
        p.unlink()


def _drop_one_image(s: Path) -> None:
    sorted((s / contract.IMAGES_DIR).iterdir())[0].unlink()


def _corrupt_model(s: Path) -> None:
    for p in (s / contract.COLMAP_DIR).glob("images.*"):
        p.write_bytes(p.read_bytes()[:30])


def _fisheye_camera(s: Path) -> None:
    """The synthetic scene's model rewritten (pycolmap) with an OPENCV_FISHEYE camera."""
    import pycolmap

    model_dir = s / contract.COLMAP_DIR
    recon = pycolmap.Reconstruction(str(model_dir))
    for cid, cam in list(recon.cameras.items()):
        f, cx, cy = cam.focal_length_x, cam.principal_point_x, cam.principal_point_y
        recon.cameras[cid] = pycolmap.Camera(
            camera_id=cid, model="OPENCV_FISHEYE", width=cam.width, height=cam.height,
            params=[f, f, cx, cy, 0.01, 0.0, 0.0, 0.0],
        )
    recon.write_binary(str(model_dir))
    assert pycolmap.Reconstruction(str(model_dir)).cameras[1].model.name == "OPENCV_FISHEYE"


def _garbage_image(s: Path) -> None:
    sorted((s / contract.IMAGES_DIR).iterdir())[1].write_bytes(b"<html>502 Bad Gateway</html>")


BAD = [
    # (with images and no model the default, --reconstruct IfMissing, runs SfM: test_reconstruct.py)
    ("no_colmap", _rm("colmap"), ["--reconstruct", "Never"], contract.Reason.COLMAP_NOT_FOUND, contract.MSG_COLMAP_NOT_FOUND),
    ("fisheye", _fisheye_camera, [], contract.Reason.UNSUPPORTED_CAMERA, "Unsupported camera model (camera 1: OPENCV_FISHEYE)"),
    ("garbage_image", _garbage_image, [], contract.Reason.INVALID_IMAGE, "view_001.png cannot be read as an image"),
    ("no_images_dir", _rm("images"), [], contract.Reason.NO_IMAGES, contract.MSG_NO_IMAGES),
    ("empty_images", _empty_images, [], contract.Reason.NO_IMAGES, contract.MSG_NO_IMAGES),
    ("missing_image", _drop_one_image, [], contract.Reason.MISSING_IMAGES, "missing from"),
    ("corrupt_model", _corrupt_model, [], contract.Reason.INVALID_MODEL, "could not be read"),
    ("data_factor", None, ["--data-factor", "3"], contract.Reason.INVALID_OPTIONS, "data_factor must be one of 1, 2, 4, 8"),
    ("max_steps", None, ["--max-steps", "0"], contract.Reason.INVALID_OPTIONS, "max_steps must be at least 1"),
    ("strategy", None, ["--strategy", "fast"], contract.Reason.INVALID_OPTIONS, "Input should be 'default' or 'mcmc', got 'fast' from --strategy"),
    ("not_a_number", None, ["--seed", "abc"], contract.Reason.INVALID_OPTIONS, "seed: Input should be a valid integer"),
]


@pytest.mark.parametrize(("breaker", "args", "reason", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_outputs(scene: Path, no_cuda: None, capsys, breaker, args, reason, words) -> None:
    if breaker is not None:
        breaker(scene)
    code, result = run_main(scene, "--device", "auto", *args)  # auto: a CUDA query would fail the test
    assert code == 2
    assert result is not None and result.status == "failed" and result.reason == reason.value
    assert words in result.error
    assert words in capsys.readouterr().err
    assert words in (scene / contract.OUTPUT_DIR / contract.ERROR_LOG).read_text()
    assert (scene / contract.OUTPUT_DIR / contract.RESULT_PLY).read_bytes() == EARLIER_PLY


def test_image_damaged_past_its_header_exits_2(scene: Path, capsys) -> None:
    img = sorted((scene / contract.IMAGES_DIR).iterdir())[2]
    img.write_bytes(img.read_bytes()[:60])  # the PNG header survives: found when decoding
    code, result = run_main(scene)
    assert code == 2 and result.reason == contract.Reason.INVALID_IMAGE.value
    assert str(img) in result.error and "re-upload it, or remove it" in result.error
    assert str(img) in capsys.readouterr().err
    assert str(img) in (scene / contract.OUTPUT_DIR / contract.ERROR_LOG).read_text()
    assert (scene / contract.OUTPUT_DIR / contract.RESULT_PLY).read_bytes() == EARLIER_PLY


def test_bad_env_value_exits_2(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.ENV_MAX_STEPS, "lots")
    code, result = run_main(scene)
    assert code == 2 and result.reason == contract.Reason.INVALID_OPTIONS.value
    assert contract.ENV_MAX_STEPS in result.error


def test_module_entrypoint_exit_code(tmp_path: Path) -> None:
    """`python -m splatops_trainer` in a real process: exit status 2, JSON on stdout, no traceback."""
    term = tmp_path / "term"
    proc = subprocess.run(
        [sys.executable, "-m", "splatops_trainer", "--scene-dir", str(tmp_path), "--metrics-port", "0", "--reconstruct", "Never"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, contract.ENV_TERMINATION_LOG: str(term)},
    )
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["reason"] == contract.Reason.COLMAP_NOT_FOUND.value
    assert "Traceback" not in proc.stderr and contract.MSG_COLMAP_NOT_FOUND in proc.stderr
    assert contract.parse_result(term.read_text()).reason == contract.Reason.COLMAP_NOT_FOUND.value


def test_flag_without_value_still_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "t"))
    assert cli.main(["--max-steps", "5", "--scene-dir"]) == 2
    assert "expected one argument" in contract.parse_result((tmp_path / "t").read_text()).error


def test_missing_scene_dir_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(contract.ENV_SCENE_DIR, raising=False)
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "t"))
    assert cli.main([]) == 2
    assert "--scene-dir (or SPLATOPS_SCENE_DIR) is required" in contract.parse_result((tmp_path / "t").read_text()).error


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--scene-dir", ""], {}), (["--scene-dir", "  "], {}), ([], {contract.ENV_SCENE_DIR: ""}), ([], {contract.ENV_SCENE_DIR: " "})],
    ids=["empty_flag", "blank_flag", "empty_env", "blank_env"],
)
def test_empty_scene_dir_is_missing_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, argv, env) -> None:
    """An empty value must not become Path('') == Path('.'): the working directory as the scene."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(contract.ENV_SCENE_DIR, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "t"))
    assert cli.main([*argv, "--metrics-port", "0"]) == 2
    words = "--scene-dir (or SPLATOPS_SCENE_DIR) is required"
    result = contract.parse_result((tmp_path / "t").read_text())
    assert result.reason == contract.Reason.INVALID_OPTIONS.value and words in result.error
    assert words in capsys.readouterr().err
    assert os.listdir(work) == []  # no gsplat/error.log, no sparse/ link in the working directory


def test_stale_temp_files_are_removed_at_start(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temps of writes a SIGKILL cut short (results.ply, config.json, the log, checkpoints, cache)."""
    out = scene / contract.OUTPUT_DIR
    stale = [
        out / ".results.ply.a1b2c3d4.tmp",
        out / ".config.json.k2_9xq0a.tmp",
        out / "results" / ".training_log.txt.00000000.tmp",
        out / "results" / "checkpoints" / ".ckpt_000100.pt.12345678.tmp",
        out / "cache" / "images_2" / ".view_000.png.png.abcdef01.tmp",
    ]
    kept = [out / "notes.tmp", out / ".keep", out / "results" / "checkpoints" / "ckpt_000100.pt"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    seen: dict[str, list[Path]] = {}

    def fake_train(cfg, data, hooks, device, **_):
        seen["left"] = [p for p in stale if p.exists()]
        raise KeyError("stop here")

    monkeypatch.setitem(sys.modules, "splatops_trainer.train", types.SimpleNamespace(train=fake_train))
    code, _ = run_main(scene, "--data-factor", "2")
    assert code == 1 and seen["left"] == []
    assert all(p.exists() for p in kept)
    assert (out / contract.RESULT_PLY).read_bytes() == EARLIER_PLY


def _raise(exc: BaseException):
    def fake_train(cfg, scene, hooks, device, **_):
        hooks.on_progress(contract.Progress(step=1, max_steps=cfg.max_steps, loss=0.5))
        raise exc

    return fake_train


def _sigterm(cfg, scene, hooks, device, should_stop):
    """train()'s side of SIGTERM: the handler only notes it; the loop sees it between steps."""
    hooks.on_progress(contract.Progress(step=1, max_steps=cfg.max_steps, loss=0.5))
    os.kill(os.getpid(), signal.SIGTERM)
    for step in range(2, 10**9):
        if should_stop():
            raise Terminated(resume_step=7)
        hooks.on_progress(contract.Progress(step=step, max_steps=cfg.max_steps, loss=0.5))


RUNTIME_FAILURES = [
    ("oom", _raise(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")), 3, contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM),
    ("oom_runtime", _raise(RuntimeError("CUDA error: out of memory")), 3, contract.Reason.OUT_OF_MEMORY, contract.MSG_OOM),
    ("diverged", _raise(TrainingDivergedError("Training diverged: the loss became nan")), 1, contract.Reason.TRAINING_DIVERGED, "Training diverged"),
    ("bug", _raise(KeyError("means")), 1, contract.Reason.TRAINER_ERROR, "KeyError: 'means'"),
    ("sigterm", _sigterm, 143, contract.Reason.TERMINATED, "terminated by SIGTERM (node drain or preemption); resumes from step 7"),
]


@pytest.mark.parametrize(("fake", "code", "reason", "words"), [f[1:] for f in RUNTIME_FAILURES], ids=[f[0] for f in RUNTIME_FAILURES])
def test_training_failures(scene: Path, monkeypatch: pytest.MonkeyPatch, fake, code: int, reason, words: str) -> None:
    monkeypatch.setitem(sys.modules, "splatops_trainer.train", types.SimpleNamespace(train=fake))
    got, result = run_main(scene, "--data-factor", "2")
    assert got == code
    assert result.status == "failed" and result.reason == reason.value and words in result.error
    out = scene / contract.OUTPUT_DIR
    assert words in (out / contract.ERROR_LOG).read_text()
    assert (out / contract.RESULT_PLY).read_bytes() == EARLIER_PLY
    assert not (out / contract.CONFIG_FILE).exists()
    log = (out / contract.TRAINING_LOG).read_text()
    assert "Iteration 1/30000 | Loss: 0.5000" in log and f"Training failed: {words}" in log
    assert not isinstance(signal.getsignal(signal.SIGTERM), cli.SigtermHandler)  # restored


# --- a real run ------------------------------------------------------------------------------------



def _check_web_outputs(scene: Path, out: Path, result: contract.Result) -> None:
    """preview.png, metrics.jsonl and the model formats beside results.ply, listed in the result."""
    from PIL import Image

    from splatops_trainer import fidelity, spz
    from splatops_trainer.config import TrainerConfig
    from splatops_trainer.scene import load_scene

    listed = {o["name"]: o for o in result.outputs}
    assert set(listed) == {"ply", "spz", "splat", "ply_compressed", "preview", "metrics", "config", "log"}
    for entry in listed.values():
        assert (out / entry["file"]).stat().st_size == entry["bytes"] > 0
        assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
    assert len(result.to_json().encode()) < contract.TERMINATION_MESSAGE_LIMIT
    with Image.open(out / contract.PREVIEW_PNG) as img:  # 3 held-out views at 32x24, scaled up: pairs side by side
        assert img.format == "PNG" and img.width == 4 * 320 + 5 * 4 and img.height >= 2 * 240
    lines = [json.loads(line) for line in (out / contract.METRICS_JSONL).read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "progress"] == [50, 100, 150, 200]
    assert [x["step"] for x in lines if x["event"] == "eval"] == [100, 200]
    assert all({"loss", "num_gaussians", "steps_per_sec"} <= set(x) for x in lines)
    assert all("psnr" in x and "ssim" in x for x in lines if x["event"] == "eval")
    header, _ = spz.decode((out / "results.spz").read_bytes())
    assert (header.num_points, header.sh_degree) == (result.num_gaussians, 1)
    # Rendered from the decoded files, the held-out views look like the PLY's (frames line up).
    views = load_scene(TrainerConfig(scene_dir=scene, data_factor=2, test_every=4, device="cpu")).test
    rows = {r.file: r for r in fidelity.compare(views, out)}
    assert rows["results.spz"].psnr_vs_ply > 30 and rows["results.splat"].psnr_vs_ply > 20
    assert abs(rows["results.spz"].psnr_vs_truth - rows["results.ply"].psnr_vs_truth) < 0.5


@pytest.mark.slow
def test_end_to_end_cpu(cpu_trainings: CpuTrainings) -> None:
    """The shared MCMC run (cpu_trainings.py: 200 steps, cap 600, every model format) over a scene
    that held an earlier result and error.log: its exit, termination message and outputs."""
    run = cpu_trainings.runs["mcmc"]
    assert run.code == 0, cpu_trainings.stderr[-3000:]
    out = run.out
    ply_path = out / contract.RESULT_PLY
    assert ply_path.read_bytes() != EARLIER_PLY

    # termination message in the original words
    result = contract.parse_result(run.termination_log.read_text())
    assert result is not None and result.status == "complete" and result.steps == 200
    assert result.model_path == str(ply_path.resolve())
    assert result.model_size_mb == round(ply_path.stat().st_size / 2**20, 2)
    assert isinstance(result.psnr, float) and isinstance(result.ssim, float)
    assert result.psnr > 20  # images, intrinsics and poses line up: the model fits the held-out views
    data = ply.read_ply(ply_path)
    assert data.names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert len(data.names) == 17 + 9 and data.rows.shape[0] == result.num_gaussians > 0

    config = json.loads((out / contract.CONFIG_FILE).read_text())
    assert list(config)[:4] == ["scene_id", "data_factor", "max_steps", "timestamp"]
    assert (config["scene_id"], config["max_steps"], config["sh_degree"]) == ("synthetic", 200, 1)
    assert result.config["scene_id"] == "synthetic"

    log = (out / contract.TRAINING_LOG).read_text()
    iterations = re.findall(r"^Iteration (\d+)/200 \| Loss: \d+\.\d{4}$", log, re.M)
    assert iterations == ["50", "100", "150", "200"]
    assert re.search(r"^Eval at iteration 200/200 \| PSNR: \d+\.\d\d dB", log, re.M)
    assert [p.name for p in sorted((out / contract.CHECKPOINTS_DIR).iterdir())] == ["ckpt_000100.pt", "ckpt_000200.pt"]
    progress = [contract.parse_progress_line(line) for line in run.stdout]
    assert [p.step for p in progress if p and p.event == "progress"] == [50, 100, 150, 200]
    assert not (out / contract.ERROR_LOG).exists()
    _check_web_outputs(run.scene, out, result)


@pytest.mark.slow
def test_rerun_of_a_finished_training_resumes_and_only_evaluates(cpu_trainings: CpuTrainings, tmp_path: Path) -> None:
    """A retried pod after the shared MCMC run finished: resumes from the final checkpoint, only
    evaluates, same answer (on a copy: the shared run stays as it was)."""
    run = cpu_trainings.runs["mcmc"]
    first = contract.parse_result(run.termination_log.read_text())
    assert first is not None and first.steps == 200
    scene = tmp_path / "scene"
    shutil.copytree(run.scene, scene, symlinks=True)
    code, again = run_main(scene, *run.args)
    assert code == 0 and again is not None and again.steps == 200 and again.num_gaussians == first.num_gaussians
    assert again.psnr == pytest.approx(first.psnr, abs=1e-3)
    assert (scene / contract.OUTPUT_DIR / contract.TRAINING_LOG).read_text().count("Training started") == 2


@pytest.mark.slow
def test_changed_scene_is_trained_fresh_not_resumed(
    scene: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Train to completion; regenerate another scene at the same path; run again with the same
    options: the finished checkpoint belongs to the old scene, so training starts fresh (and says
    so), and the earlier results.ply stays until the new one replaces it."""
    from splatops_trainer import report
    from splatops_trainer.synthetic import make_synthetic_scene

    args = (
        "--max-steps", "20", "--progress-every", "10", "--checkpoint-every", "10", "--keep-checkpoints", "1",
        "--test-every", "4", "--sh-degree", "0", "--data-factor", "2",
    )
    out = scene / contract.OUTPUT_DIR
    code, first = run_main(scene, *args)
    assert code == 0 and first.steps == 20
    model_a = (out / contract.RESULT_PLY).read_bytes()

    make_synthetic_scene(scene, seed=1, n_gaussians=900)  # same file names, other images and model
    observed: list[tuple[int, bool]] = []
    real = report.Reporter.on_progress

    def spy(self, p):  # noqa: ANN001
        observed.append((p.step, (out / contract.RESULT_PLY).read_bytes() == model_a))
        real(self, p)

    monkeypatch.setattr(report.Reporter, "on_progress", spy)
    caplog.clear()
    code, second = run_main(scene, *args)
    assert code == 0 and second.steps == 20
    assert [step for step, _ in observed] == [10, 20]  # trained from step 0, not "resumed" at 20
    assert all(kept for _, kept in observed)  # the earlier model stayed while the new one trained
    assert "the scene's images or COLMAP model changed" in caplog.text and "training starts fresh" in caplog.text
    assert (out / contract.RESULT_PLY).read_bytes() != model_a
    assert [p.name for p in (out / contract.CHECKPOINTS_DIR).iterdir()] == ["ckpt_000020.pt"]
    assert (out / contract.TRAINING_LOG).read_text().count("Training started") == 2


@pytest.mark.parametrize(
    ("field", "refused", "accepted"),
    [("data_factor", [0, 3, 16], list(contract.DATA_FACTORS)), ("max_steps", [0, -1], [1, 1_000_000]),
     ("sh_degree", [-1, 5], [0, 4]), ("strategy", ["fast"], list(contract.STRATEGIES))],
)
def test_the_trainer_and_the_spec_share_their_bounds(field: str, refused: list, accepted: list) -> None:
    """What the resource's spec refuses, the trainer's options refuse too, from the same constants
    (splatops.contract): nobody can start a training the other side would turn down."""
    from pydantic import ValidationError

    from splatops.api.models import Spec

    def spec(value: object) -> None:
        Spec.model_validate({"scene": {"claimName": "c", "path": "p"}, field: value})

    for value in refused:
        with pytest.raises(ValidationError):
            spec(value)
        with pytest.raises(TrainerError, match=field):
            TrainerConfig(scene_dir=Path("/s"), **{field: value})
    for value in accepted:
        spec(value)
        assert getattr(TrainerConfig(scene_dir=Path("/s"), **{field: value}), field) == value
