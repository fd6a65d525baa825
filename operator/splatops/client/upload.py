"""`splatops upload DIR --pvc CLAIM`: copy a scene into a claim, checked file by file, resumable.

On a cluster the claim is only reachable from a pod: a short-lived uploader pod (Pod Security
"restricted", the trainer's uid so the trainer may write beside the files) mounts the claim, and
the exec API runs three small POSIX shell scripts in it (busybox is enough):

1. `MANIFEST`: sha256sum of every file already under the destination: files whose hash matches
   the local one are skipped, so an interrupted upload resumes where it stopped.
2. `RECEIVE` (per batch of files): reads exactly the tar stream's length from stdin into a
   staging directory beside the destination (same filesystem, so renames are atomic) and prints
   sha256sum of what it unpacked. The client compares that manifest with its own.
3. `COMMIT` (per batch, only when every hash matched): renames the staged files to their final
   names. A file therefore appears under its name only complete and verified.

The protocol runs over any `Exec` (command, stdin) -> exec-protocol frames: `exec_frames` on a
cluster, `splatops.local.podexec` for `splatops local`'s directories and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import posixpath
import secrets
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any

from splatops import names
from splatops.client import download as dl
from splatops.client import original
from splatops.client.kube import ClientKube

CHUNK = 1 << 20
BATCH_BYTES = 256 << 20  # one verified commit per batch: an interruption loses at most this much
STAGE_PREFIX = ".splatops-upload-"
BLOCK = 512

Exec = Callable[[Sequence[str], AsyncIterable[bytes] | None], AsyncIterator[bytes]]
Progress = Callable[[int, int], None]  # (bytes sent, total bytes to send)

# $1: destination directory. Stale staging directories of interrupted uploads are removed first.
MANIFEST = f"""set -e
mkdir -p "$1"
cd "$1"
rm -rf ./{STAGE_PREFIX}*
find . -type f | while IFS= read -r f; do sha256sum "$f"; done
"""
# $1: destination, $2: staging name, $3: bytes of tar on stdin.
RECEIVE = """set -e
mkdir -p "$1/$2"
cd "$1/$2"
head -c "$3" | tar -x -f -
find . -type f | while IFS= read -r f; do sha256sum "$f"; done
"""
# $1: destination, $2: staging name.
COMMIT = """set -e
cd "$1/$2"
find . -type f | while IFS= read -r f; do
  mkdir -p "../$(dirname "$f")"
  mv -f "$f" "../$f"
done
cd "$1"
rm -rf "./$2"
"""


class UploadError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class LocalFile:
    rel: str  # posix path inside the scene
    path: pathlib.Path
    size: int
    sha256: str
    mtime: int = 0


def scene_files(scene: pathlib.Path) -> list[LocalFile]:
    """Every regular file under `scene` with its hash. A symlinked folder is copied as a folder
    when it points outside the scene; one pointing inside (the trainer's own
    sparse/0 -> ../colmap/sparse_initial) is left out: its files are uploaded under their real
    path, and the trainer makes the link again."""
    found = []
    inside = scene.resolve()

    def keep(root: str, d: str) -> bool:
        path = pathlib.Path(root) / d
        return not d.startswith(STAGE_PREFIX) and not (path.is_symlink() and path.resolve().is_relative_to(inside))

    for root, dirs, files in os.walk(scene, followlinks=True):
        dirs[:] = sorted(d for d in dirs if keep(root, d))
        for name in sorted(files):
            path = pathlib.Path(root) / name
            if not path.is_file():
                continue
            stat = path.stat()
            found.append(LocalFile(path.relative_to(scene).as_posix(), path, stat.st_size, _sha256(path), int(stat.st_mtime)))
    return found


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_manifest(text: str) -> dict[str, str]:
    """sha256sum's `<hash>  ./<path>` lines -> {path: hash}."""
    result = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            result[posixpath.normpath(name.removeprefix("./"))] = digest.lower()
    return result


def batches(files: Sequence[LocalFile], limit: int = BATCH_BYTES) -> list[list[LocalFile]]:
    out: list[list[LocalFile]] = [[]]
    for f in files:
        if out[-1] and sum(x.size for x in out[-1]) + f.size > limit:
            out.append([])
        out[-1].append(f)
    return [b for b in out if b]


# --- the tar stream (built here so its exact length is known before sending) -----------------------


def _header(f: LocalFile) -> bytes:
    info = tarfile.TarInfo(f.rel)
    info.size, info.mode, info.type, info.mtime = f.size, 0o644, tarfile.REGTYPE, f.mtime
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % BLOCK


def tar_size(files: Sequence[LocalFile]) -> int:
    return sum(len(_header(f)) + f.size + _padding(f.size) for f in files) + 2 * BLOCK


