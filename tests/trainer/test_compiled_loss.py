"""The loss through torch.compile: when the trainer compiles it, that it computes the same loss and
gradient as the eager function, and that a failed compile costs the speed-up, never the training."""

from __future__ import annotations

import logging

import pytest
import torch

from splatops_trainer import losses
from splatops_trainer.config import COMPILE_LOSS_MIN_STEPS, TrainerConfig


@pytest.mark.parametrize(
    ("option", "device", "steps", "compiled"),
    [
        ("auto", "cuda", COMPILE_LOSS_MIN_STEPS, True),
        ("auto", "cuda", 30_000, True),
        ("auto", "cuda", COMPILE_LOSS_MIN_STEPS - 1, False),  # a quick run: the compile would not pay back
        ("auto", "cpu", 30_000, False),
        ("always", "cpu", 100, True),
        ("always", "cuda", 100, True),
        ("never", "cuda", 30_000, False),
    ],
)
def test_when_the_loss_is_compiled(tmp_path, option, device, steps, compiled):
    cfg = TrainerConfig(scene_dir=tmp_path, max_steps=steps, compile_loss=option)
    assert cfg.loss_compiled(device) is compiled


def test_compiling_the_loss_keeps_the_checkpoints_resumable(tmp_path):
    base = TrainerConfig(scene_dir=tmp_path, compile_loss="never")
    assert base.resume_key("s") == base.replace(compile_loss="always").resume_key("s")


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 24, 40, 3, generator=g, requires_grad=True), torch.rand(1, 24, 40, 3, generator=g)


def test_a_failed_compile_trains_on_with_the_eager_loss(caplog):
    colors, gt = _images()
    fn = losses.loss_function(True)
    assert isinstance(fn, losses.CompiledLoss)
    calls = []

    def broken(*args: object) -> torch.Tensor:  # what a missing C compiler looks like at the first call
        calls.append(args)
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    fn._fn = broken
    with caplog.at_level(logging.WARNING, logger=losses.__name__):
        first, second = fn(colors, gt, 0.2), fn(colors, gt, 0.2)
    expected = losses.photometric_loss(colors, gt, 0.2)
    assert float(first.detach()) == float(second.detach()) == float(expected.detach())
    assert len(calls) == 1, "after one failure the compiled function is never tried again"
    assert fn.failed and "C compiler" in fn.failed
    assert [r.getMessage() for r in caplog.records].count(
        f"Compiling the loss failed, training on without it: {fn.failed}") == 1


@pytest.mark.slow
def test_the_compiled_loss_and_its_gradient_are_the_eager_ones():
    """A real Inductor compile (CPU here, Triton on CUDA): about 30 s on 2 cores."""
    colors, gt = _images()
    fn = losses.loss_function(True)
    compiled = fn(colors, gt, 0.2)
    compiled.backward()
    assert fn.failed is None
    grad, colors.grad = colors.grad.clone(), None
    eager = losses.photometric_loss(colors, gt, 0.2)
    eager.backward()
    assert float(compiled.detach()) == pytest.approx(float(eager.detach()), rel=1e-6)
    torch.testing.assert_close(grad, colors.grad, rtol=1e-5, atol=1e-8)
