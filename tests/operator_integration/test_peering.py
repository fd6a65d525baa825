"""Two replicas: kopf peering makes exactly one operator act, and the standby takes over.

Two real operators run in this process against one emulator, each with its own kubeconfig token
(so every request is attributed to a replica) and its own kopf identity (POD_ID). Peering is
mandatory (the standby starts paused), priorities differ, and heartbeats are short-lived.
"""

from __future__ import annotations

import datetime
import pathlib
import threading
import time
from typing import Any

import pytest
import yaml

from splatops.local import cluster as c

from .conftest import Harness, eventually

pytest.importorskip("splatops.controller.main", reason="the operator is not built yet")

pytestmark = pytest.mark.timeout(60)

CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds" / "kopf-peering.yaml"
PEERING = "kopf.dev/v1/clusterkopfpeerings"  # cluster-wide watching -> ClusterKopfPeering
PEERING_NAME = "splatops-ha"
LIFETIME = 3  # seconds a heartbeat stays valid (SPLATOPS_OPERATOR_PEERING_LIFETIME)
MARGIN = 3.0  # for a loaded machine
ACTIVE, STANDBY = "replica-a", "replica-b"  # kubeconfig tokens and kopf identities
# Everything the operator writes besides its own peering heartbeats.
OPERATED = (c.TRAINING_RESOURCE, c.JOB_RESOURCE, c.POD_RESOURCE, c.EVENT_RESOURCE, "events.k8s.io/v1/events")


def peers(kube: Harness) -> dict[str, dict[str, Any]]:
    """The peering object's entries: kopf identity -> {priority, lifetime, lastseen}."""
    obj = kube.emulator.read(PEERING, None, PEERING_NAME) or {}
    return dict(obj.get("status") or {})


def deadline_of(entry: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(entry["lastseen"]) + datetime.timedelta(seconds=entry["lifetime"])


def job_posts(kube: Harness, who: str | None = None) -> int:
    return sum(n for (w, m, r, sub), n in kube.emulator.calls.items()
               if m == "POST" and r == c.JOB_RESOURCE and who in (None, w))


async def start_replica(kube: Harness, who: str, priority: int) -> threading.Event:
    kube.monkeypatch.setenv("POD_ID", who)  # kopf's peering identity (read when the operator starts)
    stop = await kube.start_operator(
        who, standalone="false", peering_mandatory="true", peering_name=PEERING_NAME,
        priority=str(priority), peering_lifetime=str(LIFETIME))
    await eventually(lambda: peers(kube).get(who, {}).get("priority") == priority, f"{who}'s heartbeat")
    return stop


async def two_replicas(kube: Harness) -> tuple[threading.Event, threading.Event]:
    """kopf's peering CRDs (from crds/) and the peering object, then the active and the standby."""
    for doc in yaml.safe_load_all(CRDS.read_text()):
        await kube.emulator.create(c.CRD_RESOURCE, doc)
    await kube.emulator.create(PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                         "metadata": {"name": PEERING_NAME}})
    active = await start_replica(kube, ACTIVE, 200)
    standby = await start_replica(kube, STANDBY, 100)
    return active, standby


async def handled(kube: Harness, *names: str) -> None:
    """Each training got its one Job and its status (phase Pending: Job created, no pod yet)."""
    for name in names:
        await kube.wait_job(name)
        await kube.wait_phase(name, "Pending")


async def test_only_the_higher_priority_replica_acts_and_the_standby_takes_over_on_stop(kube: Harness):
    active, _ = await two_replicas(kube)
    assert {e["priority"] for e in peers(kube).values()} == {200, 100}

    for name in ("t1", "t2", "t3"):
        await kube.create(name)
    await handled(kube, "t1", "t2", "t3")
    job = await kube.wait_job("t1")
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.run(pod)
    await kube.wait_phase("t1", "Running")
    for _ in range(2):  # the standby stays idle across the active's heartbeats (each ~1 s)
        seen = peers(kube)[ACTIVE]["lastseen"]
        await eventually(lambda: peers(kube)[ACTIVE]["lastseen"] != seen, "the active's next heartbeat", MARGIN)

    # One POST per Job, all by the active (a second acting replica would POST too and get a 409).
    assert job_posts(kube) == job_posts(kube, ACTIVE) == 3
    assert kube.emulator.writes(ACTIVE, c.TRAINING_RESOURCE).get(("PATCH", c.TRAINING_RESOURCE, "status"))
    assert kube.emulator.writes(STANDBY, *OPERATED) == {}
    for name in ("t1", "t2", "t3"):
        assert kube.job_of(name)

    # Graceful stop: kopf's keep-alive removes the active's entry on its way out, the standby
    # resumes at once (no need to wait for the heartbeat to expire).
    await kube.stop_operator(active)
    assert ACTIVE not in peers(kube) and STANDBY in peers(kube)
    stopped = time.monotonic()
    await kube.create("t4")
    await eventually(lambda: len(kube.sim.jobs("t4")) == 1, "a Job for t4 from the standby", LIFETIME + MARGIN)
    await kube.wait_phase("t4", "Pending", LIFETIME + MARGIN)
    took_over = time.monotonic() - stopped

    assert job_posts(kube, STANDBY) == 1 and job_posts(kube) == 4  # adopted t1..t3's Jobs, no re-POST
    assert kube.emulator.writes(STANDBY, c.TRAINING_RESOURCE).get(("PATCH", c.TRAINING_RESOURCE, "status"))
    assert kube.status("t1")["phase"] == "Running"  # the live status stands after the failover
    assert took_over < LIFETIME + MARGIN


async def test_a_crashed_active_is_replaced_when_its_heartbeat_expires(kube: Harness):
    active, _ = await two_replicas(kube)
    await kube.create("t1")
    await handled(kube, "t1")
    assert job_posts(kube, ACTIVE) == 1 and kube.emulator.writes(STANDBY, *OPERATED) == {}

    # A crash: the active's heartbeats and its farewell never reach the API; its entry stays.
    kube.emulator.peering_lost.add(ACTIVE)
    await kube.stop_operator(active)
    assert ACTIVE in peers(kube)
    deadline = deadline_of(peers(kube)[ACTIVE])
    await kube.create("t2")
    await eventually(lambda: len(kube.sim.jobs("t2")) == 1, "a Job for t2 from the standby", LIFETIME + MARGIN)
    appeared = datetime.datetime.now(datetime.UTC)
    await kube.wait_phase("t2", "Pending", LIFETIME + MARGIN)

    # Not before the stale heartbeat expired, and soon after.
    assert deadline <= appeared < deadline + datetime.timedelta(seconds=MARGIN)
    assert job_posts(kube, STANDBY) == 1 and job_posts(kube) == 2
    await eventually(lambda: ACTIVE not in peers(kube), "the standby to clean the dead entry", MARGIN)
    assert kube.status("t1")["phase"] == "Pending"
    assert kube.job_of("t1") and kube.job_of("t2")
