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


TIGHT = contract.MemoryCheck(estimate_bytes=30 * 2**30, free_bytes=20 * 2**30, fits=False, advice="Try dataFactor 2.")


@pytest.mark.parametrize(
    "line, expected",
    [
        (TIGHT.to_json(), TIGHT),
        ('{"event": "memory", "estimate_bytes": 5, "free_bytes": 9, "fits": true}',
         contract.MemoryCheck(estimate_bytes=5, free_bytes=9, fits=True)),
        ('{"event": "memory", "estimate_bytes": 5, "free_bytes": 9, "fits": true, "advice": 3}',
         contract.MemoryCheck(estimate_bytes=5, free_bytes=9, fits=True)),  # a bad advice is dropped, not the line
        ('{"event": "memory", "estimate_bytes": 5, "free_bytes": 9, "fits": "no"}', None),
        ('{"event": "memory", "estimate_bytes": -5, "free_bytes": 9, "fits": false}', None),
        ('{"event": "memory", "estimate_bytes": 5.5, "free_bytes": 9, "fits": false}', None),
        ('{"event": "memory", "estimate_bytes": true, "free_bytes": 9, "fits": false}', None),
        ('{"event": "memory", "free_bytes": 9, "fits": false}', None),
        ('{"event": "progress", "step": 10, "max_steps": 100, "loss": 0.5}', None),
        ("GPU memory: It will probably not fit", None),
        ("", None),
    ],
)
def test_parse_memory_line(line, expected):
    assert contract.parse_memory_line(line) == expected


def test_memory_line_is_ignored_by_the_progress_view_and_found_in_a_tail():
    """A parser that knows only progress and stage skips the memory line: it never hides progress."""
    first = contract.MemoryCheck(estimate_bytes=1, free_bytes=2, fits=True)
    log = "\n".join([first.to_json(), Progress(step=100, max_steps=1000, loss=0.3).to_json(), "noise", TIGHT.to_json()])
    assert contract.last_report(log) == Progress(step=100, max_steps=1000, loss=0.3)
    assert contract.parse_progress_line(TIGHT.to_json()) is None and contract.parse_stage_line(TIGHT.to_json()) is None
    assert contract.last_memory_check(log) == TIGHT  # the newest
    assert contract.last_memory_check("noise\n" + Progress(step=1, max_steps=2, loss=0.1).to_json()) is None


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
