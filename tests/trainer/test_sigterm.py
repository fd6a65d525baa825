"""SIGTERM (node drain, preemption) in a FRESH trainer process, with pycolmap imported as in
production: pycolmap's glog installs its own SIGTERM handler when it is imported, so only a new
process shows whether ours is the one that runs."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from splatops import contract
from trainer_process import TrainerProcess, started_by

ARGS = (
    "--device", "cpu", "--metrics-port", "0", "--max-steps", "100000", "--progress-every", "5",
    "--checkpoint-every", "0", "--eval-every", "0", "--strategy", "mcmc", "--cap-max", "600",
    "--data-factor", "2", "--test-every", "4", "--sh-degree", "0",
)
RESUMES = re.compile(r"^terminated by SIGTERM \(node drain or preemption\); resumes from step (\d+)$")
GLOG_DUMP = ("*** Aborted at", "stack trace: ***")


class Trainer(TrainerProcess):
    def __init__(self, scene: Path, term: Path, stderr: Path) -> None:
        super().__init__(["--scene-dir", str(scene), "--termination-log", str(term), *ARGS], stderr, 300)

    def first_progress(self) -> contract.Progress:
        """Block until the trainer reports a training step (it is then inside the training loop)."""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            progress = contract.parse_progress_line(line)
            if progress is not None:
                return progress
        raise AssertionError(f"trainer ended before training: {self.stderr()[-3000:]}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout=120)


trainers = started_by(Trainer)


@pytest.mark.slow
def test_sigterm_mid_training_reports_checkpoints_and_resumes(scene_copy: Path, tmp_path: Path, trainers) -> None:
    out = scene_copy / contract.OUTPUT_DIR
    out.mkdir(exist_ok=True)
    (out / contract.ERROR_LOG).write_text("2020-01-01 TrainerError: an older run's failure\n")
    term = tmp_path / "termination-log"

    first = trainers(scene_copy, term, tmp_path / "stderr-1")
    assert first.first_progress().step == 5
    assert not (out / contract.ERROR_LOG).exists()  # the older run's error.log no longer misleads
    assert first.terminate() == contract.ExitCode.TERMINATED == 143, first.stderr()[-3000:]
    err = first.stderr()
    assert not any(dump in err for dump in GLOG_DUMP), err[-3000:]  # ours ran, not glog's

    result = contract.parse_result(term.read_text())
    assert result is not None and result.status == "failed" and result.reason == contract.Reason.TERMINATED.value
    match = RESUMES.match(result.error or "")
    assert match, result.error
    step = int(match.group(1))
    assert step >= 5  # the state at SIGTERM was checkpointed (checkpoint_every 0: no other one)
    assert (out / contract.CHECKPOINTS_DIR / f"ckpt_{step:06d}.pt").is_file()
    assert result.error in (out / contract.ERROR_LOG).read_text()
    assert f"Training failed: {result.error}" in (out / contract.TRAINING_LOG).read_text()
    assert json.loads(first.lines[-1]) == {"event": "failed", "reason": "Terminated", "error": result.error}
    assert f"error: {result.error}" in err

    # The retried pod: resumes from that step (the first report comes within 5 steps of it).
    second = trainers(scene_copy, term, tmp_path / "stderr-2")
    resumed = second.first_progress().step
    assert step < resumed <= step + 5
    assert not (out / contract.ERROR_LOG).exists()
    assert second.terminate() == 143
    assert f"resumed from checkpoint at step {step}" in second.stderr()
    again = RESUMES.match(contract.parse_result(term.read_text()).error or "")
    assert again and int(again.group(1)) >= resumed


class _Quiet:
    def on_progress(self, p: contract.Progress) -> None: ...

    def on_eval(self, p: contract.Progress) -> None: ...


@pytest.mark.parametrize(("budget_s", "resumes_from"), [(None, 14), (-1.0, 10)], ids=["checkpointed", "no_time_to_write"])
def test_stop_between_steps_checkpoints_when_quick(
    scene_copy: Path, monkeypatch: pytest.MonkeyPatch, budget_s: float | None, resumes_from: int
) -> None:
    """train()'s side: the stop is seen before step 15; the state after step 14 is written when the
    write is expected to be quick, else the run resumes from the last periodic checkpoint (10)."""
    import torch

    from splatops_trainer import checkpoint, scene, train
    from splatops_trainer.config import TrainerConfig
    from splatops_trainer.errors import Terminated

    if budget_s is not None:
        monkeypatch.setattr(train, "STOP_CHECKPOINT_BUDGET_S", budget_s)
    cfg = TrainerConfig(scene_dir=scene_copy, data_factor=2, max_steps=1000, checkpoint_every=10, progress_every=0,
                        eval_every=0, strategy="mcmc", cap_max=600, sh_degree=0, metrics_port=0, device="cpu")
    checks = iter(range(10**6))
    with pytest.raises(Terminated) as info:
        train.train(cfg, scene.load_scene(cfg), _Quiet(), torch.device("cpu"), should_stop=lambda: next(checks) == 14)
    assert info.value.resume_step == resumes_from
    assert str(info.value) == f"{contract.MSG_TERMINATED}; resumes from step {resumes_from}"
    assert checkpoint.list_checkpoints(checkpoint.checkpoint_dir(cfg))[0][0] == resumes_from
