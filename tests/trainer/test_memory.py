"""The pre-training GPU memory estimate (memory.py) and the out-of-memory message built on it."""

from __future__ import annotations

import pytest

from splatops import contract
from splatops_trainer import memory
from splatops_trainer.train import oom_message

GIB = 2**30


def fox(gaussians: int = 170_000, factor: int = 1) -> memory.MemoryEstimate:
    w, h = 960 // factor, 538 // factor
    return memory.estimate(width=w, height=h, image_bytes=50 * w * h * 3, gaussians=gaussians, sh_degree=3)


def test_fox_estimate_is_near_its_measured_peak() -> None:
    # Measured on an H200 (benchmarks/README.md): 0.65 GiB at ~170k Gaussians, 7k steps, factor 1.
    assert 0.6 * GIB < fox().total_bytes < 1.2 * GIB


@pytest.mark.parametrize("field", ["gaussians", "factor"])
def test_estimate_grows_with_gaussians_and_resolution(field: str) -> None:
    small, large = (fox(100_000), fox(1_000_000)) if field == "gaussians" else (fox(factor=4), fox(factor=1))
    assert small.total_bytes < large.total_bytes


def test_expected_gaussians_is_the_cap_when_there_is_one() -> None:
    assert memory.expected_gaussians(train_pixels=10**9, max_steps=30_000, initial=1000, cap=123_456) == 123_456
    rule = memory.expected_gaussians(train_pixels=43 * 538 * 960, max_steps=30_000, initial=1000, cap=0)
    assert 200_000 < rule < 300_000  # fox ended a 30k run with ~252k
    assert memory.expected_gaussians(train_pixels=10, max_steps=30_000, initial=5000, cap=0) == 5000


def test_advice_when_it_will_not_fit() -> None:
    est = fox(5_000_000)  # ~14 GiB
    assert memory.advice(est, 64 * GIB, data_factor=1) is None
    tip = memory.advice(est, 4 * GIB, data_factor=1)
    assert tip is not None and "dataFactor 2" in tip and "maxGaussians" in tip
    cap = est.max_gaussians_within(4 * GIB)
    assert fox(cap).total_bytes <= 4 * GIB < fox(cap + 100_000).total_bytes
    assert "dataFactor" not in (memory.advice(est, 4 * GIB, data_factor=8) or "")


@pytest.mark.parametrize(("free", "fits"), [(64 * GIB, True), (4 * GIB, False)])
def test_memory_check_is_the_stdout_event_the_operator_parses(free: int, fits: bool) -> None:
    est = fox(5_000_000)
    check = memory.check(est, free, data_factor=1)
    assert (check.estimate_bytes, check.free_bytes, check.fits) == (est.total_bytes, free, fits)
    assert check.advice == (memory.advice(est, free, data_factor=1) or "")
    assert bool(check.advice) is not fits
    assert contract.parse_memory_line(check.to_json()) == check


def test_oom_message_keeps_the_original_words_and_adds_the_estimate() -> None:
    est = fox(5_000_000)
    text = oom_message(est, 4 * GIB, data_factor=1)
    assert text.startswith(contract.MSG_OOM) and "will probably not fit" in text and "dataFactor 2" in text
    assert "too low" in oom_message(fox(), 64 * GIB, data_factor=1)
    assert oom_message(None, None, data_factor=1) == contract.MSG_OOM


def test_cuda_out_of_memory_in_training_is_exit_code_3_with_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """train() turns CUDA OOM anywhere in a run into the OutOfMemory TrainerError (exit code 3)
    whose message keeps the original words and names the estimate made before training."""
    import torch

    from splatops_trainer import train as train_mod
    from splatops_trainer.errors import TrainerError

    class Trainer:
        def __init__(self, cfg, scene, hooks, device, should_stop=None):
            self.memory_estimate, self.gpu_free_bytes = fox(5_000_000), 4 * GIB

        def run(self):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod, "_Trainer", Trainer)
    cfg = type("Cfg", (), {"data_factor": 2})()
    with pytest.raises(TrainerError) as info:
        train_mod.train(cfg, None, None, torch.device("cpu"))  # type: ignore[arg-type]
    assert info.value.exit_code == contract.ExitCode.OUT_OF_MEMORY
    assert info.value.message.startswith(contract.MSG_OOM) and "dataFactor 4" in info.value.message


def test_auto_cap_only_where_the_expected_model_comes_near_the_free_memory() -> None:
    est = fox(5_000_000)  # ~7 GiB
    assert memory.auto_cap(est, None) == 0  # no GPU
    assert memory.auto_cap(est, 64 * GIB) == 0  # under half the budget: no cap
    cap = memory.auto_cap(est, 8 * GIB)
    assert cap == est.max_gaussians_within(int(memory.AUTO_CAP_SHARE * 8 * GIB)) and 0 < cap < 5_000_000
    assert memory.auto_cap(fox(), 10 * 2**20) == 1  # not even the images fit: no growth
