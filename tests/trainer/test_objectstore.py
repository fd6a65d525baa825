"""Scenes from and outputs to S3, against a real S3-compatible server the tests start (moto's
server, over HTTP on 127.0.0.1): fetch, refetch of only what changed, a missing bucket or prefix,
access denied, an interrupted transfer (the server stopped mid-object), multipart uploads that
leave nothing at the key until complete, and the trainer process end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import moto.server as moto_server
import pytest

from splatops import contract
from splatops_trainer import objectstore
from splatops_trainer.errors import TrainerError

R = contract.Reason
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """moto's S3 server on a loopback port; its state outlives a stop (moto keeps it in-process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture
def s3(monkeypatch):
    server = Server()
    for key, value in {**CREDS, "AWS_ENDPOINT_URL_S3": server.url}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield server
    server.stop()


def bucket() -> str:
    name = f"scenes-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def put_tree(root: Path, name: str, prefix: str) -> dict[str, str]:
    client, digests = boto3.client("s3"), {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        client.upload_file(str(path), name, prefix + rel)
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != objectstore.MANIFEST}


# --- the scene -----------------------------------------------------------------------------------


def test_fetch_then_refetch_only_what_changed(s3, synthetic_scene, tmp_path) -> None:
    name = bucket()
    digests = put_tree(synthetic_scene, name, "scenes/fox/")
    dest = tmp_path / "claim" / "fox"
    first = objectstore.fetch_scene(f"s3://{name}/scenes/fox/", dest)
    assert tree(dest) == digests and sorted(first.downloaded) == sorted(digests) and first.unchanged == []
    again = objectstore.fetch_scene(f"s3://{name}/scenes/fox", dest)  # no trailing slash: the same prefix
    assert again.downloaded == [] and sorted(again.unchanged) == sorted(digests)
    boto3.client("s3").put_object(Bucket=name, Key="scenes/fox/images/new.png", Body=b"\x89PNG new")
    third = objectstore.fetch_scene(f"s3://{name}/scenes/fox/", dest)
    assert third.downloaded == ["images/new.png"] and (dest / "images" / "new.png").read_bytes() == b"\x89PNG new"


def test_missing_bucket_is_bad_input(s3, tmp_path) -> None:
    with pytest.raises(TrainerError) as err:
        objectstore.fetch_scene("s3://no-such-bucket-here/fox/", tmp_path / "fox")
    assert err.value.reason is R.SCENE_SOURCE_NOT_FOUND and err.value.exit_code == contract.ExitCode.INVALID_INPUT
    assert "s3://no-such-bucket-here/fox/: the bucket does not exist (NoSuchBucket)" in err.value.message
    assert not (tmp_path / "fox").exists()


def test_missing_prefix_is_bad_input(s3, tmp_path) -> None:
    name = bucket()
    with pytest.raises(TrainerError) as err:
        objectstore.fetch_scene(f"s3://{name}/nothing/here/", tmp_path / "fox")
    assert err.value.reason is R.SCENE_SOURCE_NOT_FOUND and contract.MSG_NO_IMAGES in err.value.message
    assert f"no objects under s3://{name}/nothing/here/" in err.value.message


def test_an_interrupted_fetch_keeps_whole_files_only_and_resumes(s3, synthetic_scene, tmp_path, monkeypatch) -> None:
    name = bucket()
    big = tmp_path / "src" / "images" / "zz_big.png"
    shutil.copytree(synthetic_scene, tmp_path / "src")
    big.write_bytes(os.urandom(48 << 20))
    digests = put_tree(tmp_path / "src", name, "fox/")
    dest = tmp_path / "claim" / "fox"
    partial = dest / "images" / ".zz_big.png.s3-partial"

    def partials() -> list[Path]:
        return list(partial.parent.glob(partial.name + "*")) if partial.parent.exists() else []
    failure: list[BaseException] = []

    def fetch() -> None:
        try:
            objectstore.fetch_scene(f"s3://{name}/fox/", dest)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failure.append(exc)

    worker = threading.Thread(target=fetch)
    worker.start()
    deadline = time.monotonic() + 60
    while not partials() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    s3.stop()  # the big object's later parts find no server
    worker.join(120)
    assert failure and not isinstance(failure[0], TrainerError), failure  # transient: exit 1, the Job retries
    assert partials() == [] and not (dest / "images" / "zz_big.png").exists()
    kept = tree(dest)
    assert kept and all(digests[k] == v for k, v in kept.items())  # only whole, correct files
    restarted = Server()  # same in-process state, another port
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", restarted.url)
    try:
        resumed = objectstore.fetch_scene(f"s3://{name}/fox/", dest)
    finally:
        restarted.stop()
    assert "images/zz_big.png" in resumed.downloaded and sorted(resumed.unchanged) == sorted(kept)
    assert tree(dest) == digests


# --- access denied: a moto server enforcing IAM, the trainer's user having no S3 policy ------------


@pytest.fixture
def iam_server(tmp_path):
    port = free_port()
    env = {**os.environ, **CREDS, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}  # setup calls, then IAM is enforced
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_access_denied_is_bad_input(iam_server, tmp_path, monkeypatch) -> None:
    admin = dict(endpoint_url=iam_server, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    boto3.client("s3", **admin).create_bucket(Bucket="private-scenes")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="trainer")
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", iam_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(TrainerError) as err:
        objectstore.fetch_scene("s3://private-scenes/fox/", tmp_path / "fox")
    assert err.value.reason is R.OBJECT_STORE_ACCESS_DENIED and err.value.exit_code == contract.ExitCode.INVALID_INPUT
    assert "Access denied to s3://private-scenes/fox/ (AccessDenied)" in err.value.message
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.ply").write_bytes(b"ply\n")
    with pytest.raises(TrainerError) as err:
        objectstore.upload_outputs("s3://private-scenes/runs/fox/", out, objectstore.describe(out, ["results.ply"]))
    assert err.value.reason is R.OBJECT_STORE_ACCESS_DENIED


