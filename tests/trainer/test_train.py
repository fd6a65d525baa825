"""Training on the CPU (pure-PyTorch rasteriser) on a tiny synthetic scene.

Covers: loss falls and held-out PSNR rises (both strategies), an interrupted-and-resumed run ends
where an uninterrupted one does, checkpoint rotation, the NaN guard, splat initialisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from splatops import contract
from splatops.contract import EVENT_EVAL, EVENT_PROGRESS, Progress, Reason
from splatops_trainer import checkpoint as ck
from splatops_trainer import losses
from splatops_trainer import train as train_mod
from splatops_trainer.config import TrainerConfig
from splatops_trainer.dataset import SceneData
from splatops_trainer.scene import load_scene
from splatops_trainer.splats import init_splats, knn_mean_distance, means_lr
from splatops_trainer.synthetic import make_synthetic_scene
from splatops_trainer.train import TrainingDivergedError, train

from cpu_trainings import CpuTrainings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_scene(root, n_views=10, width=40, height=30, n_gaussians=400, seed=3)
    return root


@pytest.fixture(scope="module")
def scene(scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SceneData:
    cfg = TrainerConfig(scene_dir=scene_dir, output_dir=tmp_path_factory.mktemp("load"), test_every=5)
    data = load_scene(cfg)
    assert len(data.test) == 2 and len(data.train) == 8
    return data


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Bit-for-bit resume comparisons need a fixed reduction order; CI has one core per job anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.progress: list[Progress] = []
        self.evals: list[Progress] = []
        self.stop_at = stop_at

    def on_progress(self, p: Progress) -> None:
        self.progress.append(p)
        if self.stop_at is not None and p.step == self.stop_at:
            raise KeyboardInterrupt("simulated pod kill")

    def on_eval(self, p: Progress) -> None:
        self.evals.append(p)


def _cfg(scene_dir: Path, out: Path, **kw: object) -> TrainerConfig:
    base: dict[str, object] = dict(
        scene_dir=scene_dir, output_dir=out, test_every=5, device="cpu", sh_degree=1,
        sh_degree_interval=50, progress_every=10, eval_every=0, checkpoint_every=0, metrics_port=0,
    )
    base.update(kw)
    return TrainerConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_loss_falls_and_heldout_psnr_rises(cpu_trainings: CpuTrainings, strategy: str) -> None:
    """Read from the session's shared CLI run of this strategy (cpu_trainings.py): its stdout lines
    (progress every 50 steps with the mean loss since the last, evaluation every 100 and at the
    end) and its termination message."""
    run = cpu_trainings.runs[strategy]
    assert run.code == 0, cpu_trainings.stderr[-3000:]
    max_steps = int(run.args[run.args.index("--max-steps") + 1])
    out = contract.parse_result(run.termination_log.read_text())
    lines = [p for p in map(contract.parse_progress_line, run.stdout) if p is not None]
    progress = [p for p in lines if p.event == EVENT_PROGRESS]
    evals = [p for p in lines if p.event == EVENT_EVAL]
    assert out is not None and out.succeeded and out.steps == max_steps
    assert [p.step for p in progress] == list(range(50, max_steps + 1, 50))
    assert [e.step for e in evals] == sorted({*range(100, max_steps + 1, 100), max_steps})
    first, last = progress[0].loss, progress[-1].loss
    assert last < 0.7 * first, f"loss {first:.4f} -> {last:.4f}"
    assert out.psnr is not None and out.ssim is not None
    assert out.psnr > evals[0].psnr + 2.0, [e.psnr for e in evals]
    assert out.psnr == pytest.approx(evals[-1].psnr, abs=1e-4)
    assert out.num_gaussians == progress[-1].num_gaussians > 0
    if strategy == "mcmc":
        assert out.num_gaussians <= 600
    rows = PlyData.read(run.out / contract.RESULT_PLY)["vertex"].data
    assert len(rows) == out.num_gaussians
    assert all(np.isfinite(rows[name]).all() for name in rows.dtype.names)
    assert all(p.steps_per_sec > 0 for p in progress)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "stop_at"), [("default", 20), ("mcmc", 30)])
def test_resumed_run_ends_where_uninterrupted_run_ends(
    scene_dir: Path, scene: SceneData, tmp_path: Path, strategy: str, stop_at: int
) -> None:
    kw = dict(strategy=strategy, max_steps=60, checkpoint_every=10, cap_max=600)
    straight = train(_cfg(scene_dir, tmp_path / "a", **kw), scene, Recorder(), CPU)

    cfg_b = _cfg(scene_dir, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, scene, Recorder(stop_at=stop_at), CPU)
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg_b))] == [stop_at, stop_at - 10]
    rec = Recorder()
    resumed = train(cfg_b, scene, rec, CPU)
    assert resumed.resumed_from == stop_at
    assert rec.progress[0].step == stop_at + 10  # continued, did not start over
    assert resumed.num_gaussians == straight.num_gaussians
    for k, v in straight.splats.items():
        torch.testing.assert_close(resumed.splats[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-5)
    assert resumed.psnr == pytest.approx(straight.psnr, abs=1e-4)


@pytest.mark.slow
def test_resume_skips_corrupt_newest_checkpoint(scene_dir: Path, scene: SceneData, tmp_path: Path) -> None:
    cfg = _cfg(scene_dir, tmp_path, max_steps=30, checkpoint_every=10, keep_checkpoints=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, scene, Recorder(stop_at=20), CPU)
    ck.checkpoint_path(cfg, 20).write_bytes(b"\x00garbage")
    resumed = train(cfg, scene, Recorder(), CPU)
    assert resumed.resumed_from == 10
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg))] == [30, 20, 10]
    assert ck.find_resumable(cfg, cfg.resume_key(scene.fingerprint)).checkpoint.step == 30  # type: ignore[union-attr]


@pytest.mark.slow
def test_finished_run_is_not_retrained(scene_dir: Path, scene: SceneData, tmp_path: Path) -> None:
    cfg = _cfg(scene_dir, tmp_path, max_steps=20, keep_checkpoints=1)
    first = train(cfg, scene, Recorder(), CPU)
    rec = Recorder()
    again = train(cfg, scene, rec, CPU)
    assert again.resumed_from == 20 and rec.progress == []
    assert again.psnr == pytest.approx(first.psnr, abs=1e-5)
    for k, v in first.splats.items():
        assert torch.equal(again.splats[k], v)
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg))] == [20]


@pytest.mark.slow
def test_checkpoint_of_other_scene_content_is_not_resumed(
    scene_dir: Path, scene: SceneData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same options, other scene content (fingerprint): start fresh; with keep_checkpoints=1 the old
    run's final checkpoint (a higher step) must not push the new run's own out of rotation."""
    cfg = _cfg(scene_dir, tmp_path, max_steps=20, checkpoint_every=10, keep_checkpoints=1)
    old = train(cfg, dataclasses.replace(scene, fingerprint="old-scene"), Recorder(), CPU)
    assert old.resumed_from is None
    new_scene = dataclasses.replace(scene, fingerprint="new-scene")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, new_scene, Recorder(stop_at=10), CPU)
    assert "training starts fresh" in caplog.text
    assert [s for s, _ in ck.list_checkpoints(ck.checkpoint_dir(cfg))] == [10]  # its own; the old one retired
    rec = Recorder()
    resumed = train(cfg, new_scene, rec, CPU)
    assert resumed.resumed_from == 10 and rec.progress[0].step == 20


