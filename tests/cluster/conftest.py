"""The conformance tier: the operator, the chart and kubectl against a real control plane
(etcd, kube-apiserver, kube-controller-manager built by scripts/build-tools), a fake GPU node
(tests/cluster/node.py) running trainers as local CPU processes.

Every test here is marked `cluster`; without the binaries they are all skipped with one reason.
Component logs are copied to `.cluster-logs/` at the repository root when a test failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import yaml

from . import controlplane as cpm
from .node import FakeNode

NS = "trainings"  # where trainings run (the operator watches it)
RELEASE_NS = "splatops-system"
RELEASE = "splatops"
SCENE_CLAIM = "scenes"
# Under the chart policy's allowed image prefix (its ValidatingAdmissionPolicy runs on this server).
OOM_IMAGE = "ghcr.io/splatops/trainer:cuda-oom"
LOG_DIR = cpm.ROOT / ".cluster-logs"

# The trainer's CLI with its training step raising CUDA's out-of-memory error (no GPU here): the
# real exit code, termination message and error.log of a CUDA OOM.
OOM_TRAINER = """
import sys, types, torch
from splatops import contract
def train(cfg, scene, hooks, device, **options):
    hooks.on_progress(contract.Progress(step=1, max_steps=cfg.max_steps, loss=0.5))
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
sys.modules["splatops_trainer.train"] = types.SimpleNamespace(train=train)
from splatops_trainer import cli
sys.exit(cli.main())
"""

# Fast operator loops; no ports (the chart's env is applied first, these win).
OPERATOR_ENV = {
    "SPLATOPS_OPERATOR_PROGRESS_INTERVAL": "0.5",
    "SPLATOPS_OPERATOR_STATUS_MIN_INTERVAL": "0",
    "SPLATOPS_OPERATOR_METRICS_PORT": "0",
    "SPLATOPS_OPERATOR_LIVENESS_PORT": "0",
    "SPLATOPS_OPERATOR_STANDALONE": "true",
    "SPLATOPS_OPERATOR_UNSCHEDULABLE_GRACE": "0",  # a pod no node fits fails its training at once
}

MISSING = cpm.missing_binaries()
SKIP_REASON = (f"tests/cluster skipped: no {', '.join(MISSING)} under {cpm.BIN} "
               "(built by scripts/build-tools, which needs a Go toolchain)")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: every test here is marked `cluster`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
            if MISSING:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


class BackgroundLoop:
    """An event loop in its own thread (the fake node lives there; tests stay synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-node", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def eventually(check: Callable[[], Any], what: str | Callable[[], str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(0.2)
    return result


# Package scope, not session: the control plane, the fake node and the operator (whose env it
# sets in os.environ) go when tests/cluster ends, before the rest of the suite runs.
@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[cpm.ControlPlane]:
    base = tmp_path_factory.mktemp("control-plane")
    started = time.monotonic()
    try:
        with cpm.running_control_plane(base) as cp:
            print(f"\ncontrol plane ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
            yield cp
    finally:
        if request.session.testsfailed or os.environ.get("SPLATOPS_CLUSTER_KEEP_LOGS"):
            shutil.rmtree(LOG_DIR, ignore_errors=True)
            LOG_DIR.mkdir()
            for log in base.glob("*.log"):
                shutil.copy(log, LOG_DIR / log.name)
            print(f"\ncomponent logs kept in {LOG_DIR}", file=sys.stderr)


def chart_env(cp: cpm.ControlPlane, release: str, namespace: str) -> dict[str, str]:
    """The operator container's env as the installed chart rendered it (plain values only)."""
    manifest = cp.helm("get", "manifest", release, "-n", namespace).stdout
    for doc in yaml.safe_load_all(manifest):
        if doc and doc.get("kind") == "StatefulSet":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
    raise AssertionError("the chart rendered no StatefulSet")


def service_account_kubeconfig(cp: cpm.ControlPlane, account: str, namespace: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig with a TokenRequest token of the ServiceAccount (what its pod would mount)."""
    token = cp.kubectl("create", "token", account, "-n", namespace, "--duration", "2h").stdout.strip()
    path.write_text(yaml.safe_dump(cpm.kubeconfig(cp.url, cp.path("ca.crt"), token=token, namespace=NS)))
    return path


@pytest.fixture(scope="package")
def installed(control_plane: cpm.ControlPlane) -> cpm.ControlPlane:
    """The chart installed by real Helm (its crds/ included), watching the trainings namespace."""
    cp = control_plane
    cp.kubectl("create", "namespace", NS)
    cp.helm("install", RELEASE, str(cpm.ROOT / "charts/splatops"), "-n", RELEASE_NS, "--create-namespace",
            "--set", f"watch.namespaces={{{NS}}}", "--set", "operator.replicas=1")
    cp.kubectl("wait", "--for=condition=Established", "crd/gaussiansplattrainings.splatops.dev", "--timeout=60s")
    return cp


class Operator:
    """The operator in this process (its own thread and loop), as the chart's ServiceAccount."""

    def __init__(self, env: dict[str, str]) -> None:
        from splatops.controller import main
        from splatops.controller.settings import Settings

        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.settings = Settings.from_env()
        self.ready, self.stop_flag = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []

        def target() -> None:
            try:
                main.run(self.settings, ready_flag=self.ready, stop_flag=self.stop_flag)
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, name="splatops-operator", daemon=True)

    def start(self) -> None:
        self.thread.start()
        eventually(lambda: self.ready.is_set() or self.errors or not self.thread.is_alive(), "the operator", 30)
        if self.errors or not self.ready.is_set():
            raise AssertionError(f"the operator failed to start: {self.errors!r}")

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Cluster:
    """What the scenarios use: the control plane, the node, the volume directory."""

    def __init__(self, cp: cpm.ControlPlane, node: FakeNode, loop: BackgroundLoop, volume: pathlib.Path,
                 operator_kubeconfig: pathlib.Path) -> None:
        self.cp, self.node, self.loop, self.volume = cp, node, loop, volume
        self.operator_kubeconfig = operator_kubeconfig

    def kubectl(self, *args: str, **kw: Any):
        return self.cp.kubectl("-n", NS, *args, **kw)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("get", kind, "-l", selector, "-o", "json").stdout)["items"]

    def status(self, name: str) -> dict[str, Any]:
        return (self.get("gst", name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
        eventually(lambda: self.status(name).get("phase") == phase,
                   lambda: f"{name} in phase {phase}; status: {self.status(name)}; node errors: {self.node.errors}",
                   timeout)
        return self.status(name)

    def apply(self, manifest: dict[str, Any], check: bool = True):
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def scene(self, name: str, source: pathlib.Path) -> str:
        """A copy of the synthetic scene on the volume; returns its path inside the claim."""
        dest = self.volume / "scenes" / name
        shutil.copytree(source, dest, symlinks=True)
        return f"scenes/{name}"


@pytest.fixture(scope="package")
def cluster(installed: cpm.ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cp = installed
    work = tmp_path_factory.mktemp("cluster-node")
    volume = work / "volume"
    volume.mkdir()
    cp.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": SCENE_CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    loop = BackgroundLoop()
    node = FakeNode(cp.url, cp.ssl_context("kubelet"), cp.ssl_context(), (cp.path("kubelet.crt"), cp.path("kubelet.key")), NS,
                    {SCENE_CLAIM: volume}, work / "pods", env_overrides={"SPLATOPS_DEVICE": "cpu"},
                    images={OOM_IMAGE: [sys.executable, "-c", OOM_TRAINER]})
    loop.call(node.start())
    account = f"{RELEASE}"  # the chart's ServiceAccount (fullname = release name containing "splatops")
    kubeconfig = service_account_kubeconfig(cp, account, RELEASE_NS, work / "operator.kubeconfig")
    env = {**chart_env(cp, RELEASE, RELEASE_NS), **OPERATOR_ENV, "KUBECONFIG": str(kubeconfig)}
    operator = Operator(env)
    operator.start()
    try:
        yield Cluster(cp, node, loop, volume, kubeconfig)
    finally:
        # What the cluster held at the end, beside the component logs (kept on failure).
        dump = cp.kubectl("-n", NS, "get", "gst,jobs,pods,events", "-o", "yaml", check=False).stdout
        cp.path("objects.log").write_text(dump + "\nnode errors: " + json.dumps(node.errors))
        operator.stop()
        loop.call(node.stop())
        loop.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say once, at the end of the run, why the tier did not run."""
    if MISSING and terminalreporter.stats.get("skipped"):
        if any(SKIP_REASON in str(r.longrepr) for r in terminalreporter.stats["skipped"]):
            terminalreporter.write_line(SKIP_REASON)
