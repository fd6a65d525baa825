"""A trainer pod waiting for a node Karpenter is launching is not a failure: the real operator over
HTTP reads the pod's Events once it is Unschedulable past the grace (here 0 s) and, on Karpenter's
Nominated Event, waits up to the provisioning grace instead."""

from __future__ import annotations

import pytest

from .conftest import Harness, eventually
from .test_operator import progress

pytestmark = pytest.mark.timeout(60)


async def _nominated_but_unschedulable(kube: Harness, name: str, provisioning_grace: str):
    """A training whose trainer pod Karpenter has nominated a node for, still Unschedulable."""
    await kube.start_operator(provisioning_grace=provisioning_grace)
    await kube.create(name)
    job = await kube.wait_job(name)
    pod = await kube.sim.start(job["metadata"]["name"])
    await kube.sim.karpenter_nominates(pod)
    await kube.sim.unschedulable(pod)
    return pod


async def test_a_pod_karpenter_provisions_for_waits_then_runs(kube: Harness):
    pod = await _nominated_but_unschedulable(kube, "g5", provisioning_grace="3600")
    # Unschedulable past the grace: the same reconcile that would fail it sees the Event instead.
    await eventually(lambda: kube.status("g5").get("reason") == "NodeProvisioning",
                     lambda: f"reason NodeProvisioning; status is {kube.status('g5')}")
    assert kube.status("g5")["phase"] == "Pending" and "being provisioned" in kube.status("g5")["message"]
    await kube.sim.run(pod, progress(10))  # the g5 node is up
    await kube.wait_phase("g5", "Running")


async def test_a_nominated_pod_still_fails_after_the_provisioning_grace(kube: Harness):
    await _nominated_but_unschedulable(kube, "never", provisioning_grace="0")
    status = await kube.wait_phase("never", "Failed")
    assert status["reason"] == "Unschedulable" and "A node was being provisioned for it" in status["message"], status