class MemoryRecorder(Recorder):
    """A Recorder that also takes the optional on_memory hook, in one ordered list with the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[object] = []

    def on_progress(self, p: Progress) -> None:
        super().on_progress(p)
        self.order.append(p.step)

    def on_memory(self, check: contract.MemoryCheck) -> None:
        self.order.append(check)


def test_memory_check_is_reported_once_before_the_first_step(
    scene_dir: Path, scene: SceneData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the GPU's free memory known (CUDA; here passed in), the check goes to the hooks once,
    before any step; on the CPU (free memory unknown) there is none."""
    cfg = _cfg(scene_dir, tmp_path, max_steps=10)
    rec = MemoryRecorder()
    train_mod._Trainer(cfg, scene, rec, CPU)
    assert rec.order == []  # no CUDA: nothing to compare with
    monkeypatch.setattr(train_mod, "_free_gpu_bytes", lambda device: 64 * 2**30)
    rec = MemoryRecorder()
    train(cfg.replace(resume=False), scene, rec, CPU)
    check = rec.order[0]
    assert isinstance(check, contract.MemoryCheck) and check.fits and check.free_bytes == 64 * 2**30
    assert rec.order[1:] == [10] and check.advice == ""
    monkeypatch.setattr(train_mod, "_free_gpu_bytes", lambda device: 2**20)  # 1 MiB: it cannot fit
    rec = MemoryRecorder()
    train_mod._Trainer(cfg, scene, rec, CPU)
    (check,) = rec.order
    assert not check.fits and check.estimate_bytes > check.free_bytes == 2**20
    assert "will probably not fit" in check.advice and "dataFactor 2" in check.advice
    assert f"GPU memory: {check.advice}" in caplog.text  # the log's warning stays


