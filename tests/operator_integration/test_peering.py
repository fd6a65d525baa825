"""Two replicas: kopf peering makes exactly one operator act, and the standby takes over.

Two real operators run in this process against one emulator, each with its own kubeconfig token
(so every request is attributed to a replica) and its own kopf identity (POD_ID). Peering is
mandatory (the standby starts paused), priorities differ, and heartbeats are short-lived.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import pathlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from splatops import contract
from splatops.controller import metric_names as mn
from splatops.local import cluster as c

from .conftest import NS, Harness, eventually

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


async def start_replica(kube: Harness, who: str, priority: int, metrics_port: int = 0) -> threading.Event:
    kube.monkeypatch.setenv("POD_ID", who)  # kopf's peering identity (read when the operator starts)
    stop = await kube.start_operator(
        who, standalone="false", peering_mandatory="true", peering_name=PEERING_NAME,
        priority=str(priority), peering_lifetime=str(LIFETIME), metrics_port=str(metrics_port))
    await eventually(lambda: peers(kube).get(who, {}).get("priority") == priority, f"{who}'s heartbeat")
    return stop


async def create_peering(kube: Harness) -> None:
    """kopf's peering CRDs (from crds/) and the peering object."""
    for doc in yaml.safe_load_all(CRDS.read_text()):
        await kube.emulator.create(c.CRD_RESOURCE, doc)
    await kube.emulator.create(PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                         "metadata": {"name": PEERING_NAME}})


async def two_replicas(kube: Harness) -> tuple[threading.Event, threading.Event]:
    """The peering, then the active and the standby."""
    await create_peering(kube)
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


# --- metrics: only the active replica exports per-training series -------------------------------

# What a replica knows about trainings: frozen while it is paused (kopf stops its watches).
PER_TRAINING = {mn.TRAININGS, mn.TRAINING_PHASE, mn.PROGRESS_RATIO, mn.STEP, mn.LAST_PROGRESS, mn.LOSS, mn.PSNR}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def progress(step: int) -> str:
    return contract.Progress(step=step, max_steps=300, loss=0.0234, num_gaussians=1000, steps_per_sec=50.0).to_json()


@dataclasses.dataclass(frozen=True)
class Scrape:
    """One replica's /metrics, as Prometheus reads it."""

    samples: list[Sample]

    @property
    def active(self) -> float | None:
        return next((s.value for s in self.samples if s.name == mn.OPERATOR_ACTIVE), None)

    def per_training(self) -> list[Sample]:
        return [s for s in self.samples if s.name in PER_TRAINING]

    def phases(self) -> dict[str, str]:
        return {s.labels["name"]: s.labels["phase"] for s in self.samples if s.name == mn.TRAINING_PHASE and s.value == 1}

    def of(self, name: str, training: str) -> float | None:
        return next((s.value for s in self.samples if s.name == name and s.labels.get("name") == training), None)


async def scrape(port: int) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as rsp:
        assert rsp.status == 200
        text = await rsp.text()
    return Scrape([s for f in text_string_to_metric_families(text) for s in f.samples])


async def scraped(port: int, check: Callable[[Scrape], bool], what: str, timeout: float = 10) -> Scrape:
    """The first scrape of `port` that passes `check`."""
    deadline = time.monotonic() + timeout
    while not check(got := await scrape(port)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; /metrics: {got.active=} {got.per_training()}")
        await asyncio.sleep(0.05)
    return got


async def test_only_the_active_replica_exports_per_training_metrics(kube: Harness):
    """A paused replica's watches stop, so its view of the trainings freezes: while paused it
    exports splatops_operator_active 0 and no per-training series or phase counts (a sum over
    the replicas counts each training once); when it resumes, fresh ones from the re-list."""
    await create_peering(kube)
    port_a, port_b = free_port(), free_port()

    # The low-priority replica alone acts, and exports what it sees.
    await start_replica(kube, STANDBY, 100, port_b)
    await scraped(port_b, lambda m: m.active == 1, "the lone replica to be active")
    for name in ("t1", "t2", "gone"):
        await kube.create(name)
    await handled(kube, "t1", "t2", "gone")
    await kube.running_pod("t1", progress(100))
    await kube.wait_phase("t1", "Running")
    seen = await scraped(port_b, lambda m: m.of(mn.STEP, "t1") == 100, "t1's step on the lone replica")
    assert seen.phases() == {"t1": "Running", "t2": "Pending", "gone": "Pending"}

    # The high-priority replica starts: the first one pauses and drops every per-training series.
    active = await start_replica(kube, ACTIVE, 200, port_a)
    paused = await scraped(port_b, lambda m: m.active == 0, "the low-priority replica to pause")
    assert paused.per_training() == []
    now_active = await scraped(port_a, lambda m: m.active == 1 and len(m.phases()) == 3, "the new active replica")
    assert now_active.phases() == {"t1": "Running", "t2": "Pending", "gone": "Pending"}

    # What changes meanwhile, only the active replica sees and exports.
    await kube.running_pod("t2", progress(50))
    await kube.emulator.delete(c.TRAINING_RESOURCE, NS, "gone")
    await scraped(port_a, lambda m: m.phases() == {"t1": "Running", "t2": "Running"} and m.of(mn.STEP, "t2") == 50,
                  "t2 Running and 'gone' gone on the active replica")
    seen = peers(kube)[ACTIVE]["lastseen"]
    await eventually(lambda: peers(kube)[ACTIVE]["lastseen"] != seen, "the active's next heartbeat", MARGIN)
    standing_by = await scrape(port_b)
    assert standing_by.active == 0 and standing_by.per_training() == []

    # The active one stops: the standby resumes, re-lists, and exports the trainings as they are
    # now (t2 Running, which it never saw; not 'gone', deleted while it was paused, which no
    # re-list reports), with the progress gauges read again from the pod logs after it resumed.
    stopping = time.time()
    await kube.stop_operator(active)
    back = await scraped(port_b, lambda m: m.active == 1 and m.phases() == {"t1": "Running", "t2": "Running"}
                         and m.of(mn.STEP, "t1") == 100 and m.of(mn.STEP, "t2") == 50,
                         "the standby's fresh series", LIFETIME + MARGIN)
    assert (back.of(mn.LAST_PROGRESS, "t1") or 0) >= stopping  # read again, though the step never moved
    assert {s.labels["name"] for s in back.per_training() if "name" in s.labels} == {"t1", "t2"}
    counts = {s.labels["phase"]: s.value for s in back.samples if s.name == mn.TRAININGS}
    assert counts["Running"] == 2 and counts["Pending"] == 0
    # The daemon that tells a replica it is active never blocks the peering object's deletion.
    assert not kube.emulator.read(PEERING, None, PEERING_NAME)["metadata"].get("finalizers")
