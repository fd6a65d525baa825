"""ProgressView: plain lines off a terminal, a rich bar (step, loss, PSNR, ETA) on one."""

from __future__ import annotations

import io

import pytest

from splatops.client.progress import ProgressView, WaitTimeout, wait_until_done


def snap(phase, step=None, **extra):
    status = {"phase": phase}
    if step is not None:
        status["progress"] = {"step": step, "maxSteps": 300, "percent": step / 3, "loss": 0.05,
                              "message": f"Iteration {step}/300 | Loss: 0.0500", **extra}
    return {"metadata": {"name": "fox"}, "status": status}


def test_plain_lines_only_on_change():
    out = io.StringIO()
    view = ProgressView("fox", out, bar=False)
    for s in (snap("Pending"), snap("Pending"), snap("Running", 100), snap("Running", 100), snap("Succeeded", 300)):
        view.update(s)
    view.close()
    assert out.getvalue().splitlines() == [
        "fox: phase: Pending", "fox: phase: Running", "Iteration 100/300 | Loss: 0.0500",
        "fox: phase: Succeeded", "Iteration 300/300 | Loss: 0.0500"]


def test_bar_shows_step_loss_psnr_and_eta():
    out = io.StringIO()
    view = ProgressView("fox", out, bar=True)
    view.update(snap("Running", 150, psnr=28.5, etaSeconds=75))
    view.close()
    text = out.getvalue()
    assert "150/300" in text and "loss 0.0500" in text and "PSNR 28.50" in text and "ETA 1:15" in text


async def test_wait_until_done_times_out():
    async def fetch():
        return snap("Pending")

    with pytest.raises(WaitTimeout, match="still phase: Pending"):
        await wait_until_done(fetch, ProgressView("fox", io.StringIO(), bar=False), interval=0.01, timeout=0.05)
