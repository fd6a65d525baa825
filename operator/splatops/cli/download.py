"""`splatops download`: stream results.ply out of the scene volume, with a size check.

On a cluster the volume is only reachable from a pod: like `kubectl cp`, a short-lived pod
mounts the claim read-only and the exec API streams `cat` of the file over a websocket. When the
volume is a local directory (`splatops local` records claim -> directory in `volumes.json` next
to its kubeconfig), the file is copied directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import posixpath
import secrets
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from splatops import names
from splatops.cli import original
from splatops.cli.kube import Kube

VOLUMES_FILE = "volumes.json"  # {claimName: local directory}, written by `splatops local`
DOWNLOAD_IMAGE = os.environ.get("SPLATOPS_DOWNLOAD_IMAGE", "busybox:1.36")
CHUNK = 1 << 20
WS_STDOUT = 1
WS_STDERR = 2
WS_ERROR = 3

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


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
    return pathlib.Path(root) / original.model_path_in_volume(resource)


def expected_bytes(resource: Mapping[str, Any]) -> float | None:
    status = resource.get("status") or {}
    size = status.get("modelSizeMB", status.get("modelSizeMb"))
    return float(size) * 1024 * 1024 if isinstance(size, (int, float)) else None


def check_size(resource: Mapping[str, Any], got: int) -> None:
    status = resource.get("status") or {}
    size = status.get("modelSizeMB", status.get("modelSizeMb"))
    if not original.size_matches(got, size):
        raise DownloadError(
            f"size check failed: downloaded {got} bytes ({got / 1048576:.2f} MB) but the training "
            f"reported {size} MB; the file may have been replaced or cut short, try again"
        )


def copy_local(src: pathlib.Path, dest: pathlib.Path, progress: Progress | None = None) -> int:
    """Copy in chunks to a temp file beside `dest`, then rename: no half-written outputs."""
    if not src.is_file():
        raise DownloadError(f"{src} does not exist (has the training succeeded?)")
    total = src.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    done = 0
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            while chunk := inp.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        _publish(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return done


def reader_pod(training: str, claim: str, image: str = DOWNLOAD_IMAGE) -> dict[str, Any]:
    """A short-lived pod mounting the claim read-only, idling until we have read the file."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{original.dns_label(training, 40)}-download-{secrets.token_hex(3)}",
            "labels": {names.LABEL_NAME: "splatops", names.LABEL_COMPONENT: "download",
                       names.LABEL_MANAGED_BY: "splatops-cli", names.LABEL_TRAINING: training},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 3600,  # never outlives a forgotten download
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": False},
            "containers": [{
                "name": "reader",
                "image": image,
                "command": ["sleep", "3600"],
                "volumeMounts": [{"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT, "readOnly": True}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            }],
            "volumes": [{"name": names.SCENE_VOLUME,
                         "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }


async def _wait_running(kube: Kube, name: str, timeout: float = 300.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pod = await kube.get_pod(name)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            return
        if phase in ("Failed", "Succeeded"):
            raise DownloadError(f"download pod {name} ended ({phase}) before the copy started")
        if loop.time() > deadline:
            waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason")
                       for cs in (pod.get("status") or {}).get("containerStatuses") or []]
            raise DownloadError(f"download pod {name} did not start within {timeout:.0f}s ({', '.join(filter(None, waiting)) or phase})")
        await asyncio.sleep(1.0)


async def exec_cat(kube: Kube, pod: str, path: str, dest: pathlib.Path, total: float | None,
                   progress: Progress | None = None) -> int:
    """Stream `cat path` from the pod's exec websocket into a temp file, then rename to dest."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.stream import WsApiClient

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    done, errors = 0, []
    try:
        async with WsApiClient(configuration=kube.configuration) as ws_api:
            core = client.CoreV1Api(ws_api)
            ws = await core.connect_get_namespaced_pod_exec(
                pod, kube.namespace, command=["cat", path], stderr=True, stdin=False, stdout=True,
                tty=False, _preload_content=False,
            )
            with os.fdopen(fd, "wb") as out:
                async with ws as conn:
                    async for msg in conn:
                        data = msg.data if isinstance(msg.data, bytes) else str(msg.data).encode()
                        if not data:
                            continue
                        channel, payload = data[0], data[1:]
                        if channel == WS_STDOUT:
                            out.write(payload)
                            done += len(payload)
                            if progress:
                                progress(done, int(total) if total else None)
                        elif channel in (WS_STDERR, WS_ERROR) and payload:
                            errors.append(payload.decode(errors="replace"))
        failure = [e for e in errors if '"Success"' not in e]
        if failure:
            raise DownloadError(f"reading {path} in pod {pod} failed: {' '.join(failure).strip()}")
        _publish(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return done


async def download_via_pod(kube: Kube, resource: Mapping[str, Any], dest: pathlib.Path,
                           progress: Progress | None = None, image: str = DOWNLOAD_IMAGE) -> int:
    name = resource["metadata"]["name"]
    claim = resource["spec"]["scene"]["claimName"]
    pod = await kube.create_pod(reader_pod(name, claim, image))
    pod_name = pod["metadata"]["name"]
    try:
        await _wait_running(kube, pod_name)
        path = posixpath.join(names.SCENE_MOUNT, original.model_path_in_volume(resource))
        return await exec_cat(kube, pod_name, path, dest, expected_bytes(resource), progress)
    finally:
        await kube.delete_pod(pod_name)
