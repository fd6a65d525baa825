"""`splatops upload` / `train ./dir`: the uploader pod (Pod Security "restricted") against the
emulator, and the transfer protocol's real shell scripts (tar, sha256sum, mv) run by
`splatops.local.podexec` on a local directory standing in for the claim, as the exec API of a
pod mounting it would: first upload, resume, a corrupted transfer, the pod removed in every outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import random
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import kubernetes_validate
import pytest

from splatops import names
from splatops.cli import main as cli
from splatops.client import download as dl
from splatops.client import upload as up
from splatops.client.kube import ClientKube, Target, connect
from splatops.local import cluster as c
from splatops.local.podexec import exec_local
from tests.cli.test_download import K8S_VERSION, NS, restricted_violations

MARKER = b"CORRUPT-ME"


def make_scene(root: pathlib.Path, *, images: int = 4, colmap: str = "colmap/sparse_initial") -> pathlib.Path:
    rng = random.Random(7)
    (root / "images").mkdir(parents=True)
    for i in range(images):  # sizes around the tar block and read chunk boundaries
        size = [0, 511, 4097, 1_300_000][i % 4] + i
        (root / "images" / f"frame_{i:03d}.jpg").write_bytes(rng.randbytes(size))
    model = root / colmap
    model.mkdir(parents=True)
    for stem in ("cameras", "images", "points3D"):
        (model / f"{stem}.bin").write_bytes(MARKER + rng.randbytes(300))
    return root


def tree(root: pathlib.Path) -> dict[str, str]:
    """{relative path: sha256} of every file (staging leftovers included, to see them)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def scene(tmp_path) -> pathlib.Path:
    return make_scene(tmp_path / "fox")


@pytest.fixture
def volume(tmp_path) -> pathlib.Path:
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.fixture
async def cluster(tmp_path):
    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        async with connect(Target(kubeconfig=str(cl.kubeconfig))) as kube:
            yield cl, kube


def upload_pods(cl) -> list[dict]:
    return cl.emulator.list_objects(c.POD_RESOURCE, NS, f"{names.LABEL_COMPONENT}=upload")


async def kubelet(cl, phase: str = "Running") -> dict:
    """Play the kubelet: once the uploader pod exists, report it in `phase`."""
    while not (pods := upload_pods(cl)):
        await asyncio.sleep(0.02)
    name = pods[0]["metadata"]["name"]
    await cl.emulator.patch(c.POD_RESOURCE, NS, name, {"status": {"phase": phase}}, subresource="status")
    return pods[0]


class PodExec:
    """The exec API of the uploader pod: the command runs on `volume` (the claim); `tamper` may
    rewrite the stdin of the n-th RECEIVE call."""

    def __init__(self, cl, volume: pathlib.Path, tamper=None, on_call: int = 1) -> None:
        self.cl, self.volume, self.tamper, self.on_call = cl, volume, tamper, on_call
        self.calls: list[str] = []

    def __call__(self, kube: ClientKube, pod: str, command: Sequence[str],
                 stdin: AsyncIterable[bytes] | None) -> AsyncIterator[bytes]:
        assert self.cl.emulator.read(c.POD_RESOURCE, NS, pod)["status"]["phase"] == "Running"
        self.calls.append(command[3])
        if stdin is not None and self.tamper and self.calls.count("receive") == self.on_call:
            stdin = self.tamper(stdin)
        return exec_local(self.volume, command, stdin)


