"""Helpers for the chart tests: a Kubernetes emulator (kmock) for Helm to install into, and the
real `helm` binary that scripts/build-tools builds from Helm's Go module. Where that binary is
missing but a Python 3.12 venv with helm-sdkpy exists (.venv-helm, see helm_tool.py), that is
used instead: the same Helm library, driven through its Python binding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
TOOLS = pathlib.Path(os.environ.get("SPLATOPS_TOOLS") or pathlib.Path.home() / ".cache" / "splatops" / "tools")
HELM_BIN = TOOLS / "bin" / "helm"
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"  # the fallback: helm-sdkpy
TOOL = pathlib.Path(__file__).with_name("helm_tool.py")


def helm_available() -> bool:
    return HELM_BIN.exists() or HELM_PYTHON.exists()


UNAVAILABLE = f"no real Helm: {HELM_BIN} missing (`bash scripts/setup` builds it; needs Go)"

_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# Kinds the chart renders whose CRDs it does not ship (the Prometheus Operator's): registered up
# front, as on a cluster running kube-prometheus-stack. Every other custom kind (kopf.dev,
# splatops.dev) exists only once its CRD has been created, as on a real API server: from the
# chart's crds/ (which Helm installs first), or from the templates with crds.templated.
FOREIGN_RESOURCES = {
    "monitoring.coreos.com/v1/servicemonitors": ("ServiceMonitor", True),
    "monitoring.coreos.com/v1/podmonitors": ("PodMonitor", True),
    "monitoring.coreos.com/v1/prometheusrules": ("PrometheusRule", True),
}
HELM_RELEASE_ANNOTATION = "meta.helm.sh/release-name"  # Helm's ownership mark on release objects


# kmock private API (overrides of _serve_version, _serve_server_version, _serve_watch, _handle): pinned kmock==0.8 in pyproject.toml
class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, with the core group's discovery fixed for Go clients, and CRDs that serve.

    kmock serves /api/v1 with groupVersion "/v1"; client-go then finds no core kinds.
    A created CustomResourceDefinition registers its kind (as the API server starts serving it).
    With skip_crds (only for the helm-sdkpy fallback, which has no `--skip-crds`), the chart's
    crds/ directory is not installed: the emulator answers those creations (CRDs without Helm's
    release annotation) with 409 AlreadyExists, which Helm skips, and stores nothing.
    """

    skip_crds = False

    async def _serve_version(self, request: kmock.Request) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload = {**payload, "groupVersion": payload["groupVersion"][1:]}
        return payload

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        # kmock's bundled data is a 1.26 k3s; the chart needs >= 1.28 (StatefulSet pod-index label).
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """kmock's watch, plus the end-of-initial-events BOOKMARK that client-go's watch-list
        (sendInitialEvents=true) waits for: Helm watches its hooks with such an informer."""
        initial = str(request.params.get("sendInitialEvents", "")).lower() == "true"
        stream = super()._serve_watch(request)
        yield await anext(stream)  # b'': the headers are sent
        if initial:
            # kmock streams the existing objects first, in one go, when the stream is first read.
            existing = self.objects_of(request)
            for _ in existing:
                yield await anext(stream)
            info = self.resources[request.resource]
            group = request.resource.group
            yield {
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": f"{group}/{request.resource.version}" if group else request.resource.version,
                    "kind": info.kind,
                    "metadata": {"resourceVersion": "1", "annotations": {"k8s.io/initial-events-end": "true"}},
                },
            }
        async for event in stream:
            yield event

    def objects_of(self, request: kmock.Request) -> list[Any]:
        return [
            obj for (resource, namespace, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted
            and (request.namespace is None or namespace == request.namespace)
        ]

    async def _handle(self, request: kmock.Request) -> Any:
        creating_crd = (
            request.resource is not None
            and request.resource.plural == "customresourcedefinitions"
            and request.action == kmock.action.CREATE
            and isinstance(request.data, dict)
        )
        if creating_crd and self.skip_crds and HELM_RELEASE_ANNOTATION not in (request.data.get("metadata", {}).get("annotations") or {}):
            name = request.data.get("metadata", {}).get("name")
            return await self._render_error(kmock.KubernetesError(
                status=409, reason="AlreadyExists", message=f"customresourcedefinitions {name!r} already exists",
                details={"name": name, "group": "apiextensions.k8s.io", "kind": "customresourcedefinitions"},
            ))
        if creating_crd:
            # The API server marks a served CRD Established; `helm install` waits for that.
            names = request.data.get("spec", {}).get("names", {})
            request.data["status"] = {"acceptedNames": names, "conditions": [
                {"type": t, "status": "True", "reason": t} for t in ("NamesAccepted", "Established")]}
        response = await super()._handle(request)
        if creating_crd and response.status < 300:
            serve_crd(self, request.data)
        return response


def serve_crd(emu: kmock.KubernetesEmulator, crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    for version in spec["versions"]:
        if version.get("served", True):
            emu.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = kmock.ResourceInfo(
                namespaced=spec["scope"] == "Namespaced",
                kind=spec["names"]["kind"],
                singular=spec["names"].get("singular", spec["names"]["kind"].lower()),
                verbs=_VERBS,
                subresources={"status"} if "status" in (version.get("subresources") or {}) else set(),
            )


@contextlib.contextmanager
def emulator(skip_crds: bool = False) -> Iterator[str]:
    """Run a fresh emulator (a cluster with only the Prometheus Operator's CRDs) in a background
    thread; yield its URL. skip_crds: act as `helm install --skip-crds` (see _Emulator)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()  # set from the test's thread via call_soon_threadsafe

    async def serve() -> None:
        # strict=False: the 404s Helm provokes on purpose (does this object exist yet?) are
        # answered as Kubernetes would, not collected and re-raised as test failures.
        emu = _Emulator(strict=False)
        emu.skip_crds = skip_crds
        with warnings.catch_warnings():  # kmock reads its bundled data with a deprecated API
            warnings.simplefilter("ignore", DeprecationWarning)
            emu.resources.load_bundled()
        # An empty OpenAPI v2 document (a valid, empty protobuf): Helm validates hooks against the
        # server's OpenAPI and skips kinds the document does not describe.
        emu["get /openapi/v2"] << b""
        # Watch streams as JSON (kmock sends application/octet-stream, which client-go cannot decode).
        (emu.fallback ** 1)[kmock.action.WATCH] << kmock.headers({"Content-Type": "application/json"}) << emu._serve_watch
        for key, (kind, namespaced) in FOREIGN_RESOURCES.items():
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


class HelmFailed(RuntimeError):
    """Helm refused the chart or the values (the message is Helm's)."""


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    text = proc.stderr.strip() or proc.stdout.strip()
    return text.splitlines()[-1] if text else f"exit {proc.returncode}"


def _helm(args: list[str], kubeconfig: pathlib.Path | None = None, timeout: float = 60) -> str:
    """Run the real helm binary; releases live in memory (HELM_DRIVER=memory, starting from none)."""
    no_releases = pathlib.Path("/tmp/splatops-helm-no-releases.yaml")
    no_releases.write_text("[]\n")
    env = {"HELM_DRIVER": "memory", "HELM_MEMORY_DRIVER_DATA": str(no_releases), "PATH": "/usr/bin:/bin", "HOME": "/tmp", "HELM_CACHE_HOME": "/tmp/helm-cache",
           "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run([str(HELM_BIN), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise HelmFailed(_last_line(proc))
    return proc.stdout


def _sdkpy(args: list[str], timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run(
        [str(HELM_PYTHON), str(TOOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"HELM_DRIVER": "memory", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    if proc.returncode != 0:
        raise HelmFailed(_last_line(proc))
    return json.loads(proc.stdout)


def _install(config: pathlib.Path, chart: pathlib.Path, values: dict[str, Any], namespace: str, release: str,
             skip_crds: bool) -> tuple[str, list[dict[str, Any]]]:
    """`helm install` into the emulator; the release's manifest and its hooks in Helm's order."""
    if not HELM_BIN.exists():
        out = _sdkpy(["render", str(config), str(chart), json.dumps(values), namespace, release])
        return out["manifest"], out["hooks"]
    values_file = config.with_name("values.json")
    values_file.write_text(json.dumps(values))
    args = ["install", release, str(chart), "-n", namespace, "-f", str(values_file), "--take-ownership", "-o", "json"]
    release_json = json.loads(_helm([*args, *(["--skip-crds"] if skip_crds else [])], config))
    hooks = sorted(release_json.get("hooks") or [], key=lambda h: (int(h.get("weight") or 0), h.get("name", "")))
    return release_json.get("manifest", ""), hooks


def render_manifest(
    tmp: pathlib.Path,
    values: dict[str, Any] | None = None,
    namespace: str = "splatops-system",
    release: str = "splatops",
    chart: pathlib.Path = CHART,
    skip_crds: bool | None = None,
) -> str:
    """Install the chart with real Helm into a fresh emulator; return what `helm template` would
    print: the release's manifest exactly as Helm produced it, then its hooks' manifests.

    skip_crds defaults to what the chart's docs ask for: `--skip-crds` with crds.templated.
    """
    if skip_crds is None:
        skip_crds = bool(((values or {}).get("crds") or {}).get("templated"))
    with emulator(skip_crds=skip_crds and not HELM_BIN.exists()) as url:
        config = kubeconfig(url, tmp / "kubeconfig.yaml")
        manifest, hooks = _install(config, chart, values or {}, namespace, release, skip_crds)
    return manifest + "".join(f"---\n# Source: {h['path']}\n{h['manifest'].strip()}\n" for h in hooks)


def render(tmp: pathlib.Path, values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_manifest(tmp, values, **kwargs)) if doc]


def lint_problems(chart: pathlib.Path = CHART) -> list[str]:
    """Helm lint's warnings and errors for the chart (empty when clean)."""
    if not HELM_BIN.exists():
        result = _sdkpy(["lint", str(chart)])
        return [f"{m['Severity']}: {m}" for m in result["Messages"] if m["Severity"] >= 2] + list(result["Errors"] or [])
    try:
        out = _helm(["lint", "--strict", str(chart)])
    except HelmFailed as failed:
        return [str(failed)]
    return [line for line in out.splitlines() if line.startswith(("[WARNING]", "[ERROR]"))]


# The values files of docs/eks.md's three setups (`helm install -f examples/eks/<name>.yaml`).
EKS_VALUES = ("managed-node-group", "karpenter", "auto-mode")

# Named value sets the chart is rendered with (each test picks the ones it checks).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "single-replica": {"operator": {"replicas": 1}, "podDisruptionBudget": {"enabled": False}},
    "gateway": {"gateway": {"enabled": True, "sceneClaimName": "scenes", "trainingNamespace": "splats"}},
    # Everything the gateway's security offers, with its NetworkPolicies and the operator's.
    "gateway-secured": {
        "gateway": {"enabled": True, "sceneClaimName": "scenes", "trainingNamespace": "splats",
                    "auth": {"token": "s3cret", "proxyHeader": "X-Auth-Request-User"},
                    "rateLimit": {"postsPerMinute": 2, "burst": 4}},
        "networkPolicy": {
            "enabled": True,
            "gateway": {"allowedNamespaces": ["ingress-nginx"], "allowedPods": [{"app": "oauth2-proxy"}]},
            "metrics": {"allowedNamespaces": ["monitoring"]},
            "egress": {"apiServerCIDRs": ["10.0.0.10/32"], "apiServerPorts": [443]},
        },
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "noProgressMinutes": 20},
            "dashboard": {"enabled": True},
        }
    },
    # kube-prometheus-stack out of the box: its release label on all three objects, one value.
    "monitoring-kps": {"monitoring": {"additionalLabels": {"release": "kube-prometheus-stack"},
                                      "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                      "prometheusRule": {"enabled": True}}},
    "rules-only": {"monitoring": {"prometheusRule": {"enabled": True}}},
    # Installed with --skip-crds, as the chart's docs ask (see render_manifest).
    "templated-crds": {"crds": {"templated": True}},
    "templated-crds-namespaced": {"crds": {"templated": True}, "watch": {"namespaces": ["team-a"]}},
    "trainer-defaults": {"trainer": {"backoffLimit": 0, "activeDeadlineSeconds": 0, "ttlSecondsAfterFinished": 1000000}},
    "pod-template": {"trainer": {"podTemplate": {
        "serviceAccountName": "splat-s3", "imagePullSecrets": [{"name": "registry"}],
        "env": [{"name": "AWS_REGION", "value": "us-east-1"}],
        "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}}},
    **{f"eks-{name}": yaml.safe_load((ROOT / "examples" / "eks" / f"{name}.yaml").read_text()) for name in EKS_VALUES},
    **{
        f"preset-{name}": {"gpu": {"preset": name}}
        for name in ("eks", "gfd", "eks-managed", "karpenter", "eks-auto", "gke-l4", "aks-a10")
    },
}


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(objects, kind, name_suffix)
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
