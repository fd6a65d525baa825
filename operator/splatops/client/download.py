"""`splatops download`: stream results.ply out of the scene volume, with a size check.

On a cluster the volume is only reachable from a pod: like `kubectl cp`, a short-lived pod
mounts the claim read-only and the exec API streams `cat` of the file over a websocket. When the
volume is a local directory (`splatops local` records claim -> directory in `volumes.json` next
to its kubeconfig), the file is copied directly.

Either way the bytes go to a temp file beside the target, the size is checked against the
training's `status.modelSizeMB`, and only then is the temp file renamed to the target: a failed or
short download never leaves a partial file under the target's name (nor replaces an older one).

The cluster path is split so that all but the websocket itself is testable: `exec_frames` (the
only part that talks the exec protocol) yields the raw frames, `receive` turns any async iterable
of frames into the checked file, and `download_via_pod` runs pod creation, waiting, streaming and
cleanup with `exec_frames` as a replaceable argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import posixpath
import secrets
import sys
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from splatops import names
from splatops.api.pods import child_labels, restricted_container_security
from splatops.client import original
from splatops.client.kube import ClientKube, NotFound

VOLUMES_FILE = "volumes.json"  # {claimName: local directory}, written by `splatops local`
DOWNLOAD_IMAGE = os.environ.get("SPLATOPS_DOWNLOAD_IMAGE", "busybox:1.36")
CHUNK = 1 << 20
WS_STDOUT = 1
WS_STDERR = 2
WS_ERROR = 3

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)
Verify = Callable[[int], None]  # raises DownloadError when the byte count is wrong
ExecFrames = Callable[[ClientKube, str, Sequence[str]], AsyncIterator[bytes]]  # (kube, pod, command)


class DownloadError(RuntimeError):
    pass


def _publish(tmp: str, dest: pathlib.Path) -> None:
    """Give the temp file a normal file's mode (mkstemp makes it 0600), then rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def local_volumes(kubeconfig: str | None) -> dict[str, str]:
    """The claim -> directory map `splatops local` wrote beside the kubeconfig (empty if none)."""
    if not kubeconfig:
        return {}
    path = pathlib.Path(kubeconfig).expanduser().parent / VOLUMES_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_local_volumes(directory: pathlib.Path, volumes: Mapping[str, str]) -> pathlib.Path:
    """Record claim -> directory atomically (temp file + rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".volumes-")
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(volumes), fh, indent=2)
    target = directory / VOLUMES_FILE
    os.replace(tmp, target)
    return target


def local_model_file(resource: Mapping[str, Any], volumes: Mapping[str, str]) -> pathlib.Path | None:
    """results.ply on the local disk when the resource's claim is a local directory."""
    claim = ((resource.get("spec") or {}).get("scene") or {}).get("claimName")
    root = volumes.get(str(claim)) if claim else None
    if root is None:
        return None
    return pathlib.Path(root) / model_path(resource)


def model_path(resource: Mapping[str, Any]) -> str:
    """results.ply of a training, relative to the volume (`original.model_path`)."""
    path = original.model_path(resource)
    if path is None:
        name = (resource.get("metadata") or {}).get("name")
        raise DownloadError(f"training {name!r} reports no model path and has no valid spec to find it by")
    return path


def expected_bytes(resource: Mapping[str, Any]) -> float | None:
    status = resource.get("status") or {}
    size = status.get("modelSizeMB", status.get("modelSizeMb"))
    return float(size) * 1024 * 1024 if isinstance(size, (int, float)) else None


def check_size(resource: Mapping[str, Any], got: int) -> None:
    """Raise DownloadError unless `got` bytes match the training's reported model size."""
    status = resource.get("status") or {}
    size = status.get("modelSizeMB", status.get("modelSizeMb"))
    if not original.size_matches(got, size):
        raise DownloadError(
            f"size check failed: downloaded {got} bytes ({got / 1048576:.2f} MB) but the training "
            f"reported {size} MB; the file may have been replaced or cut short, try again"
        )


class _Sink:
    """Counts what is written and reports it (bytes so far, total)."""

    def __init__(self, out: Any, progress: Progress | None, total: int | None) -> None:
        self.out, self.progress, self.total, self.done = out, progress, total, 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.done += len(data)
        if self.progress:
            self.progress(self.done, self.total)