async def corrupt(stdin: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stdin:
        yield chunk.replace(MARKER, b"X" * len(MARKER))


async def cut_off(stdin: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stdin:
        yield chunk[:100]
        raise dl.DownloadError("exec stream of pod broke: Connection reset by peer")


async def upload(cl, kube, scene, volume, *, tamper=None, on_call: int = 1, batch_bytes: int = up.BATCH_BYTES):
    play = asyncio.create_task(kubelet(cl))
    seen: list[tuple[int, int]] = []
    exec_ = PodExec(cl, volume, tamper, on_call)
    try:
        result = await up.upload_via_pod(kube, "scenes", up.scene_files(scene), "scenes/fox", image="busybox:test",
                                         progress=lambda d, t: seen.append((d, t)), frames=exec_,
                                         poll_interval=0.05, batch_bytes=batch_bytes)
    finally:
        pod = await play
    return result, seen, exec_, pod


def test_scene_files_leave_out_the_sparse_link_but_follow_links_outside(tmp_path, scene):
    (scene / "sparse").mkdir()
    (scene / "sparse" / "0").symlink_to("../colmap/sparse_initial")  # what the trainer creates
    elsewhere = make_scene(tmp_path / "other")
    (scene / "extra").symlink_to(elsewhere / "colmap")
    rels = [f.rel for f in up.scene_files(scene)]
    assert not any(r.startswith("sparse/") for r in rels)
    assert "extra/sparse_initial/cameras.bin" in rels and rels.count("colmap/sparse_initial/cameras.bin") == 1


def test_uploader_pod_is_valid_restricted_and_writable():
    pod = up.uploader_pod("scenes")
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert restricted_violations(pod) == []
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["fsGroup"] == names.IMAGE_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [{"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT}]
    assert spec["volumes"] == [{"name": names.SCENE_VOLUME, "persistentVolumeClaim": {"claimName": "scenes"}}]


@pytest.mark.parametrize("path", ["", "/", "../x", "scenes/../../x"])
def test_a_path_outside_the_volume_is_refused(path):
    with pytest.raises(up.UploadError, match="inside the volume"):
        up.pod_dir(path)


async def test_first_upload_lands_every_file_verified_and_removes_the_pod(cluster, scene, volume):
    cl, kube = cluster
    result, seen, exec_, pod = await upload(cl, kube, scene, volume, batch_bytes=1 << 20)
    assert tree(volume / "scenes" / "fox") == tree(scene)  # nothing else: no staging leftovers
    assert sorted(result.sent) == sorted(tree(scene)) and result.skipped == []
    assert seen[-1] == (result.bytes_sent, result.bytes_sent) == (sum(p.stat().st_size for p in scene.rglob("*") if p.is_file()),) * 2
    assert exec_.calls.count("receive") == exec_.calls.count("commit") == 2  # two batches of ~1 MiB
    assert pod["spec"]["containers"][0]["image"] == "busybox:test" and restricted_violations(pod) == []
    assert upload_pods(cl) == []


async def test_a_rerun_skips_files_already_there_with_the_same_hash(cluster, scene, volume):
    cl, kube = cluster
    await upload(cl, kube, scene, volume)
    (scene / "images" / "frame_001.jpg").write_bytes(b"re-exported")
    result, _, exec_, _ = await upload(cl, kube, scene, volume)
    assert result.sent == ["images/frame_001.jpg"] and len(result.skipped) == len(tree(scene)) - 1
    assert result.bytes_sent == len(b"re-exported")
    assert tree(volume / "scenes" / "fox") == tree(scene) and upload_pods(cl) == []


async def test_an_interrupted_upload_keeps_whole_verified_files_and_resumes(cluster, scene, volume):
    cl, kube = cluster
    with pytest.raises(up.UploadError, match="broke"):  # the second batch's stream breaks
        await upload(cl, kube, scene, volume, tamper=cut_off, on_call=2, batch_bytes=1 << 20)
    assert upload_pods(cl) == []
    dest = volume / "scenes" / "fox"
    landed = {k: v for k, v in tree(dest).items() if not k.startswith(up.STAGE_PREFIX)}
    assert landed and all(tree(scene)[k] == v for k, v in landed.items())  # only whole, correct files
    assert len(landed) < len(tree(scene))
    result, _, _, _ = await upload(cl, kube, scene, volume)
    assert sorted(result.skipped) == sorted(landed) and sorted(result.sent) == sorted(set(tree(scene)) - set(landed))
    assert tree(dest) == tree(scene)  # the stale staging directory is gone too


async def test_a_corrupted_transfer_is_detected_and_nothing_of_the_batch_kept(cluster, scene, volume):
    cl, kube = cluster
    with pytest.raises(up.UploadError, match=r"sha256 check failed .*colmap/sparse_initial/cameras.bin"):
        await upload(cl, kube, scene, volume, tamper=corrupt)
    assert upload_pods(cl) == []
    assert not any(k.startswith("colmap") or k.startswith("images") for k in tree(volume / "scenes" / "fox"))


async def test_the_pod_is_removed_when_the_upload_is_cancelled(cluster, scene, volume):
    cl, kube = cluster
    started = asyncio.Event()

    async def endless(stdin: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in stdin:
            yield chunk[:1]
            started.set()
            await asyncio.Event().wait()  # a stalled transfer the user interrupts (Ctrl-C)

    task = asyncio.create_task(upload(cl, kube, scene, volume, tamper=endless))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upload_pods(cl) == []


@pytest.mark.parametrize("remove, message", [
    ("images", "No images found"),
    # (no colmap/: accepted, the trainer reconstructs the model from the photos; spec.reconstruct)
])
async def test_cli_refuses_a_scene_the_trainer_would_refuse(cluster, scene, capsys, remove, message):
    cl, _ = cluster
    for p in sorted((scene / remove).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    code = await cli.amain(["upload", str(scene), "--pvc", "scenes", "--kubeconfig", str(cl.kubeconfig)])
    assert code == cli.EXIT_FAILED and message in capsys.readouterr().err
    assert upload_pods(cl) == []


async def test_cli_train_a_local_directory_uploads_then_trains(tmp_path, volume, capsys, monkeypatch):
    """`splatops train ./fox --pvc scenes` on `splatops local`'s claim (a local directory):
    the scene, with its model in sparse/0, lands in the claim, then the training points at it."""
    scene = make_scene(tmp_path / "work" / "fox", colmap="sparse/0")
    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        dl.write_local_volumes(cl.kubeconfig.parent, {"scenes": str(volume)})
        monkeypatch.chdir(tmp_path / "work")
        code = await cli.amain(["train", "./fox", "--pvc", "scenes", "--kubeconfig", str(cl.kubeconfig)])
        assert code == cli.EXIT_OK, capsys.readouterr().err
        training = cl.emulator.read(c.TRAINING_RESOURCE, NS, "fox")
    assert (training["spec"]["scene"]["claimName"], training["spec"]["scene"]["path"]) == ("scenes", "fox")
    assert tree(volume / "fox") == tree(scene)
    out = capsys.readouterr().out
    assert "scenes:fox: 7 file(s) uploaded" in out and "created" in out


# --- through the exec API's websocket: the emulator serving pods/exec as a kubelet would ----------

PVC_RESOURCE = "v1/persistentvolumeclaims"


async def test_cli_upload_and_download_through_the_exec_websocket(tmp_path, scene, volume, capsys):
    """`splatops upload` and `splatops download` end to end with the real exec client
    (`download.exec_frames`, stdin included): the emulator serves pods/exec over a websocket in
    the v4 channel protocol and runs the command on the claim's directory."""
    async with c.running_cluster(tmp_path / "kube" / "kubeconfig") as cl:
        cl.emulator.exec_volumes = {"scenes": str(volume)}
        await cl.emulator.create(PVC_RESOURCE, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                                "metadata": {"name": "scenes", "namespace": NS}, "spec": {}})
        argv = ["upload", str(scene), "--pvc", "scenes", "--path", "scenes/fox", "--kubeconfig", str(cl.kubeconfig)]
        play = asyncio.create_task(kubelet(cl))
        assert await cli.amain(argv) == cli.EXIT_OK, capsys.readouterr().err
        await play
        assert tree(volume / "scenes" / "fox") == tree(scene) and upload_pods(cl) == []
        assert "scenes:scenes/fox: 7 file(s) uploaded" in capsys.readouterr().out

        play = asyncio.create_task(kubelet(cl))  # a rerun sends nothing
        assert await cli.amain(argv) == cli.EXIT_OK
        await play
        assert "0 file(s) uploaded (0.00 MB, sha256 checked), 7 already there" in capsys.readouterr().out

        model = volume / "scenes" / "fox" / "gsplat" / "results.ply"
        model.parent.mkdir(parents=True)
        model.write_bytes(b"ply\n" + bytes(range(256)) * 4096)
        status = {"phase": "Succeeded", "modelPath": "scenes/fox/gsplat/results.ply",
                  "modelSizeMB": model.stat().st_size / 1048576}
        await cl.emulator.create(c.TRAINING_RESOURCE, {"apiVersion": names.API_VERSION, "kind": names.KIND,
                                                       "metadata": {"name": "fox", "namespace": NS},
                                                       "spec": {"scene": {"claimName": "scenes", "path": "scenes/fox"}}})
        await cl.emulator.patch(c.TRAINING_RESOURCE, NS, "fox", {"status": status}, subresource="status")
        play = asyncio.create_task(dl_kubelet(cl))
        out = tmp_path / "fox.ply"
        assert await cli.amain(["download", "fox", "-o", str(out), "--kubeconfig", str(cl.kubeconfig)]) == cli.EXIT_OK
        await play
        assert out.read_bytes() == model.read_bytes()


async def dl_kubelet(cl) -> None:
    while not (pods := cl.emulator.list_objects(c.POD_RESOURCE, NS, f"{names.LABEL_COMPONENT}=download")):
        await asyncio.sleep(0.02)
    await cl.emulator.patch(c.POD_RESOURCE, NS, pods[0]["metadata"]["name"], {"status": {"phase": "Running"}},
                            subresource="status")