# --- the outputs ---------------------------------------------------------------------------------


def outputs_dir(tmp_path: Path, size: int = 20 << 20) -> Path:
    out = tmp_path / "gsplat"
    (out / "results").mkdir(parents=True)
    (out / "results.ply").write_bytes(b"ply\n" + os.urandom(size))
    (out / "config.json").write_text(json.dumps({"scene_id": "fox"}))
    (out / "results" / "training_log.txt").write_text("Training complete\n")
    return out


def test_outputs_upload_multipart_with_their_sha256(s3, tmp_path) -> None:
    name, out = bucket(), outputs_dir(tmp_path)
    described = objectstore.describe(out, ["results.ply", "config.json", "results/training_log.txt", "missing.txt"])
    uploaded = objectstore.upload_outputs(f"s3://{name}/runs/fox/", out, described)
    client = boto3.client("s3")
    assert [o["uri"] for o in uploaded] == [f"s3://{name}/runs/fox/{n}" for n in ("results.ply", "config.json", "results/training_log.txt")]
    for item in uploaded:
        obj = client.get_object(Bucket=name, Key=f"runs/fox/{item['name']}")
        body = obj["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"] == obj["Metadata"]["sha256"]
        assert len(body) == item["bytes"]
    assert "-" in client.head_object(Bucket=name, Key="runs/fox/results.ply")["ETag"]  # a multipart upload


def test_missing_output_bucket_is_bad_input(s3, tmp_path) -> None:
    out = outputs_dir(tmp_path, size=10)
    with pytest.raises(TrainerError) as err:
        objectstore.upload_outputs("s3://no-such-output-bucket/runs/", out, objectstore.describe(out, ["results.ply"]))
    assert err.value.reason is R.OUTPUT_LOCATION_NOT_FOUND and err.value.exit_code == contract.ExitCode.INVALID_INPUT


def test_an_interrupted_upload_leaves_nothing_at_the_key(s3, tmp_path, monkeypatch) -> None:
    name, out = bucket(), outputs_dir(tmp_path, size=64 << 20)
    failure: list[BaseException] = []
    started = threading.Event()

    def upload() -> None:
        try:
            started.set()
            objectstore.upload_outputs(f"s3://{name}/runs/fox/", out, objectstore.describe(out, ["results.ply"]))
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    worker = threading.Thread(target=upload)
    worker.start()
    started.wait()
    admin = boto3.client("s3")
    deadline = time.monotonic() + 60
    while not admin.list_multipart_uploads(Bucket=name).get("Uploads") and time.monotonic() < deadline:
        time.sleep(0.01)
    s3.stop()  # mid-upload
    worker.join(120)
    assert failure and not isinstance(failure[0], TrainerError), failure
    restarted = Server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", restarted.url)
    try:
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=name).get("Contents") or []]
    finally:
        restarted.stop()
    assert keys == []


# --- the trainer process, end to end ------------------------------------------------------------


def trainer(scene_dir: Path, term: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splatops_trainer", "--scene-dir", str(scene_dir), "--metrics-port", "0", *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, contract.ENV_TERMINATION_LOG: str(term), **env})


def test_trainer_fetches_the_scene_and_uploads_its_outputs(s3, synthetic_scene, tmp_path) -> None:
    """`splatops-train` with SPLATOPS_SCENE_SOURCE and SPLATOPS_OUTPUT_URI, as the operator's Job
    sets them: the scene comes from S3 into the (empty) scene directory on the claim, a short CPU
    training runs, and results.ply, config.json and training_log.txt land in S3, listed with their
    sha256 in the termination message."""
    name = bucket()
    put_tree(synthetic_scene, name, "scenes/fox/")
    scene_dir, term = tmp_path / "claim" / "fox", tmp_path / "term"
    proc = trainer(scene_dir, term, "--max-steps", "3", "--progress-every", "1", "--eval-every", "0",
                   "--checkpoint-every", "0", "--device", "cpu", "--sh-degree", "0",
                   **{contract.ENV_SCENE_SOURCE: f"s3://{name}/scenes/fox/", contract.ENV_OUTPUT_URI: f"s3://{name}/runs/fox/"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = contract.parse_result(term.read_text())
    assert result.succeeded
    by_file = {o["file"]: o for o in result.outputs}
    assert {contract.RESULT_PLY, contract.CONFIG_FILE, contract.TRAINING_LOG} <= set(by_file)
    client = boto3.client("s3")
    for file, item in by_file.items():  # every output, the model formats and preview too
        body = client.get_object(Bucket=name, Key=f"runs/fox/{file}")["Body"].read()
        local = scene_dir / contract.OUTPUT_DIR / file
        assert item["uri"] == f"s3://{name}/runs/fox/{file}" and item["bytes"] == local.stat().st_size
        assert hashlib.sha256(body).hexdigest() == item["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert b"Training complete" in client.get_object(Bucket=name, Key="runs/fox/results/training_log.txt")["Body"].read()


def test_trainer_with_a_missing_scene_bucket_exits_2(s3, tmp_path) -> None:
    term = tmp_path / "term"
    proc = trainer(tmp_path / "claim" / "fox", term, **{contract.ENV_SCENE_SOURCE: "s3://no-such-scene-bucket/fox/"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    result = contract.parse_result(term.read_text())
    assert result.reason == R.SCENE_SOURCE_NOT_FOUND.value and "NoSuchBucket" in result.error
