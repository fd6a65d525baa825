"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager
built by scripts/build-tools, with certificates made here by openssl.

No scheduler and no kubelet: `tests/cluster/node.py` binds pods and plays the kubelet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = pathlib.Path(os.environ.get("SPLATOPS_TOOLS") or pathlib.Path.home() / ".cache/splatops/tools")
BIN = TOOLS / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
# The controllers the tests rely on: Jobs, garbage collection, finished-Job TTL, and the
# ServiceAccount controllers (every namespace's `default` account, which pod admission requires).
CONTROLLERS = ",".join(f"{c}-controller" for c in (
    "job", "garbage-collector", "ttl-after-finished", "serviceaccount", "serviceaccount-token", "namespace"))
START_TIMEOUT = 90.0


def missing_binaries() -> list[str]:
    missing = [name for name in BINARIES if not os.access(BIN / name, os.X_OK)]
    return missing + ([] if shutil.which("openssl") else ["openssl (on PATH)"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: pathlib.Path) -> None:
    """A CA; the API server's serving cert; client certs for the admin (system:masters) and the
    fake node's kubelet (also its serving cert); the service-account signing key pair."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=splatops-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    certs = {
        "apiserver": ("/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                      "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"),
        "admin": ("/O=system:masters/CN=admin", ""),
        "kubelet": ("/O=system:nodes/CN=system:node:gpu-a10g-0", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
    }
    for name, (subject, san) in certs.items():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        ext = ["-extfile", f"{name}.ext"] if san else []
        if san:
            (d / f"{name}.ext").write_text(san + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def kubeconfig(server: str, ca: pathlib.Path, *, cert: pathlib.Path | None = None,
               key: pathlib.Path | None = None, token: str | None = None, namespace: str = "default") -> dict:
    user: dict[str, str] = {"token": token} if token else {
        "client-certificate": str(cert), "client-key": str(key)}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
    }


@dataclasses.dataclass
class ControlPlane:
    dir: pathlib.Path
    url: str = ""
    admin_kubeconfig: pathlib.Path = pathlib.Path()
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    def path(self, name: str) -> pathlib.Path:
        return self.dir / name

    def log(self, component: str) -> pathlib.Path:
        return self.dir / f"{component}.log"

    def _start(self, name: str, argv: list[str]) -> None:
        out = open(self.log(name), "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def ssl_context(self, identity: str = "admin") -> ssl.SSLContext:
        """A client TLS context as `admin` (system:masters) or `kubelet` (the node)."""
        ctx = ssl.create_default_context(cafile=str(self.path("ca.crt")))
        ctx.load_cert_chain(str(self.path(f"{identity}.crt")), str(self.path(f"{identity}.key")))
        return ctx

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, context=self.ssl_context(), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def _wait(self, what: str, ok) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ok():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {START_TIMEOUT:.0f} s (logs in {self.dir})")
            time.sleep(0.2)

    def start(self) -> None:
        make_certs(self.dir)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        self._start("etcd", [
            str(BIN / "etcd"), "--data-dir", str(self.path("etcd-data")), "--name", "test",
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn"])
        self._wait("etcd", lambda: _http_ok(f"{etcd}/health"))
        self.url = f"https://127.0.0.1:{api_port}"
        p = self.path
        self._start("kube-apiserver", [
            str(BIN / "kube-apiserver"), "--etcd-servers", etcd,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
            "--tls-cert-file", str(p("apiserver.crt")), "--tls-private-key-file", str(p("apiserver.key")),
            "--client-ca-file", str(p("ca.crt")), "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(p("sa.pub")), "--service-account-signing-key-file", str(p("sa.key")),
            "--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
            "--kubelet-preferred-address-types", "InternalIP",
            "--kubelet-client-certificate", str(p("admin.crt")), "--kubelet-client-key", str(p("admin.key")),
            "--cert-dir", str(p("apiserver-certs"))])
        self.admin_kubeconfig = p("admin.kubeconfig")
        self.admin_kubeconfig.write_text(yaml.safe_dump(kubeconfig(
            self.url, p("ca.crt"), cert=p("admin.crt"), key=p("admin.key"))))
        self._wait("kube-apiserver /readyz", lambda: self.get("/readyz")[0] == 200)
        self._start("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), "--kubeconfig", str(self.admin_kubeconfig),
            "--controllers", CONTROLLERS, "--leader-elect=false", "--secure-port", "0",
            "--service-account-private-key-file", str(p("sa.key")), "--root-ca-file", str(p("ca.crt")),
            "--use-service-account-credentials=false"])
        # Ready once its serviceaccount controller made the default namespace's account.
        self._wait("kube-controller-manager", lambda: self.get(
            "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def kubectl(self, *args: str, check: bool = True, kubeconfig: pathlib.Path | None = None,
                input: str | None = None, timeout: float = 120,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig or self.admin_kubeconfig)}
        result = subprocess.run([str(BIN / "kubectl"), *args], env=env, input=input, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.admin_kubeconfig), "HELM_CACHE_HOME": str(self.path("helm-cache")),
               "HELM_CONFIG_HOME": str(self.path("helm-config")), "HELM_DATA_HOME": str(self.path("helm-data"))}
        result = subprocess.run([str(BIN / "helm"), *args], env=env, text=True, capture_output=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_control_plane(base: pathlib.Path, keep_logs_to: pathlib.Path | None = None) -> Iterator[ControlPlane]:
    """Start the control plane under `base`; stop it after. On an error, and when the caller
    asks (`keep_logs_to`), the component logs are copied there."""
    cp = ControlPlane(base)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        if keep_logs_to is not None:
            keep_logs_to.mkdir(parents=True, exist_ok=True)
            for log in base.glob("*.log"):
                shutil.copy(log, keep_logs_to / log.name)
