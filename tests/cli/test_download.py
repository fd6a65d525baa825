"""`splatops download` on a cluster: the reader pod (valid, Pod Security "restricted"), and the
whole flow of `download_via_pod` against the emulator: pod created, waited for, streamed from,
deleted whatever happens, size-checked, written atomically.

The emulator has no exec (websocket) endpoint, so the stream comes from `download_via_pod`'s
`frames` argument: a real async generator of exec-protocol frames (channel byte + payload), the
same shape `exec_frames` yields from the websocket. Everything else is the real code against the
emulator's API.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator, Sequence

import kmock
import kubernetes_validate
import pytest

from splatops import names
from splatops.client import download as dl
from splatops.client.kube import ClientKube, Forbidden, Target, connect
from splatops.controller import jobs
from splatops.local import cluster as c

NS = "default"
K8S_VERSION = "1.33.0"
LONG_NAME = "fox-" + "b" * 70
MB = 1024 * 1024
SUCCESS = bytes([dl.WS_ERROR]) + json.dumps({"metadata": {}, "status": "Success"}).encode()


def failure_status(message: str, code: int = 1) -> bytes:
    return bytes([dl.WS_ERROR]) + json.dumps({
        "metadata": {}, "status": "Failure", "message": message, "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}).encode()


def stdout(data: bytes) -> bytes:
    return bytes([dl.WS_STDOUT]) + data


def stderr(text: str) -> bytes:
    return bytes([dl.WS_STDERR]) + text.encode()


# --- the reader pod ------------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """The Pod Security Standards' "restricted" rules (baseline included) that `pod` breaks."""
    spec, problems = pod["spec"], []
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {kinds}")
    containers = spec.get("containers", []) + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    for ct in containers:
        sc = ct.get("securityContext") or {}
        name = ct["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds {caps['add']}")
        if any(p.get("hostPort") for p in ct.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.mark.parametrize("training", ["fox", LONG_NAME])
def test_reader_pod_is_valid_and_admissible_under_pod_security_restricted(training):
    pod = dl.reader_pod(training, "scenes")
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert restricted_violations(pod) == []
    spec = pod["spec"]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["runAsGroup"] == names.IMAGE_UID == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == sc["runAsGroup"] == names.IMAGE_UID
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["volumes"] == [{"name": names.SCENE_VOLUME,
                                "persistentVolumeClaim": {"claimName": "scenes", "readOnly": True}}]
    assert container["volumeMounts"] == [{"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT, "readOnly": True}]
    assert spec["activeDeadlineSeconds"] > 0 and spec["restartPolicy"] == "Never"
    # Labels are valid label values even for long names: the operator's own value for the training.
    assert pod["metadata"]["labels"][names.LABEL_TRAINING] == jobs.child_labels(training)[names.LABEL_TRAINING]
    assert len(pod["metadata"]["name"]) <= 63


def test_the_checker_catches_what_the_old_pod_had():
    pod = dl.reader_pod("fox", "scenes")
    pod["spec"]["securityContext"] = {"runAsNonRoot": False}
    del pod["spec"]["containers"][0]["securityContext"]
    assert len(restricted_violations(pod)) == 4


# --- receive: frames -> checked file ------------------------------------------------------------


async def frames_of(*frames: bytes, then: BaseException | None = None) -> AsyncIterator[bytes]:
    for frame in frames:
        await asyncio.sleep(0)
        yield frame
    if then is not None:
        raise then


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def test_receive_writes_stdout_with_progress_and_ignores_a_success_status(tmp_path):
    seen = []
    dest = tmp_path / "model.ply"
    got = await dl.receive(frames_of(stdout(b"ply\n"), b"", stdout(b"x" * 10), SUCCESS), dest, what="cat",
                           total=14, progress=lambda done, total: seen.append((done, total)))
    assert got == 14 and dest.read_bytes() == b"ply\n" + b"x" * 10
    assert seen == [(4, 14), (14, 14)]
    assert leftovers(tmp_path) == ["model.ply"]
    assert dest.stat().st_mode & 0o777 != 0o600  # a normal file's mode, not mkstemp's


@pytest.mark.parametrize("frames, message", [
    ((stderr("cat: can't open '/data/fox/gsplat/results.ply': No such file or directory\n"),
      failure_status("command terminated with non-zero exit code: error executing command [cat ...], exit code 1")),
     "No such file or directory"),
    ((stdout(b"partial"), failure_status("command terminated with non-zero exit code: exit code 137", 137)),
     "exit code 137"),
    ((stderr("cat: read error: I/O error\n"),), "I/O error"),  # stderr and no success status
])
async def test_receive_fails_on_a_failed_command_and_leaves_nothing(tmp_path, frames, message):
    dest = tmp_path / "model.ply"
    with pytest.raises(dl.DownloadError, match=message):
        await dl.receive(frames_of(*frames), dest, what="reading results.ply")
    assert leftovers(tmp_path) == []


async def test_receive_on_a_broken_stream_keeps_the_previous_file(tmp_path):
    dest = tmp_path / "model.ply"
    dest.write_bytes(b"the previous download")
    with pytest.raises(ConnectionResetError):
        await dl.receive(frames_of(stdout(b"half of it"), then=ConnectionResetError("peer reset")), dest, what="cat")
    assert dest.read_bytes() == b"the previous download" and leftovers(tmp_path) == ["model.ply"]


async def test_receive_checks_the_size_before_the_rename(tmp_path):
    dest = tmp_path / "model.ply"
    dest.write_bytes(b"the previous download")
    resource = {"status": {"modelSizeMB": 1.0}}
    with pytest.raises(dl.DownloadError, match="size check failed"):
        await dl.receive(frames_of(stdout(b"x" * 1000), SUCCESS), dest, what="cat",
                         verify=lambda n: dl.check_size(resource, n))
    assert dest.read_bytes() == b"the previous download" and leftovers(tmp_path) == ["model.ply"]


# --- download_via_pod against the emulator -------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path):
    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        async with connect(Target(kubeconfig=str(cl.kubeconfig))) as kube:
            yield cl, kube


@pytest.fixture
def dest(tmp_path) -> pathlib.Path:
    """The output file; its directory holds nothing else (to see leftovers)."""
    return tmp_path / "out" / "fox.ply"


def succeeded(name: str = "fox", size_mb: float = 1.5) -> dict:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"scene": {"claimName": "scenes", "path": "scenes/fox"}},
            "status": {"phase": "Succeeded", "modelPath": "scenes/fox/gsplat/results.ply", "modelSizeMB": size_mb}}


def download_pods(cl) -> list[dict]:
    return cl.emulator.list_objects(c.POD_RESOURCE, NS, f"{names.LABEL_COMPONENT}=download")


async def kubelet(cl, phase: str = "Running", delay: float = 0.1) -> dict:
    """Play the kubelet: once the reader pod exists, report it in `phase`."""
    while not (pods := download_pods(cl)):
        await asyncio.sleep(0.02)
    await asyncio.sleep(delay)
    name = pods[0]["metadata"]["name"]
    await cl.emulator.patch(c.POD_RESOURCE, NS, name, {"status": {"phase": phase}}, subresource="status")
    return pods[0]


class Exec:
    """The exec stream of a download: records each call and checks the pod is running by then."""

    def __init__(self, cl, *frames: bytes, then: BaseException | None = None) -> None:
        self.cl, self.frames, self.then, self.calls = cl, frames, then, []

    async def __call__(self, kube: ClientKube, pod: str, command: Sequence[str]) -> AsyncIterator[bytes]:
        self.calls.append((pod, list(command)))
        assert kube.namespace == NS
        assert self.cl.emulator.read(c.POD_RESOURCE, NS, pod)["status"]["phase"] == "Running"
        async for frame in frames_of(*self.frames, then=self.then):
            yield frame


async def test_download_via_pod_streams_into_the_file_and_deletes_the_pod(cluster, dest):
    cl, kube = cluster
    data = (b"ply\n" + bytes(range(256)) * 6144)[:int(1.5 * MB)]  # status says 1.5 MB
    exec_ = Exec(cl, *(stdout(data[i:i + 65536]) for i in range(0, len(data), 65536)), SUCCESS)
    seen = []
    play = asyncio.create_task(kubelet(cl))
    got = await dl.download_via_pod(kube, succeeded(), dest, lambda d, t: seen.append((d, t)), "busybox:test",
                                    frames=exec_, poll_interval=0.05)
    pod = await play
    assert got == len(data) and dest.read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and len(seen) == len(range(0, len(data), 65536))
    assert exec_.calls == [(pod["metadata"]["name"], ["cat", f"{names.SCENE_MOUNT}/scenes/fox/gsplat/results.ply"])]
    # The pod the emulator received is the restricted, read-only reader.
    assert pod["spec"]["containers"][0]["image"] == "busybox:test"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "scenes", "readOnly": True}
    assert restricted_violations(pod) == []
    assert download_pods(cl) == [] and leftovers(dest.parent) == ["fox.ply"]


