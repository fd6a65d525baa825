"""Kueue's reason for not admitting a Job, from its Workload's conditions, in status.message."""

from __future__ import annotations

import dataclasses

import pytest
from op_fixtures import job

from splatops.api.models import parse_spec
from splatops.controller import failures, status

QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a10g, 1 more needed"


def workload(*conditions: tuple[str, str, str]) -> dict:
    return {"status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conditions]}}


@pytest.mark.parametrize(("workloads", "message"), [
    ([], None),
    ([workload()], None),
    ([workload(("QuotaReserved", "False", QUOTA))], QUOTA),
    ([workload(("QuotaReserved", "False", "LocalQueue gpu-a10g doesn't exist"))], "LocalQueue gpu-a10g doesn't exist"),
    ([workload(("QuotaReserved", "True", "Quota reserved in ClusterQueue gpu-a10g"),
               ("Admitted", "False", "The workload has not all checks ready"))], "The workload has not all checks ready"),
    ([workload(("QuotaReserved", "True", "reserved"), ("Admitted", "True", "admitted"))], None),
    ([workload(("QuotaReserved", "False", ""))], None),
])
def test_kueue_pending(workloads: list, message: str | None) -> None:
    assert failures.kueue_pending(workloads) == message


def test_the_queued_status_carries_kueues_words() -> None:
    obs = status.Observed(spec=parse_spec({"scene": {"claimName": "s", "path": "fox"}, "queueName": "gpu-a10g"}), status={},
                          generation=1, job=job(suspend=True))
    phase, reason, message = status.desired_phase(obs)
    assert (phase.value, reason, message) == ("Queued", "WaitingForKueue", "Waiting for Kueue to admit the Job (queue gpu-a10g).")
    _, _, message = status.desired_phase(dataclasses.replace(obs, kueue_message=QUOTA))
    assert message == f"Waiting for Kueue to admit the Job (queue gpu-a10g): {QUOTA}"
