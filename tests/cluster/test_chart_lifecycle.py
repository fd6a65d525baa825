"""The chart through real Helm against the real API server: install (crds/ included), upgrade,
uninstall (the CRD and the trainings stay)."""

from __future__ import annotations

import json

import pytest
import yaml

from . import controlplane as cpm

RELEASE, NS = "lifecycle", "splatops-lifecycle"
CRD = "crd/gaussiansplattrainings.splatops.dev"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def _env(cp: cpm.ControlPlane) -> dict[str, str]:
    sts = json.loads(cp.kubectl("-n", NS, "get", "statefulset", "-l", f"app.kubernetes.io/instance={RELEASE}",
                                "-o", "json").stdout)["items"]
    assert len(sts) == 1, sts
    return {e["name"]: e.get("value") for e in sts[0]["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_install_upgrade_uninstall_keeps_the_crd_and_the_trainings(control_plane: cpm.ControlPlane):
    cp = control_plane
    values = ["--set", f"watch.namespaces={{{NS}}}", "--set", "peering.name=lifecycle"]
    cp.helm("install", RELEASE, str(cpm.ROOT / "charts/splatops"), "-n", NS, "--create-namespace", *values)
    cp.kubectl("wait", "--for=condition=Established", CRD, "--timeout=60s")
    assert _env(cp)["SPLATOPS_OPERATOR_NAMESPACES"] == NS
    account = cp.kubectl("-n", NS, "get", "serviceaccount", "-l", f"app.kubernetes.io/instance={RELEASE}",
                         "-o", "name").stdout.split()
    assert account, "the chart created no ServiceAccount"
    # The API server accepted every object of the release: the Role lets the account read trainings.
    can = cp.kubectl("auth", "can-i", "watch", "gaussiansplattrainings.splatops.dev", "-n", NS,
                     f"--as=system:serviceaccount:{NS}:{account[0].split('/')[-1]}", check=False)
    assert can.stdout.strip() == "yes", can.stdout + can.stderr

    cp.helm("upgrade", RELEASE, str(cpm.ROOT / "charts/splatops"), "-n", NS, *values,
            "--set", "trainer.maxConcurrent=2")
    assert _env(cp)["SPLATOPS_OPERATOR_MAX_CONCURRENT"] == "2"
    history = json.loads(cp.helm("history", RELEASE, "-n", NS, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"

    cp.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "splatops.dev/v1alpha1", "kind": "GaussianSplatTraining", "metadata": {"name": "kept"},
        "spec": {"scene": {"claimName": "scenes", "path": "fox"}}}))
    cp.helm("uninstall", RELEASE, "-n", NS)
    assert cp.kubectl("-n", NS, "get", "statefulset,serviceaccount,role", "-l",
                      f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.strip() == ""
    cp.kubectl("get", CRD)  # crds/ are never deleted by Helm
    cp.kubectl("-n", NS, "get", "gst/kept")
