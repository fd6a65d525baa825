"""`splatops operator`, the chart's entrypoint, run as a process against the emulator over HTTP:
it prints the operator's INFO lines and kopf's per-object handler errors (a Job creation the
API server fails), as text or, with SPLATOPS_OPERATOR_LOG_FORMAT=json, as kopf's JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys

import pytest

from splatops.local import cluster as c

from .conftest import Harness, eventually

pytestmark = pytest.mark.timeout(90)

FAILURE = "etcdserver: request timed out"
HANDLER_ERROR = f"Handler 'training_event' failed temporarily: Creating Job gst-logged failed: {FAILURE}"


async def run_operator(kube: Harness, log: pathlib.Path, **env: str) -> None:
    """Start `splatops operator` (this checkout's code), wait until `log` shows the handler error
    of a training whose Job creation the API server fails, then stop it with SIGTERM."""
    kube.emulator.fail_next[("POST", c.JOB_RESOURCE, False)] = [(500, "InternalError", FAILURE)] * 1000
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "splatops.cli.main", "operator", stdout=out, stderr=out,
            env={**os.environ, **{f"SPLATOPS_OPERATOR_{k.upper()}": v for k, v in env.items()}})
    try:
        await kube.create("logged")
        await eventually(lambda: HANDLER_ERROR in log.read_text(), lambda: f"the handler error in:\n{log.read_text()}", 60)
    finally:
        proc.terminate()  # kopf stops gracefully on SIGTERM
        await asyncio.wait_for(proc.wait(), 30)


async def test_text_logs_show_info_and_handler_errors(kube: Harness, tmp_path: pathlib.Path):
    log = tmp_path / "operator.log"
    await run_operator(kube, log)
    text = log.read_text()
    assert "[INFO    ] splatops operator starting:" in text, text
    assert "[default/logged] " + HANDLER_ERROR in text, text  # kopf's per-object prefix


async def test_json_logs_are_kopfs_json_lines(kube: Harness, tmp_path: pathlib.Path):
    log = tmp_path / "operator.log"
    await run_operator(kube, log, log_format="json")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    starting = next(r for r in records if r["message"].startswith("splatops operator starting"))
    assert starting["severity"] == "info"
    error = next(r for r in records if HANDLER_ERROR in r["message"])
    assert error["severity"] == "error" and error["object"]["name"] == "logged" and error["object"]["namespace"] == "default"
