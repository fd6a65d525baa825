"""Reporter: stdout JSON lines, training_log.txt in the original words, metrics, termination."""

from __future__ import annotations

import io
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from splatops import contract
from splatops_trainer import report
from splatops_trainer.config import TrainerConfig


def cfg_for(tmp_path: Path, port: int = 0) -> TrainerConfig:
    scene = tmp_path / "fox"
    scene.mkdir(exist_ok=True)
    return TrainerConfig(scene_dir=scene, max_steps=30000, metrics_port=port, termination_log=tmp_path / "term")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROGRESS = contract.Progress(step=15234, max_steps=30000, loss=0.02341, num_gaussians=812345, steps_per_sec=140.2, elapsed_s=108.7)
EVAL = contract.Progress(
    event=contract.EVENT_EVAL, step=7000, max_steps=30000, loss=0.03, num_gaussians=500000, psnr=29.104, ssim=0.91234
)


def test_progress_lines_and_training_log(tmp_path: Path) -> None:
    out = io.StringIO()
    with report.Reporter(cfg_for(tmp_path), stdout=out) as rep:
        rep.on_eval(EVAL)
        rep.on_progress(PROGRESS)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0]) == {"event": "started", "scene_id": "fox", "max_steps": 30000}
    assert contract.parse_progress_line(lines[1]) == EVAL
    assert contract.parse_progress_line(lines[2]) == PROGRESS
    assert contract.last_progress(out.getvalue()).psnr == pytest.approx(29.104)
    log = (tmp_path / "fox" / "gsplat" / contract.TRAINING_LOG).read_text().splitlines()
    assert log[0].startswith("Training started ")
    assert log[1:] == [
        "Eval at iteration 7000/30000 | PSNR: 29.10 dB | SSIM: 0.9123",
        "Iteration 15234/30000 | Loss: 0.0234",
    ]


def test_memory_check_line_and_its_advice_in_the_training_log(tmp_path: Path) -> None:
    out = io.StringIO()
    tight = contract.MemoryCheck(estimate_bytes=30 * 2**30, free_bytes=20 * 2**30, fits=False,
                                 advice="It will probably not fit: ... Try dataFactor 2.")
    with report.Reporter(cfg_for(tmp_path), stdout=out) as rep:
        rep.on_memory(contract.MemoryCheck(estimate_bytes=2**30, free_bytes=20 * 2**30, fits=True))
        rep.on_memory(tight)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[1])["event"] == "memory" and contract.parse_memory_line(lines[1]).fits
    assert contract.parse_memory_line(lines[2]) == tight
    log = (tmp_path / "fox" / "gsplat" / contract.TRAINING_LOG).read_text().splitlines()
    assert log[1:] == ["GPU memory: It will probably not fit: ... Try dataFactor 2."]  # only when it will not fit


def test_training_log_keeps_earlier_runs_lines(tmp_path: Path) -> None:
    for _ in range(2):
        with report.Reporter(cfg_for(tmp_path), stdout=io.StringIO()) as rep:
            rep.on_progress(PROGRESS)
    log = (tmp_path / "fox" / "gsplat" / contract.TRAINING_LOG).read_text()
    assert log.count("Iteration 15234/30000 | Loss: 0.0234") == 2
    assert log.count("Training started") == 2 and log.endswith("\n")


def test_an_existing_log_without_final_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "fox" / "gsplat" / contract.TRAINING_LOG
    path.parent.mkdir(parents=True)
    path.write_text("Iteration 100/30000 | Loss: 0.1000\nIteration 200/30000 | Lo")  # an old append cut short
    with report.Reporter(cfg_for(tmp_path), stdout=io.StringIO()) as rep:
        rep.on_progress(PROGRESS)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["Iteration 100/30000 | Loss: 0.1000", "Iteration 200/30000 | Lo"]
    assert lines[-1] == "Iteration 15234/30000 | Loss: 0.0234"