async def tar_stream(files: Sequence[LocalFile], progress: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """The files as one tar archive; raises when a file changed size since it was hashed."""
    for f in files:
        yield _header(f)
        sent = 0
        with f.path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                sent += len(chunk)
                if sent > f.size:
                    break
                yield chunk
                if progress:
                    progress(len(chunk))
                await asyncio.sleep(0)
        if sent != f.size:
            raise UploadError(f"{f.path} changed while uploading ({sent} bytes, expected {f.size}); run the upload again")
        yield b"\0" * _padding(f.size)
    yield b"\0" * (2 * BLOCK)


# --- the protocol --------------------------------------------------------------------------------


async def run(exec_: Exec, command: Sequence[str], what: str, stdin: AsyncIterable[bytes] | None = None) -> str:
    """Run a command through `exec_` and return its stdout; raise UploadError on any failure."""
    out: list[bytes] = []
    try:
        async with contextlib.aclosing(exec_(command, stdin)) as frames:
            outcome = await dl.read_frames(frames, out.append)
    except dl.DownloadError as exc:  # the exec stream itself (refused, broken)
        raise UploadError(f"{what} failed: {exc}") from None
    if outcome.failure or not outcome.succeeded:
        raise UploadError(f"{what} failed: {outcome.errors or 'the exec stream ended without a status'}")
    return b"".join(out).decode(errors="replace")


@dataclasses.dataclass
class Result:
    sent: list[str]
    skipped: list[str]
    bytes_sent: int


async def transfer(exec_: Exec, files: Sequence[LocalFile], dest: str, *, progress: Progress | None = None,
                   batch_bytes: int = BATCH_BYTES) -> Result:
    """Upload `files` to the pod directory `dest`: skip what is there with the same hash, then
    receive, verify and commit batch by batch."""
    remote = parse_manifest(await run(exec_, ["sh", "-c", MANIFEST, "manifest", dest], f"listing {dest}"))
    todo = [f for f in files if remote.get(f.rel) != f.sha256]
    skipped = [f.rel for f in files if remote.get(f.rel) == f.sha256]
    total, done = sum(f.size for f in todo), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if progress:
        progress(0, total)
    for batch in batches(todo, batch_bytes):
        stage = f"{STAGE_PREFIX}{secrets.token_hex(4)}"
        staged = parse_manifest(await run(
            exec_, ["sh", "-c", RECEIVE, "receive", dest, stage, str(tar_size(batch))],
            f"writing {len(batch)} file(s) into {dest}", tar_stream(batch, advance)))
        expected = {f.rel: f.sha256 for f in batch}
        if staged != expected:
            bad = sorted(k for k in expected.keys() | staged.keys() if staged.get(k) != expected.get(k))
            raise UploadError(f"sha256 check failed after the transfer for {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}: nothing of this batch was kept; run the upload again")
        await run(exec_, ["sh", "-c", COMMIT, "commit", dest, stage], f"renaming the files into {dest}")
    return Result([f.rel for f in todo], skipped, total)


# --- the uploader pod ----------------------------------------------------------------------------


def uploader_pod(claim: str, image: str = dl.DOWNLOAD_IMAGE) -> dict[str, Any]:
    """The download's restricted reader pod, with the claim writable (files owned by the trainer's
    uid; fsGroup makes a fresh volume's root writable to it)."""
    pod = dl.reader_pod(f"upload-{claim}", claim, image)
    pod["metadata"]["name"] = f"{original.dns_label(claim, 40)}-upload-{secrets.token_hex(3)}"
    labels = pod["metadata"]["labels"]
    labels[names.LABEL_COMPONENT] = "upload"
    del labels[names.LABEL_TRAINING]
    spec = pod["spec"]
    spec["securityContext"]["fsGroup"] = names.IMAGE_UID
    (container,) = spec["containers"]
    container["name"] = "uploader"
    container["volumeMounts"] = [{"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT}]
    container["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    spec["volumes"] = [{"name": names.SCENE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
    return pod


def pod_dir(path: str) -> str:
    """The destination inside the uploader pod; refuses paths that leave the volume."""
    norm = posixpath.normpath("/" + path.strip("/"))
    if norm == "/" or ".." in path.split("/"):
        raise UploadError(f"--path {path!r} must be a directory inside the volume (e.g. scenes/fox)")
    return names.SCENE_MOUNT + norm


async def upload_via_pod(kube: ClientKube, claim: str, files: Sequence[LocalFile], path: str, *,
                         progress: Progress | None = None, image: str = dl.DOWNLOAD_IMAGE,
                         frames: Any = None, start_timeout: float = 300.0, poll_interval: float = 1.0,
                         batch_bytes: int = BATCH_BYTES) -> Result:
    """Create the uploader pod, wait for it, transfer through its exec API, delete it whatever happens."""
    frames = frames or dl.exec_frames
    dest = pod_dir(path)
    pod = await kube.create_pod(uploader_pod(claim, image))
    pod_name = pod["metadata"]["name"]
    try:
        await dl.wait_running(kube, pod_name, start_timeout, poll_interval, what="upload")

        def exec_(command: Sequence[str], stdin: AsyncIterable[bytes] | None) -> AsyncIterator[bytes]:
            return frames(kube, pod_name, command, stdin)

        return await transfer(exec_, files, dest, progress=progress, batch_bytes=batch_bytes)
    finally:
        await dl.delete_pod_quietly(kube, pod_name, "upload")