async def test_download_via_pod_for_a_long_training_name(cluster, dest):
    cl, kube = cluster
    play = asyncio.create_task(kubelet(cl))
    got = await dl.download_via_pod(kube, succeeded(LONG_NAME, size_mb=0.0), dest, frames=Exec(cl, stdout(b"ply\n"), SUCCESS),
                                    poll_interval=0.05)
    pod = await play
    assert got == 4 and pod["metadata"]["labels"][names.LABEL_TRAINING] == jobs.child_labels(LONG_NAME)[names.LABEL_TRAINING]
    assert download_pods(cl) == []


@pytest.mark.parametrize("frames, then, error", [
    ((stdout(b"x" * 1000), SUCCESS), None, "size check failed"),  # training said 1.5 MB
    ((stderr("cat: can't open: No such file or directory\n"), failure_status("exit code 1")), None,
     "No such file or directory"),
    ((stdout(b"x" * 1000),), ConnectionResetError("websocket closed"), "websocket closed"),
])
async def test_download_via_pod_cleans_up_on_failure_and_keeps_the_target(cluster, dest, frames, then, error):
    cl, kube = cluster
    dest.parent.mkdir()
    dest.write_bytes(b"the previous download")
    play = asyncio.create_task(kubelet(cl))
    with pytest.raises((dl.DownloadError, ConnectionResetError), match=error):
        await dl.download_via_pod(kube, succeeded(), dest, frames=Exec(cl, *frames, then=then), poll_interval=0.05)
    await play
    assert download_pods(cl) == []
    assert dest.read_bytes() == b"the previous download" and leftovers(dest.parent) == ["fox.ply"]