def test_no_resume_starts_over(scene_dir: Path, scene: SceneData, tmp_path: Path) -> None:
    cfg = _cfg(scene_dir, tmp_path, max_steps=10)
    first = train(cfg, scene, Recorder(), CPU)
    assert first.steps == 10 and first.resumed_from is None and first.num_gaussians == first.splats["means"].shape[0]
    assert all(v.device.type == "cpu" and not v.requires_grad for v in first.splats.values())  # detached for writing
    assert first.steps_per_sec > 0 and first.duration_s > 0
    again = train(cfg.replace(resume=False), scene, Recorder(), CPU)
    assert again.resumed_from is None


def test_non_finite_loss_raises_diverged_and_saves_nothing(
    scene_dir: Path, scene: SceneData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(losses, "ssim", lambda a, b: torch.full((), float("nan")))
    cfg = _cfg(scene_dir, tmp_path, max_steps=30, checkpoint_every=10)
    with pytest.raises(TrainingDivergedError, match="diverged") as err:
        train(cfg, scene, Recorder(), CPU)
    assert err.value.reason == Reason.TRAINING_DIVERGED
    assert ck.list_checkpoints(ck.checkpoint_dir(cfg)) == []


def test_init_splats(scene: SceneData) -> None:
    splats = init_splats(scene, sh_degree=3, init_opacity=0.1, init_scale=1.0, device=CPU)
    n = scene.points.shape[0]
    assert {k: tuple(v.shape) for k, v in splats.items()} == {
        "means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, 15, 3),
    }
    torch.testing.assert_close(torch.sigmoid(splats["opacities"]), torch.full((n,), 0.1))
    assert torch.isfinite(splats["scales"]).all()


@pytest.mark.parametrize(("chunk", "k"), [(1, 1), (3, 2), (1000, 3)])
def test_knn_mean_distance(chunk: int, k: int) -> None:
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]])
    expected = {1: [1.0, 1.0, 2.0, 4.0], 2: [2.0, 1.5, 2.5, 5.0], 3: [11 / 3, 3.0, 3.0, 17 / 3]}[k]
    torch.testing.assert_close(knn_mean_distance(pts, k=k, chunk=chunk), torch.tensor(expected))


@pytest.mark.parametrize(("num_views", "seed"), [(1, 0), (7, 42), (43, 3)])
def test_epoch_order_shows_every_view_once_per_epoch(num_views: int, seed: int) -> None:
    order = train_mod.EpochOrder(num_views, seed)
    epochs = [[order(e * num_views + i) for i in range(num_views)] for e in range(4)]
    assert all(sorted(epoch) == list(range(num_views)) for epoch in epochs)
    if num_views > 2:
        assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled, not one fixed cycle
        assert epochs != [[order(e * num_views + i) for i in range(num_views)] for e in range(4)
                          for order in [train_mod.EpochOrder(num_views, seed + 1)]]


def test_epoch_order_is_a_function_of_seed_and_step() -> None:
    """What makes resume exact without sampler state: any step, in any order of asking."""
    straight = [train_mod.EpochOrder(9, 5)(step) for step in range(40)]
    one = train_mod.EpochOrder(9, 5)
    assert [one(step) for step in reversed(range(40))][::-1] == straight
    with pytest.raises(ValueError, match="at least one view"):
        train_mod.EpochOrder(0, 5)


@pytest.mark.parametrize(("step", "factor"), [(0, 1.0), (500, 0.1), (1000, 0.01), (2000, 0.01)])
def test_means_lr_decays_to_one_percent(step: int, factor: float) -> None:
    assert means_lr(step, 1000, scene_scale=2.0) == pytest.approx(1.6e-4 * 2.0 * factor)


def test_init_splats_does_not_alias_the_scene(scene: SceneData) -> None:
    splats = init_splats(scene, sh_degree=0, init_opacity=0.1, init_scale=1.0, device=CPU)
    before = scene.points.clone()
    with torch.no_grad():
        splats["means"].add_(1.0)  # what Adam does in place
    assert torch.equal(scene.points, before)


