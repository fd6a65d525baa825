"""One writer per output directory, in the trainer: two `splatops-train` processes on one output.

The second exits 2 (OutputBusy) at once, naming the holder, and touches none of its files (not
even an in-flight temporary file); a holder killed with SIGKILL leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splatops import contract
from splatops_trainer import atomic

pytestmark = pytest.mark.timeout(300)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `directory`: (mtime_ns, size, content)."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def trainer(scene: Path, out: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "splatops_trainer", "--scene-dir", str(scene), "--output-dir", str(out),
            "--scene-id", name, "--termination-log", str(out.parent / f"{name}.termination-log"),
            "--metrics-port", "0", "--device", "cpu", "--data-factor", "2", *extra]
    env = {**os.environ, "HOSTNAME": f"{name}-pod", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_started(proc: subprocess.Popen[str], timeout: float = 240) -> None:
    """Until the trainer reports `started` (it holds the lock and has written its log)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if f'"event": "{contract.EVENT_STARTED}"' in line:
            return
        assert time.monotonic() < deadline, "the first trainer did not start in time"
    raise AssertionError(f"the first trainer ended before training: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


def test_second_writer_exits_2_and_a_killed_holder_leaves_no_lock(scene_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "volume" / "shared-output"
    # The holder trains "forever" and writes nothing after its start until its end.
    holder = trainer(scene_copy, out, "holder", "--max-steps", "1000000", "--progress-every", "0",
                     "--eval-every", "0", "--checkpoint-every", "0")
    try:
        wait_started(holder)
        log = out / contract.TRAINING_LOG
        deadline = time.monotonic() + 30
        while not log.is_file():  # its log writer thread writes the "started" line
            assert time.monotonic() < deadline, "the holder wrote no training log"
            time.sleep(0.05)
        in_flight = out / ".results.ply.0a1b2c3d.tmp"  # as if the holder were writing results.ply now
        in_flight.write_bytes(b"half a model")
        before = snapshot(out)
        assert contract.TRAINING_LOG in before and contract.LOCK_FILE in before

        t0 = time.monotonic()
        second = trainer(scene_copy, out, "intruder", "--max-steps", "10")
        _, err = second.communicate(timeout=120)
        elapsed = time.monotonic() - t0
        assert second.returncode == int(contract.ExitCode.INVALID_INPUT), err
        assert "in use by training holder (pod holder-pod" in err and f"pid {holder.pid}" in err
        result = contract.parse_result((out.parent / "intruder.termination-log").read_text())
        assert result is not None and result.reason == contract.Reason.OUTPUT_BUSY.value
        assert snapshot(out) == before, "the second writer touched the holder's files"
        assert holder.poll() is None, "the holder must keep running"
        print(f"second writer refused in {elapsed:.1f} s")  # process start + imports, no scene loading
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup of any kind
        holder.wait()
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    # The kernel dropped the dead holder's lock: a new run takes the directory and completes.
    after = trainer(scene_copy, out, "next", "--max-steps", "2", "--test-every", "0")
    _, err = after.communicate(timeout=240)
    assert after.returncode == 0, err[-3000:]
    assert (out / contract.RESULT_PLY).is_file() and not in_flight.exists()  # its stale temp, removed under the lock
    assert json.loads((out / contract.LOCK_FILE).read_text())["training"] == "next"


def test_cleanup_leaves_nested_output_directories_alone(tmp_path: Path) -> None:
    """The seed's `<scene>/gsplat/` holds every training's default `<scene>/gsplat/<name>/`:
    cleaning the seed's stale temporaries must not delete another live writer's."""
    seed = tmp_path / "gsplat"
    own = seed / "results" / ".training_log.txt.00000000.tmp"
    nested = seed / "preview" / ".results.ply.12345678.tmp"
    nested_deep = seed / "preview" / "results" / "checkpoints" / ".ckpt_000100.pt.abcdef01.tmp"
    for p in (own, nested, nested_deep):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    (seed / "preview" / contract.LOCK_FILE).write_text("{}")
    assert atomic.remove_stale_temps(seed) == [own]
    assert nested.exists() and nested_deep.exists()


def test_an_unwritable_output_is_left_to_the_runs_own_checks(tmp_path: Path) -> None:
    """No lock file can be made where nothing can be written: the run goes on to its own checks
    (which say "read-only" in their words) instead of failing on the lock."""
    from splatops_trainer import outlock

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: permissions do not apply")
        with outlock.acquire(out / "gsplat", outlock.holder_info("t")) as lock:
            assert not lock.locked
    finally:
        out.chmod(0o755)


def test_the_lock_is_exclusive_between_open_files_and_released_on_close(tmp_path: Path) -> None:
    from splatops_trainer import errors, outlock

    first = outlock.acquire(tmp_path, outlock.holder_info("first"))
    assert first.locked
    with pytest.raises(errors.TrainerError) as caught:
        outlock.acquire(tmp_path, outlock.holder_info("second"))
    assert caught.value.reason is contract.Reason.OUTPUT_BUSY and "training first" in caught.value.message
    assert caught.value.exit_code == int(contract.ExitCode.INVALID_INPUT)
    first.release()
    with outlock.acquire(tmp_path, outlock.holder_info("third")) as third:
        assert third.locked