@contextlib.contextmanager
def _checked_file(dest: pathlib.Path, progress: Progress | None, total: int | None,
                  verify: Verify | None) -> Iterator[_Sink]:
    """Write through the yielded sink into a temp file beside `dest`; verify, then rename it to
    `dest`: no half-written outputs. Any failure removes the temp file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out, progress, total)
            yield sink
        if verify:
            verify(sink.done)
        _publish(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def copy_local(src: pathlib.Path, dest: pathlib.Path, progress: Progress | None = None,
               verify: Verify | None = None) -> int:
    """Copy in chunks to a temp file beside `dest`, verify, then rename: no half-written outputs."""
    if not src.is_file():
        raise DownloadError(f"{src} does not exist (has the training succeeded?)")
    with _checked_file(dest, progress, src.stat().st_size, verify) as sink, src.open("rb") as inp:
        while chunk := inp.read(CHUNK):
            sink.write(chunk)
    return sink.done


def reader_pod(training: str, claim: str, image: str = DOWNLOAD_IMAGE) -> dict[str, Any]:
    """A short-lived pod mounting the claim read-only, idling until we have read the file.

    Admissible under Pod Security "restricted": non-root as the uid the trainer writes files as
    (names.IMAGE_UID), RuntimeDefault seccomp, no privilege escalation, all capabilities dropped,
    read-only root filesystem, no service account token.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{original.dns_label(training, 40)}-download-{secrets.token_hex(3)}",
            "labels": {names.LABEL_NAME: "splatops", names.LABEL_COMPONENT: "download",
                       names.LABEL_MANAGED_BY: "splatops-cli",
                       names.LABEL_TRAINING: child_labels(training)[names.LABEL_TRAINING]},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 3600,  # never outlives a forgotten download
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": names.IMAGE_UID,
                "runAsGroup": names.IMAGE_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "reader",
                "image": image,
                "command": ["sleep", "3600"],
                "securityContext": {
                    **restricted_container_security(),
                    "runAsUser": names.IMAGE_UID,
                    "runAsGroup": names.IMAGE_UID,
                    "privileged": False,
                },
                "volumeMounts": [{"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT, "readOnly": True}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            }],
            "volumes": [{"name": names.SCENE_VOLUME,
                         "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }


async def wait_running(kube: ClientKube, name: str, timeout: float = 300.0, interval: float = 1.0,
                        what: str = "download") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pod = await kube.get_pod(name)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            return
        if phase in ("Failed", "Succeeded"):
            raise DownloadError(f"{what} pod {name} ended ({phase}) before the copy started")
        if loop.time() > deadline:
            waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason")
                       for cs in (pod.get("status") or {}).get("containerStatuses") or []]
            raise DownloadError(f"{what} pod {name} did not start within {timeout:.0f}s ({', '.join(filter(None, waiting)) or phase})")
        await asyncio.sleep(interval)


def exec_status_failure(payload: bytes) -> str | None:
    """The failure in an error-channel message (a metav1.Status), None for Success."""
    text = payload.decode(errors="replace").strip()
    try:
        status = json.loads(text)
    except ValueError:
        return text or None
    if not isinstance(status, dict) or status.get("status") == "Success":
        return None
    return str(status.get("message") or text)


@dataclasses.dataclass
class ExecOutcome:
    """What an exec stream said besides stdout: stderr, and the error channel's verdict."""

    stderr: list[str] = dataclasses.field(default_factory=list)
    failure: str | None = None  # the failure status's message
    succeeded: bool = False  # a Success status arrived

    @property
    def errors(self) -> str:
        return " ".join(filter(None, ["".join(self.stderr).strip(), self.failure])).strip()


async def read_frames(frames: AsyncIterable[bytes], stdout: Callable[[bytes], None]) -> ExecOutcome:
    """Split exec protocol (v4.channel.k8s.io) messages, one channel byte then the payload: stdout
    (1) goes to `stdout`; stderr (2) and the error channel's status (3) into the outcome."""
    outcome = ExecOutcome()
    async for frame in frames:
        if not frame:
            continue
        channel, payload = frame[0], frame[1:]
        if channel == WS_STDOUT:
            stdout(payload)
        elif channel == WS_STDERR:
            outcome.stderr.append(payload.decode(errors="replace"))
        elif channel == WS_ERROR and payload:
            outcome.failure = exec_status_failure(payload)
            outcome.succeeded = outcome.failure is None
    return outcome


async def receive(frames: AsyncIterable[bytes], dest: pathlib.Path, *, what: str,
                  total: float | None = None, progress: Progress | None = None,
                  verify: Verify | None = None) -> int:
    """Write an exec stream's stdout to `dest`: temp file beside it, verify, then rename.

    `frames` are the exec protocol's (v4.channel.k8s.io) messages: one channel byte, then the
    payload; stdout (1) is the file, stderr (2) and the error channel's status (3) say why it
    failed. Any failure (a failure status, stderr output without a success status, a broken
    stream, a wrong size) leaves neither the temp file nor anything new under `dest`.
    """
    with _checked_file(dest, progress, int(total) if total else None, verify) as sink:
        outcome = await read_frames(frames, sink.write)
        if outcome.failure or (outcome.errors and not outcome.succeeded):
            raise DownloadError(f"{what} failed: {outcome.errors}")
    return sink.done


async def exec_frames(kube: ClientKube, pod: str, command: Sequence[str],
                      stdin: AsyncIterable[bytes] | None = None) -> AsyncIterator[bytes]:
    """Run `command` in the pod through the exec API (websocket) and yield its raw frames; `stdin`
    (if any) is sent on channel 0 meanwhile (the command must know when its input ends: the v4
    protocol cannot close stdin).

    The only part of a transfer that needs a real cluster (the emulator has no exec): everything
    it feeds is handled, and tested, in `receive`, `download_via_pod` and `splatops.client.upload`.
    """
    import aiohttp
    from kubernetes_asyncio import client
    from kubernetes_asyncio.stream import WsApiClient

    async with WsApiClient(configuration=kube.configuration) as ws_api:
        core = client.CoreV1Api(ws_api)
        try:
            connecting = await core.connect_get_namespaced_pod_exec(
                pod, kube.namespace, command=list(command), stderr=True, stdin=stdin is not None, stdout=True,
                tty=False, _preload_content=False,
            )
            async with connecting as ws:
                sender = asyncio.create_task(_send_stdin(ws, stdin)) if stdin is not None else None
                try:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            yield msg.data
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            yield msg.data.encode()
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            raise DownloadError(f"exec stream of pod {pod} broke: {ws.exception()}")
                finally:
                    if sender is not None:
                        sender.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sender  # raises what the sender raised (e.g. a file changed)
        except aiohttp.WSServerHandshakeError as exc:
            hint = " (needs RBAC to create pods/exec in the namespace)" if exc.status == 403 else ""
            raise DownloadError(f"exec into pod {pod} refused: {exc.status} {exc.message}{hint}") from None
        except aiohttp.ClientError as exc:
            raise DownloadError(f"exec stream of pod {pod} broke: {exc}") from None


async def _send_stdin(ws: Any, stdin: AsyncIterable[bytes]) -> None:
    try:
        async for chunk in stdin:
            for i in range(0, len(chunk), CHUNK):
                await ws.send_bytes(b"\x00" + chunk[i:i + CHUNK])
    except Exception:
        await ws.close()  # ends the receiving loop; the command would wait for input forever
        raise


async def download_via_pod(kube: ClientKube, resource: Mapping[str, Any], dest: pathlib.Path,
                           progress: Progress | None = None, image: str = DOWNLOAD_IMAGE, *,
                           frames: ExecFrames = exec_frames, start_timeout: float = 300.0,
                           poll_interval: float = 1.0) -> int:
    """Create the reader pod, wait for it to run, stream the file through `frames` into `dest`
    (checked against the training's size), and delete the pod whatever happens."""
    name = resource["metadata"]["name"]
    claim = resource["spec"]["scene"]["claimName"]
    pod = await kube.create_pod(reader_pod(name, claim, image))
    pod_name = pod["metadata"]["name"]
    try:
        await wait_running(kube, pod_name, start_timeout, poll_interval)
        path = posixpath.join(names.SCENE_MOUNT, model_path(resource))
        async with contextlib.aclosing(frames(kube, pod_name, ["cat", path])) as stream:
            return await receive(
                stream, dest, what=f"reading {path} in pod {pod_name}", total=expected_bytes(resource),
                progress=progress, verify=lambda got: check_size(resource, got),
            )
    finally:
        await delete_pod_quietly(kube, pod_name, "download")


async def delete_pod_quietly(kube: ClientKube, pod_name: str, what: str) -> None:
    """Delete a helper pod; a failure only warns: never hide the transfer's own outcome behind it."""
    try:
        await asyncio.shield(kube.delete_pod(pod_name))
    except NotFound:
        pass
    except Exception as exc:
        print(f"warning: could not delete the {what} pod {pod_name} ({exc}); delete it with "
              f"`kubectl delete pod {pod_name} -n {kube.namespace}` (it stops by itself within an hour)",
              file=sys.stderr, flush=True)
