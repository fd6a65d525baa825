"""`splatops view FILE|DIR`: a local server for a model on disk (no cluster), run as a user would."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys

import httpx

from splatops import contract

SPLATOPS = pathlib.Path(sys.executable).with_name("splatops")


def test_view_serves_a_model_directory(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gsplat"
    out.mkdir()
    (out / contract.RESULT_PLY).write_bytes(b"ply\n" + b"\0" * 64)
    (out / "results.spz").write_bytes(b"\x1f\x8b" + b"\0" * 8)
    (out / contract.METRICS_JSONL).write_text('{"event": "eval", "step": 10, "max_steps": 10, "loss": 0.1, "psnr": 30.0}\n')
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen([str(SPLATOPS), "view", str(out), "--no-browser", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.match(r"web page: (http://127\.0\.0\.1:\d+/trainings/local/gsplat)  \(Ctrl-C stops\)$", first.strip())
        assert found, first + (proc.stdout.read() if proc.poll() is not None else "")
        page = httpx.get(found.group(1), timeout=10)
        assert page.status_code == 200 and "gsplat" in page.text
        api = found.group(1).replace("/trainings/", "/api/trainings/")
        t = httpx.get(api, timeout=10).json()
        assert [o["name"] for o in t["outputs"]] == ["ply", "spz"] and t["progress"]["psnr"] == 30.0
        assert httpx.get(api + "/files/spz", timeout=10).content == b"\x1f\x8b" + b"\0" * 8
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