async def test_download_via_pod_when_the_pod_never_runs(cluster, dest):
    cl, kube = cluster
    play = asyncio.create_task(kubelet(cl, phase="Failed"))
    exec_ = Exec(cl, SUCCESS)
    with pytest.raises(dl.DownloadError, match=r"ended \(Failed\) before the copy started"):
        await dl.download_via_pod(kube, succeeded(), dest, frames=exec_, poll_interval=0.05)
    await play
    assert exec_.calls == [] and download_pods(cl) == [] and leftovers(dest.parent) == []


async def test_download_via_pod_gives_up_on_a_pod_that_stays_pending(cluster, dest):
    cl, kube = cluster
    exec_ = Exec(cl, SUCCESS)
    with pytest.raises(dl.DownloadError, match="did not start within"):
        await dl.download_via_pod(kube, succeeded(), dest, frames=exec_,
                                  start_timeout=0.3, poll_interval=0.05)
    assert exec_.calls == [] and download_pods(cl) == []


async def test_download_via_pod_cleans_up_when_cancelled(cluster, dest):
    cl, kube = cluster

    async def endless(kube: ClientKube, pod: str, command: Sequence[str]) -> AsyncIterator[bytes]:
        while True:  # a slow transfer the user interrupts (Ctrl-C cancels the task)
            yield stdout(b"x" * 1024)
            await asyncio.sleep(0.01)

    asyncio.create_task(kubelet(cl, delay=0))
    task = asyncio.create_task(dl.download_via_pod(kube, succeeded(), dest, frames=endless,
                                                   poll_interval=0.05))
    while not (dest.parent.exists() and any(p.name.startswith(".fox.ply.") for p in dest.parent.iterdir())):
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert download_pods(cl) == [] and leftovers(dest.parent) == []


async def test_a_rejected_reader_pod_is_a_clear_error(tmp_path, dest):
    """Admission (e.g. Pod Security) refuses the pod: the API's reason, not a KeyError on a Status.

    The emulator serves every write itself, so this API is kmock's bare scaffold answering 403.
    """
    message = 'pods "fox-download-x" is forbidden: violates PodSecurity "restricted:latest"'
    api = kmock.KubernetesScaffold()
    api[f"post /api/v1/namespaces/{NS}/pods"] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "Forbidden", "code": 403}
    async with api, kmock.Server(api) as server:
        kubeconfig = c.write_kubeconfig(tmp_path / "kube" / "kubeconfig", str(server.url).rstrip("/"))
        async with connect(Target(kubeconfig=str(kubeconfig))) as kube:
            with pytest.raises(Forbidden, match="violates PodSecurity"):
                await dl.download_via_pod(kube, succeeded(), dest, frames=Exec(None, SUCCESS))
    assert leftovers(dest.parent) == []


async def test_cli_download_through_the_exec_api_of_a_server_without_it(tmp_path, dest, capsys):
    """`splatops download` end to end on the emulator, whose API has no exec endpoint: the real
    `exec_frames` fails the websocket handshake; the error is clear, the pod is gone, no file."""
    from splatops.cli import main as cli

    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        await cl.emulator.create(c.TRAINING_RESOURCE, {"apiVersion": names.API_VERSION, "kind": names.KIND, **succeeded()})
        await cl.emulator.patch(c.TRAINING_RESOURCE, NS, "fox", {"status": succeeded()["status"]}, subresource="status")
        play = asyncio.create_task(kubelet(cl, delay=0))
        code = await cli.amain(["download", "fox", "-o", str(dest), "--kubeconfig", str(cl.kubeconfig)])
        await play
        assert code == cli.EXIT_FAILED
        err = capsys.readouterr().err
        assert "error: exec into pod fox-download-" in err
        assert download_pods(cl) == [] and leftovers(dest.parent) == []
