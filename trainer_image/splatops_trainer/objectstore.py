"""Scenes from and outputs to S3 (`spec.scene.source`, `spec.output.uri`), with boto3.

Credentials come only from the pod's identity, through boto3's standard chain (IRSA's web
identity token, EKS Pod Identity's container credentials, AWS_* env, instance profile); the
endpoint from boto3's own AWS_ENDPOINT_URL(_S3) (S3-compatible stores, the tests' moto server).

- `fetch_scene`: every object under the prefix into the scene directory, each to a temp file
  beside its target and renamed when complete, so an interrupted fetch leaves only whole files; a
  manifest (`.splatops-source.json`: key -> ETag and size) makes the next run download only what
  changed since.
- `upload_outputs`: each output with boto3's managed transfer (multipart above 8 MiB, aborted on
  failure): S3 shows an object under its key only once its upload completes, so a failed run
  leaves nothing new there (an earlier run's objects stay until replaced whole).

A missing bucket or prefix and access denied are bad input (exit 2: retrying cannot help);
network errors are retried by botocore (standard mode, 5 attempts), then exit 1 (the Job retries).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from splatops import contract

from . import atomic
from .errors import TrainerError

log = logging.getLogger(__name__)

MANIFEST = ".splatops-source.json"
R = contract.Reason
_MISSING_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}


@dataclasses.dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, uri: str) -> "Location":
        bucket, _, prefix = uri.removeprefix(contract.S3_SCHEME).partition("/")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def uri(self, rel: str = "") -> str:
        return f"{contract.S3_SCHEME}{self.bucket}/{self.prefix}{rel}"


def client() -> Any:
    import boto3
    from botocore.config import Config

    # A session of its own: boto3's default one keeps the credentials it first resolved.
    return boto3.session.Session().client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def _error(exc: Exception, where: str, missing: contract.Reason) -> TrainerError | None:
    """A TrainerError for what retrying cannot fix; None for the rest (transient: exit 1)."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return TrainerError(R.OBJECT_STORE_ACCESS_DENIED, f"No AWS credentials for {where}: give the trainer pod an "
                            "identity (spec.podTemplate.serviceAccountName bound through IRSA or EKS Pod Identity).")
    if not isinstance(exc, ClientError):
        return None
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _MISSING_BUCKET:
        return TrainerError(missing, f"{where}: the bucket does not exist ({code}).")
    if code in _DENIED:
        return TrainerError(R.OBJECT_STORE_ACCESS_DENIED, f"Access denied to {where} ({code}): allow the trainer's "
                            "IAM role s3:ListBucket and s3:GetObject (scene) or s3:PutObject (outputs) there.")
    return None


def _objects(s3: Any, loc: Location) -> list[dict[str, Any]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix)
    return [o for page in pages for o in page.get("Contents") or [] if not o["Key"].endswith("/")]


def _safe_rel(loc: Location, key: str) -> str:
    rel = key[len(loc.prefix):]
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise TrainerError(R.SCENE_SOURCE_NOT_FOUND, f"{loc.uri()}: object key {key!r} would leave the scene directory.")
    return rel


@dataclasses.dataclass(frozen=True)
class Fetched:
    downloaded: list[str]
    unchanged: list[str]
    bytes: int


def fetch_scene(uri: str, dest: Path, s3: Any = None) -> Fetched:
    """Make `dest` hold every object under `uri` (only what changed since the last fetch)."""
    loc, s3 = Location.parse(uri), s3 or client()
    try:
        objects = _objects(s3, loc)
    except Exception as exc:
        raise _error(exc, loc.uri(), R.SCENE_SOURCE_NOT_FOUND) or exc
    if not objects:
        raise TrainerError(R.SCENE_SOURCE_NOT_FOUND, f"{contract.MSG_NO_IMAGES}: no objects under {loc.uri()} "
                           "(expected images/ and colmap/sparse_initial/ there).")
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / MANIFEST
    seen = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    downloaded, unchanged, total = [], [], 0
    for obj in objects:
        rel, stamp = _safe_rel(loc, obj["Key"]), {"etag": obj["ETag"], "size": obj["Size"]}
        target = dest / rel
        if seen.get(rel) == stamp and target.is_file() and target.stat().st_size == obj["Size"]:
            unchanged.append(rel)
            continue
        _download(s3, loc, obj["Key"], target)
        seen[rel] = stamp
        atomic.write_json(manifest_path, seen)  # after each file: an interrupted fetch resumes
        downloaded.append(rel)
        total += obj["Size"]
    log.info("scene from %s: %d downloaded (%d bytes), %d unchanged", loc.uri(), len(downloaded), total, len(unchanged))
    return Fetched(downloaded, unchanged, total)


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    # Multipart above 8 MiB, four parts at a time: a pod's fair share of network and memory.
    return TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)


def _download(s3: Any, loc: Location, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.s3-partial")
    try:
        s3.download_file(loc.bucket, key, str(tmp), Config=_transfer_config())
        os.replace(tmp, target)
    except Exception as exc:
        for leftover in target.parent.glob(f"{tmp.name}*"):  # ours and the transfer manager's own temp
            leftover.unlink(missing_ok=True)
        raise _error(exc, loc.uri(key[len(loc.prefix):]), R.SCENE_SOURCE_NOT_FOUND) or exc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(out: Path, names: Iterable[str]) -> list[dict[str, Any]]:
    """name, path, bytes and sha256 of each output that exists."""
    return [{"name": name, "path": str((out / name).resolve()), "bytes": (out / name).stat().st_size,
             "sha256": sha256(out / name)} for name in names if (out / name).is_file()]


def upload_outputs(uri: str, out: Path, outputs: Sequence[dict[str, Any]], s3: Any = None) -> list[dict[str, Any]]:
    """Upload each described output to `uri` + its name; returns them with their `uri`."""
    loc, s3, config = Location.parse(uri), s3 or client(), _transfer_config()
    done = []
    for item in outputs:
        target = loc.uri(item["name"])
        try:
            s3.upload_file(str(out / item["name"]), loc.bucket, loc.prefix + item["name"], Config=config,
                           ExtraArgs={"Metadata": {"sha256": item["sha256"]}})
        except Exception as exc:
            raise _error(_cause(exc), target, R.OUTPUT_LOCATION_NOT_FOUND) or exc
        done.append({**item, "uri": target})
    log.info("uploaded %d outputs to %s", len(done), loc.uri())
    return done


def _cause(exc: Exception) -> Exception:
    """boto3's transfer manager wraps the ClientError in S3UploadFailedError: the original."""
    return exc.__context__ if isinstance(exc.__context__, Exception) and type(exc).__name__ == "S3UploadFailedError" else exc
