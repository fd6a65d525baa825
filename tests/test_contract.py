"""The trainer <-> operator contract: progress lines, termination message, exit codes."""

import json

import pytest

from splatops import contract
from splatops.contract import ExitCode, Progress, Result


def test_progress_message_in_original_words():
    p = Progress(step=15234, max_steps=30000, loss=0.0234)
    assert p.message() == "Iteration 15234/30000 | Loss: 0.0234"
    assert p.percent == 50.78


@pytest.mark.parametrize(
    "line, expected_step",
    [
        ('{"event": "progress", "step": 10, "max_steps": 100, "loss": 0.5}', 10),
        ('{"event": "eval", "step": 10, "max_steps": 100, "loss": 0.5, "psnr": 20.0}', 10),
        ("Iteration 10/100 | Loss: 0.5", None),  # the human log line is not the contract
        ('{"event": "progress", "step": "10", "max_steps": 100, "loss": 0.5}', None),
        ('{"event": "progress", "step": 10, "max_steps": 0, "loss": 0.5}', None),
        ('{"event": "progress", "step": 10, "max_steps": 100, "loss": NaN}', None),
        ('{"event": "other", "step": 10, "max_steps": 100, "loss": 0.5}', None),
        ("{not json", None),
        ("", None),
    ],
)
def test_parse_progress_line(line, expected_step):
    parsed = contract.parse_progress_line(line)
    assert (parsed.step if parsed else None) == expected_step


def test_last_progress_carries_psnr_forward_and_skips_noise():
    log = "\n".join(
        [
            "loading images...",
            Progress(step=100, max_steps=1000, loss=0.3).to_json(),
            Progress(step=200, max_steps=1000, loss=0.2, psnr=21.5, ssim=0.7, event="eval").to_json(),
            "WARNING something",
            Progress(step=300, max_steps=1000, loss=0.1, steps_per_sec=50.0).to_json(),
        ]
    )
    last = contract.last_progress(log)
    assert (last.step, last.loss, last.psnr, last.ssim) == (300, 0.1, 21.5, 0.7)
    assert last.eta_s == pytest.approx(14.0)


def test_result_round_trip_and_size_limit():
    ok = Result(status="complete", model_path="/data/s/gsplat/results.ply", model_size_mb=1.5,
                num_gaussians=10, psnr=30.0, ssim=0.9, steps=7000, config={"scene_id": "s"})
    assert contract.parse_result(ok.to_json()) == ok
    huge = Result(status="failed", reason="TrainerError", error="x" * 10_000,
                  config={"scene_id": "s", "junk": "y" * 10_000})
    text = huge.to_json()
    assert len(text.encode()) <= contract.TERMINATION_MESSAGE_LIMIT
    parsed = contract.parse_result(text)
    assert parsed.status == "failed" and parsed.config == {"scene_id": "s"}
    assert contract.parse_result("Error: container killed") is None
    assert contract.parse_result(json.dumps({"status": "weird"})) is None


def test_exit_codes_are_the_documented_ones():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 143]
    assert contract.EXIT_CODE_FOR_REASON[contract.Reason.TERMINATED] == 143 == 128 + 15  # SIGTERM
    assert contract.EXIT_CODE_FOR_REASON[contract.Reason.OUT_OF_MEMORY] == 3
    assert contract.EXIT_CODE_FOR_REASON[contract.Reason.COLMAP_NOT_FOUND] == 2