def _wait_for(predicate, timeout: float = 10.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_training_log_is_replaced_atomically_at_each_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never appended in place: each report's content is a whole new file renamed over the old one
    (a new inode), written while training runs (not only at the end), via atomic.write_text."""
    import os

    writes: list[str] = []
    real = report.atomic.write_text

    def recording(path, text):  # noqa: ANN001
        if Path(path).name == "training_log.txt":
            writes.append(text)
        real(path, text)

    monkeypatch.setattr(report.atomic, "write_text", recording)
    path = tmp_path / "fox" / "gsplat" / contract.TRAINING_LOG
    with report.Reporter(cfg_for(tmp_path), stdout=io.StringIO()) as rep:
        rep.on_progress(PROGRESS)
        _wait_for(lambda: path.exists() and "Iteration 15234/30000" in path.read_text())
        first_inode = path.stat().st_ino
        rep.on_progress(contract.Progress(step=15300, max_steps=30000, loss=0.02))
        _wait_for(lambda: "Iteration 15300/30000 | Loss: 0.0200" in path.read_text())
        assert path.stat().st_ino != first_inode
    assert writes and all(w.startswith("Training started ") for w in writes)  # whole file each time
    assert writes[-1] == path.read_text()
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_training_log_write_failure_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def failing(path, text):  # noqa: ANN001
        raise OSError("read-only file system")

    monkeypatch.setattr(report.atomic, "write_text", failing)
    with report.Reporter(cfg_for(tmp_path), stdout=io.StringIO()) as rep:
        rep.on_progress(PROGRESS)
        rep.on_progress(PROGRESS)
    err = capsys.readouterr().err
    # once per file (training_log.txt, metrics.jsonl), however many writes failed
    assert err.count("could not write") == 2
    assert err.count("training_log.txt") == 1 and err.count("metrics.jsonl") == 1


def test_metrics_values_and_endpoint(tmp_path: Path) -> None:
    port = free_port()
    with report.Reporter(cfg_for(tmp_path, port), stdout=io.StringIO()) as rep:
        rep.on_progress(PROGRESS)
        rep.on_eval(EVAL)
        reg = rep.metrics.registry
        labels = {"scene_id": "fox"}
        assert reg.get_sample_value(contract.METRIC_TRAINER_STEP, labels) == 7000
        assert reg.get_sample_value(contract.METRIC_TRAINER_MAX_STEPS, labels) == 30000
        assert reg.get_sample_value(contract.METRIC_TRAINER_GAUSSIANS, labels) == 500000
        assert reg.get_sample_value(contract.METRIC_TRAINER_PSNR, labels) == pytest.approx(29.104)
        assert reg.get_sample_value(contract.METRIC_TRAINER_STEPS_PER_SEC, labels) == pytest.approx(140.2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'{contract.METRIC_TRAINER_LOSS}{{scene_id="fox"}} 0.03' in body
    with pytest.raises(OSError):  # the server is gone after close()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_port_in_use_only_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with report.Reporter(cfg_for(tmp_path, port), stdout=io.StringIO()) as rep:
            rep.on_progress(PROGRESS)  # training goes on, metrics only unserved
            assert rep.metrics.port is None
    assert f"metrics not served, port {port}" in capsys.readouterr().err


def test_metrics_port_zero_serves_nothing(tmp_path: Path) -> None:
    with report.Reporter(cfg_for(tmp_path, 0), stdout=io.StringIO()) as rep:
        assert rep.metrics.port is None


@pytest.mark.parametrize(
    "result",
    [
        contract.Result(status="complete", model_path="/x/results.ply", model_size_mb=1.5, num_gaussians=3, psnr=20.0, ssim=0.5, steps=10, config={"scene_id": "x"}),
        contract.Result(status="failed", reason="OutOfMemory", error=contract.MSG_OOM),
    ],
)
def test_termination_message_round_trips(tmp_path: Path, result: contract.Result) -> None:
    path = tmp_path / "termination-log"
    assert report.write_termination_message(path, result)
    assert contract.parse_result(path.read_text()) == result


def test_termination_message_unwritable_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing-dir-is-a-file"
    path.write_text("")
    ok = report.write_termination_message(path / "term", contract.Result(status="failed", error="x"))
    assert ok is False
    assert "could not write the termination message" in capsys.readouterr().err


def test_error_log(tmp_path: Path) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        path = report.write_error_log(tmp_path / "gsplat", "TrainerError", "it broke", exc)
    text = path.read_text()
    assert path == tmp_path / "gsplat" / "error.log"
    assert "TrainerError: it broke" in text.splitlines()[0] and "RuntimeError: boom" in text


def test_gauges_have_no_sample_before_their_first_value(tmp_path: Path) -> None:
    """Over HTTP, as Prometheus scrapes: before the first evaluation there is no PSNR/SSIM sample
    (not a 0 that reads as a terrible model); after a progress report, only what it carried."""
    port = free_port()
    with report.Reporter(cfg_for(tmp_path, port), stdout=io.StringIO()) as rep:
        def samples() -> set[str]:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return {line.split("{")[0] for line in body.splitlines() if line and not line.startswith("#")}

        trainer = {contract.METRIC_TRAINER_STEP, contract.METRIC_TRAINER_LOSS, contract.METRIC_TRAINER_PSNR,
                   contract.METRIC_TRAINER_SSIM, contract.METRIC_TRAINER_GAUSSIANS}
        assert samples() & trainer == set()
        rep.on_progress(PROGRESS)
        got = samples()
        assert {contract.METRIC_TRAINER_STEP, contract.METRIC_TRAINER_LOSS} <= got
        assert contract.METRIC_TRAINER_PSNR not in got and contract.METRIC_TRAINER_SSIM not in got
        rep.on_eval(EVAL)
        assert contract.METRIC_TRAINER_PSNR in samples()
