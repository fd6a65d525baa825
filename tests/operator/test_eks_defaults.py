"""EKS defaults on a stock cluster: the default trainer fits g5.xlarge after EKS's reservations,
and a pod a node is being provisioned for is not failed at the plain Unschedulable grace."""

from __future__ import annotations

import re

import pytest
from op_fixtures import T0, T0_EPOCH

from splatops.controller import failures
from splatops.controller.settings import Settings

# --- g5.xlarge allocatable, by the EKS AMI bootstrap's formulas (docs/eks.md) ---------------------

G5_XLARGE = {"vcpu": 4, "memory_mib": 15_667, "enis": 4, "ipv4_per_eni": 15}  # MemTotal ~15.3 GiB of 16
DAEMONSETS = {"cpu_m": 500, "memory_mib": 1024}  # aws-node, kube-proxy, CSI nodes, device plugin, agents


def max_pods(enis: int, ipv4_per_eni: int) -> int:
    return enis * (ipv4_per_eni - 1) + 2


def kube_reserved_cpu_m(vcpu: int) -> float:
    """6 % of the first core, 1 % of the second, 0.5 % of the third and fourth, 0.25 % of the rest."""
    shares = [60, 10, 5, 5] + [2.5] * max(0, vcpu - 4)
    return sum(shares[:vcpu])


def allocatable(node: dict) -> tuple[float, float]:
    """(CPU millicores, memory MiB) the scheduler can give pods."""
    reserved_memory = 11 * max_pods(node["enis"], node["ipv4_per_eni"]) + 255
    eviction_hard = 100
    return node["vcpu"] * 1000 - kube_reserved_cpu_m(node["vcpu"]), node["memory_mib"] - reserved_memory - eviction_hard


def quantity(value: str) -> float:
    """CPU in millicores or memory in MiB from a Kubernetes quantity (the forms the defaults use)."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", value).groups()
    return float(number) * {"": 1000, "m": 1, "Gi": 1024, "Mi": 1}[unit]


def test_g5_xlarge_numbers() -> None:
    assert max_pods(4, 15) == 58
    cpu, memory = allocatable(G5_XLARGE)
    assert cpu == 3920 and memory == 15_667 - 893 - 100  # 14,674 MiB = 14.3 GiB


@pytest.mark.parametrize(("cpu", "memory", "fits"), [
    (Settings().default_cpu, Settings().default_memory, True),
    ("4", "24Gi", False),  # the old defaults never scheduled on g5.xlarge
])
def test_default_trainer_fits_g5_xlarge(cpu: str, memory: str, fits: bool) -> None:
    free_cpu, free_memory = allocatable(G5_XLARGE)
    ok = quantity(cpu) <= free_cpu - DAEMONSETS["cpu_m"] and quantity(memory) <= free_memory - DAEMONSETS["memory_mib"]
    assert ok is fits


# --- Unschedulable vs a node on its way ------------------------------------------------------------


def pending_pod(name: str = "gst-fox-abc", *, nominated_node: str | None = None) -> dict:
    status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                  "message": "0/3 nodes are available", "lastTransitionTime": T0}]}
    if nominated_node:
        status["nominatedNodeName"] = nominated_node
    return {"metadata": {"name": name, "creationTimestamp": T0}, "status": status}


@pytest.mark.parametrize(("pod", "nominated", "waited", "failed"), [
    (pending_pod(), (), 899, False),
    (pending_pod(), (), 900, True),  # plain Unschedulable: the grace
    (pending_pod(), ("gst-fox-abc",), 900, False),  # Karpenter's Nominated Event: the provisioning grace
    (pending_pod(), ("gst-fox-abc",), 2700, True),
    (pending_pod(nominated_node="ip-10-0-1-7"), (), 2000, False),  # the scheduler nominated a node
    (pending_pod(), ("another-pod",), 900, True),
])
def test_stuck_tolerates_a_node_being_provisioned(pod: dict, nominated: tuple, waited: float, failed: bool) -> None:
    s = Settings()
    got = failures.stuck([pod], T0_EPOCH + waited, s.unschedulable_grace, nominated=nominated,
                         provisioning_grace=s.provisioning_grace)
    assert (got is not None) is failed
    if got is not None:
        assert got.reason == "Unschedulable" and "node.kubernetes.io/instance-type" in got.message


def test_pending_message_says_a_node_is_coming() -> None:
    assert failures.pending_detail([pending_pod()], ("gst-fox-abc",))[0] == "NodeProvisioning"
    assert failures.pending_detail([pending_pod()])[0] == "Unschedulable"