@pytest.mark.parametrize("steps", [1, 4])
def test_direct_fused_adam_matches_torch_adam(steps: int) -> None:
    from splatops_trainer.splats import make_optimizers

    def make() -> tuple[torch.nn.ParameterDict, dict]:
        g = torch.Generator().manual_seed(0)
        ps = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(torch.randn(*shape, generator=g)) for k, shape in
             {"means": (5, 3), "scales": (5, 3), "quats": (5, 4), "opacities": (5,), "sh0": (5, 1, 3), "shN": (5, 3, 3)}.items()}
        )
        opts = make_optimizers(ps, scene_scale=2.0)
        for o in opts.values():
            o.param_groups[0]["params"][0]  # one group, one param
            o.defaults["fused"] = True
            o.param_groups[0]["fused"] = True  # torch's own fused CPU kernel as the reference
        return ps, opts

    ref, ref_opts = make()
    ours, our_opts = make()
    for i in range(steps):
        for ps in (ref, ours):
            loss = sum(((v - 0.1 * (i + 1)) ** 2).sum() for v in ps.values())
            loss.backward()
        for o in ref_opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        losses.fused_adam_step(our_opts)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=0)
        assert ours[k].grad is None
        sr, so = ref_opts[k].state[ref[k]], our_opts[k].state[ours[k]]
        assert sr.keys() == so.keys()
        for key in sr:
            torch.testing.assert_close(so[key], sr[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("image_bytes", "device_bytes", "on_device"),
    [
        (10 * 2**30, None, True),  # CPU: nothing to decide
        (77 * 2**20, 24 * 2**30, True),  # fox at factor 1 on an A10G
        (6 * 2**30, 24 * 2**30, True),  # exactly a quarter
        (6 * 2**30 + 1, 24 * 2**30, False),  # a large capture: pinned host memory
        (25 * 2**30, 24 * 2**30, False),  # would not fit at all
    ],
)
def test_images_stay_on_the_host_when_they_would_crowd_the_gpu(image_bytes: int, device_bytes: int | None,
                                                               on_device: bool) -> None:
    assert train_mod.images_fit_on_device(image_bytes, device_bytes) is on_device


def test_training_with_images_kept_on_the_host_matches(scene_dir: Path, scene: SceneData, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The host-resident path trains to the same numbers (each step copies its one view)."""
    a = train(_cfg(scene_dir, tmp_path / "a", max_steps=20), scene, Recorder(), CPU)
    uploads: list[bool] = []
    real_upload = train_mod._DeviceViews.upload.__func__  # type: ignore[attr-defined]

    def upload(cls: type, views: list, device: torch.device, *, images_on_device: bool = True) -> object:
        uploads.append(images_on_device)
        return real_upload(cls, views, device, images_on_device=images_on_device)

    monkeypatch.setattr(train_mod, "images_fit_on_device", lambda image_bytes, device_bytes: False)
    monkeypatch.setattr(train_mod._DeviceViews, "upload", classmethod(upload))
    b = train(_cfg(scene_dir, tmp_path / "b", max_steps=20), scene, Recorder(), CPU)
    assert uploads == [False, False]
    assert b.final_loss == pytest.approx(a.final_loss) and b.num_gaussians == a.num_gaussians


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_without_max_gaussians_densification_stops_where_the_gpu_memory_ends(
    scene: SceneData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    """A GPU whose free memory the expected model would fill gets an automatic cap (memory.auto_cap);
    the run never grows past it. Played on the CPU by reporting a small 'free GPU memory'."""
    from splatops_trainer import memory
    from splatops_trainer import train as train_mod

    cfg = TrainerConfig(scene_dir=tmp_path, output_dir=tmp_path / "out", max_steps=120, strategy=strategy,  # type: ignore[arg-type]
                        checkpoint_every=0, eval_every=0, progress_every=0, test_every=5, metrics_port=0)
    est = train_mod._Trainer(cfg, scene, Recorder(), CPU).memory_estimate  # on the CPU: no free GPU memory, no cap
    cap = int(scene.points.shape[0]) + 40
    per = est.gaussian_bytes / est.gaussians
    free = int((est.total_bytes - est.gaussian_bytes + cap * per) / memory.AUTO_CAP_SHARE) + 1
    monkeypatch.setattr(train_mod, "_free_gpu_bytes", lambda device: free)
    trainer = train_mod._Trainer(cfg, scene, Recorder(), CPU)
    gsplat_strategy = trainer.strategy.strategy
    limit = gsplat_strategy.cap_max if strategy == "mcmc" else gsplat_strategy.max_gaussians
    assert limit == memory.auto_cap(trainer.memory_estimate, free) == cap
    outcome = trainer.run()
    assert int(scene.points.shape[0]) < outcome.num_gaussians <= cap

    capped = TrainerConfig(scene_dir=tmp_path, output_dir=tmp_path / "out2", max_steps=10, max_gaussians=5000,
                           strategy=strategy)  # type: ignore[arg-type]
    own = train_mod._Trainer(capped, scene, Recorder(), CPU).strategy.strategy
    assert (own.cap_max if strategy == "mcmc" else own.max_gaussians) == 5000  # a set cap is never overridden
