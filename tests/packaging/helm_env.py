"""Helpers for the chart tests: a Kubernetes emulator (kmock) for Helm to install into, and
subprocess calls into the Python 3.12 venv that has helm-sdkpy (see helm_tool.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import subprocess
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import kmock
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "splatops"
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"
TOOL = pathlib.Path(__file__).with_name("helm_tool.py")

_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# Kinds outside the bundled built-ins that the chart renders (Helm maps every kind first).
EXTRA_RESOURCES = {
    "monitoring.coreos.com/v1/servicemonitors": ("ServiceMonitor", True),
    "monitoring.coreos.com/v1/podmonitors": ("PodMonitor", True),
    "monitoring.coreos.com/v1/prometheusrules": ("PrometheusRule", True),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True),
    "splatops.dev/v1alpha1/gaussiansplattrainings": ("GaussianSplatTraining", True),
}


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, with the core group's discovery fixed for Go clients.

    kmock serves /api/v1 with groupVersion "/v1"; client-go then finds no core kinds.
    """

    async def _serve_version(self, request: kmock.Request) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload = {**payload, "groupVersion": payload["groupVersion"][1:]}
        return payload

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        # kmock's bundled data is a 1.26 k3s; the chart needs >= 1.28 (StatefulSet pod-index label).
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """Run a fresh emulator in a background thread; yield its URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()  # set from the test's thread via call_soon_threadsafe

    async def serve() -> None:
        # strict=False: the 404s Helm provokes on purpose (does this object exist yet?) are
        # answered as Kubernetes would, not collected and re-raised as test failures.
        emu = _Emulator(strict=False)
        with warnings.catch_warnings():  # kmock reads its bundled data with a deprecated API
            warnings.simplefilter("ignore", DeprecationWarning)
            emu.resources.load_bundled()
        for key, (kind, namespaced) in EXTRA_RESOURCES.items():
            emu.resources[key] = kmock.ResourceInfo(
                namespaced=namespaced, kind=kind, singular=kind.lower(), verbs=_VERBS
            )
        server = kmock.Server(emu)
        try:
            async with emu, server:
                url.append(str(server.url))
                started.set()
                await stop.wait()
        finally:
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(30)
    try:
        if not url:
            raise RuntimeError("the kmock emulator did not start")
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def kubeconfig(url: str, path: pathlib.Path) -> pathlib.Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


def _run(args: list[str], timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run(
        [str(HELM_PYTHON), str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"HELM_DRIVER": "memory", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    if proc.returncode != 0:
        raise HelmFailed(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout)


class HelmFailed(RuntimeError):
    """Helm refused the chart or the values (the message is Helm's)."""


def render_manifest(
    tmp: pathlib.Path,
    values: dict[str, Any] | None = None,
    namespace: str = "splatops-system",
    release: str = "splatops",
    chart: pathlib.Path = CHART,
) -> str:
    """Render the chart with real Helm; return the manifest text exactly as Helm produced it."""
    with emulator() as url:
        config = kubeconfig(url, tmp / "kubeconfig.yaml")
        out = _run(["render", str(config), str(chart), json.dumps(values or {}), namespace, release])
    return out["manifest"]


def render(tmp: pathlib.Path, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_manifest(tmp, values, **kwargs)) if doc]


def lint(chart: pathlib.Path = CHART) -> dict[str, Any]:
    return _run(["lint", str(chart)])


# Named value sets the chart is rendered with (each test picks the ones it checks).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "single-replica": {"operator": {"replicas": 1}, "podDisruptionBudget": {"enabled": False}},
    "gateway": {"gateway": {"enabled": True, "sceneClaimName": "scenes", "trainingNamespace": "splats"}},
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "noProgressMinutes": 20},
            "dashboard": {"enabled": True},
        }
    },
    "templated-crds": {"crds": {"templated": True}},
    **{
        f"preset-{name}": {"gpu": {"preset": name}}
        for name in ("gfd", "eks-managed", "karpenter", "eks-auto", "gke-l4", "aks-a10")
    },
}


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(objects, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
