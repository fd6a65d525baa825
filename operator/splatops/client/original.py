"""Pure mappings between GaussianSplatTraining resources and the original pipeline's words.

Shared by `splatops status` and the REST gateway, so both print exactly the original JSON shapes
(`processing` / `complete` / `failed`, see docs/usage.md), and by `splatops train` and the gateway
to build resources and name runs. No I/O here: everything is decidable from the resource.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from splatops import contract, names
from splatops.api import layout
from splatops.api.models import Spec  # the API's single source of truth

# Labels/annotations the CLI and the gateway put on the resources they create.
LABEL_SCENE = f"{names.GROUP}/scene"  # sanitized scene id (a label value), to find a scene's runs
ANNOTATION_SCENE_ID = f"{names.GROUP}/scene-id"  # the scene id exactly as the user gave it
ANNOTATION_LOCAL_DIR = f"{names.GROUP}/local-scene-dir"  # `splatops local`: the scene's local directory
LABEL_CREATED_BY = "app.kubernetes.io/created-by"

MSG_STARTED = "Gaussian Splatting training started in background"
MSG_IN_PROGRESS = "Gaussian Splatting training in progress"

_DNS_LABEL_MAX = 63


def _status(resource: Mapping[str, Any]) -> dict[str, Any]:
    return dict(resource.get("status") or {})


def scene_id_of(resource: Mapping[str, Any]) -> str:
    """The scene id the user knows: our annotation, else the scene directory's name, else the name."""
    meta = resource.get("metadata") or {}
    annotated = (meta.get("annotations") or {}).get(ANNOTATION_SCENE_ID)
    if annotated:
        return str(annotated)
    path = ((resource.get("spec") or {}).get("scene") or {}).get("path") or ""
    base = posixpath.basename(posixpath.normpath(path)) if path else ""
    if base and base not in (".", "/"):
        return base
    return str(meta.get("name", ""))




def model_path(resource: Mapping[str, Any]) -> str | None:
    """results.ply relative to the volume: status.modelPath as the operator reported it (it takes it
    from `splatops.api.layout`), else, before it has (or for a local run's host path), the layout's
    `OutputLocation.model_path` itself. None: no report and no valid spec to compute it from."""
    reported = str(_status(resource).get("modelPath") or "")
    if layout.in_volume(reported):
        return layout.volume_relative(reported)
    location = layout.location_of(resource)
    return location.model_path if location is not None else None


def original_config(resource: Mapping[str, Any]) -> dict[str, Any]:
    """status.config as the original recorded it (scene_id, data_factor, max_steps, timestamp...),
    falling back to the spec while the trainer has not reported one."""
    status = _status(resource)
    if status.get("config"):
        return dict(status["config"])
    spec = resource.get("spec") or {}
    return {
        "scene_id": scene_id_of(resource),
        "data_factor": spec.get("dataFactor", 1),
        "max_steps": spec.get("maxSteps", 30000),
    }


def _progress_text(status: Mapping[str, Any]) -> str:
    progress = status.get("progress") or {}
    if progress.get("message"):
        return str(progress["message"])
    phase = status.get("phase") or "Pending"
    return f"{phase}: {status['message']}" if status.get("message") else str(phase)


def original_status(
    resource: Mapping[str, Any], *, volume_root: str | None = None, scene_id: str | None = None
) -> dict[str, Any]:
    """The original `GET /scene/{id}/train_gsplat/status` JSON for a resource.

    `volume_root`: where the volume is mounted for whoever reads model_path (the gateway's mount);
    None gives the path inside the volume.
    """
    status = _status(resource)
    sid = scene_id or scene_id_of(resource)
    phase = status.get("phase")
    if phase == "Succeeded":
        rel = model_path(resource) or ""
        path = posixpath.join(volume_root, rel) if volume_root else rel
        done = {
            "status": contract.STATUS_COMPLETE,
            "scene_id": sid,
            "model_path": path,
            "model_size_mb": status.get("modelSizeMB", status.get("modelSizeMb")),
            "config": original_config(resource),
            "download_url": f"/scene/{sid}/gsplat/model",
        }
        if status.get("outputs"):  # model formats, preview.png, metrics.jsonl (status.outputs)
            done["outputs"] = [
                {**o, "path": posixpath.join(volume_root, o["path"]) if volume_root else o["path"]}
                for o in status["outputs"] if isinstance(o, dict) and o.get("path")
            ]
        return done
    if phase == "Failed":
        return {
            "status": contract.STATUS_FAILED,
            "scene_id": sid,
            "error": status.get("message") or status.get("reason") or "Training failed",
        }
    return {
        "status": "processing",
        "scene_id": sid,
        "message": MSG_IN_PROGRESS,
        "progress": _progress_text(status),
    }


MSG_RECONSTRUCTION_STARTED = "COLMAP reconstruction started in background"
MSG_RECONSTRUCTION_IN_PROGRESS = "COLMAP reconstruction in progress"


def is_reconstruction(resource: Mapping[str, Any]) -> bool:
    """A reconstruct-only run (the REST API's colmap_ba), not a training."""
    return bool((resource.get("spec") or {}).get("reconstructOnly"))


def reconstruction_run_base(scene_id: str) -> str:
    """colmap_ba runs are `<scene>-colmap`, `<scene>-colmap-2`, ... (next_run_name of this base)."""
    return f"{scene_id}-colmap"


def reconstruction_status(resource: Mapping[str, Any], *, volume_root: str | None = None,
                          scene_id: str | None = None) -> dict[str, Any]:
    """`GET /scene/{id}/colmap_ba/status`: the model's place and numbers once complete."""
    status = _status(resource)
    sid = scene_id or scene_id_of(resource)
    phase = status.get("phase")
    if phase == "Succeeded":
        path = posixpath.join(((resource.get("spec") or {}).get("scene") or {}).get("path") or ".", contract.COLMAP_DIR)
        return {
            "status": contract.STATUS_COMPLETE,
            "scene_id": sid,
            "model_path": posixpath.join(volume_root, path) if volume_root else path,
            "reconstruction": status.get("reconstruction") or {},
            "train_at": f"/scene/{sid}/train_gsplat",
        }
    if phase == "Failed":
        return {"status": contract.STATUS_FAILED, "scene_id": sid,
                "error": status.get("message") or status.get("reason") or "COLMAP reconstruction failed"}
    return {"status": "processing", "scene_id": sid, "message": MSG_RECONSTRUCTION_IN_PROGRESS,
            "progress": _progress_text(status)}


def started_response(scene_id: str, data_factor: int, max_steps: int) -> dict[str, Any]:
    """The original `POST /scene/{id}/train_gsplat` response."""
    return {
        "status": "processing",
        "scene_id": scene_id,
        "message": MSG_STARTED,
        "config": {"data_factor": data_factor, "max_steps": max_steps},
        "check_status_at": f"/scene/{scene_id}/train_gsplat/status",
    }


# --- Names ---------------------------------------------------------------------------------------


def dns_label(text: str, max_len: int = _DNS_LABEL_MAX) -> str:
    """A DNS-1123 label from any scene id: lower case, [a-z0-9-], no leading/trailing '-'."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:max_len].strip("-")
    return label or "scene"


def run_name(scene_id: str, run: int) -> str:
    """`<scene>` for the first run, `<scene>-<n>` after: earlier results keep their resources."""
    suffix = "" if run <= 1 else f"-{run}"
    return dns_label(scene_id, _DNS_LABEL_MAX - len(suffix)) + suffix


def run_number(scene_id: str, name: str) -> int | None:
    """Which run of `scene_id` the resource `name` is (None if it is not one of its run names)."""
    base = dns_label(scene_id)
    if name == base:
        return 1
    m = re.fullmatch(r"(.+)-(\d+)", name)
    if m and int(m.group(2)) >= 2 and m.group(1) == run_name(scene_id, int(m.group(2)))[: -len(m.group(2)) - 1]:
        return int(m.group(2))
    return None


def next_run_name(scene_id: str, existing: Iterable[str]) -> str:
    runs = [n for n in (run_number(scene_id, name) for name in existing) if n is not None]
    return run_name(scene_id, max(runs, default=0) + 1)


def _created(resource: Mapping[str, Any]) -> str:
    return str((resource.get("metadata") or {}).get("creationTimestamp") or "")


def newest(resources: Iterable[Mapping[str, Any]], scene_id: str | None = None) -> Mapping[str, Any] | None:
    """The newest run (by run number, then creation time), optionally only those of one scene."""
    candidates = []
    for res in resources:
        name = str((res.get("metadata") or {}).get("name", ""))
        num = run_number(scene_id, name) if scene_id is not None else 0
        if scene_id is not None and num is None and scene_id_of(res) != scene_id:
            continue
        candidates.append(((num or 0), _created(res), int((res.get("metadata") or {}).get("resourceVersion", 0) or 0), res))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[:3])[3]


# --- Building a resource -------------------------------------------------------------------------


def build_training(
    name: str,
    *,
    scene_id: str,
    claim: str,
    path: str,
    namespace: str | None = None,
    data_factor: int | None = None,
    max_steps: int | None = None,
    strategy: str | None = None,
    extra_spec: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    created_by: str = "splatops-cli",
    output_path: str | None = None,
) -> dict[str, Any]:
    """A GaussianSplatTraining manifest, its spec validated by the operator's own model.

    `output_path`: spec.output.path (default: the training's own `<path>/gsplat/<name>/`).
    Raises pydantic.ValidationError (or ValueError) with the field that is wrong.
    """
    fields: dict[str, Any] = {"scene": {"claimName": claim, "path": path}}
    if output_path is not None:
        fields["output"] = {"path": output_path}
    for key, value in (("dataFactor", data_factor), ("maxSteps", max_steps), ("strategy", strategy)):
        if value is not None:
            fields[key] = value
    fields.update(extra_spec or {})
    spec = Spec.model_validate(fields)
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {LABEL_SCENE: dns_label(scene_id), LABEL_CREATED_BY: created_by},
        "annotations": {ANNOTATION_SCENE_ID: scene_id, **dict(annotations or {})},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": metadata,
        "spec": spec.model_dump(by_alias=True, exclude_unset=True, mode="json"),
    }


def to_yaml(manifest: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


# --- Tables and progress lines -------------------------------------------------------------------


def age(created: str, now: datetime.datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 2d."""
    if not created:
        return "?"
    try:
        then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    now = now or datetime.datetime.now(tz=datetime.UTC)
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


TABLE_COLUMNS = ("NAME", "SCENE", "PHASE", "PROGRESS", "LOSS", "PSNR", "MODEL(MB)", "AGE")


def table_row(resource: Mapping[str, Any], now: datetime.datetime | None = None) -> tuple[str, ...]:
    status = _status(resource)
    progress = status.get("progress") or {}
    loss, psnr = progress.get("loss"), progress.get("psnr")
    size = status.get("modelSizeMB", status.get("modelSizeMb"))
    pct = progress.get("percent")
    return (
        str((resource.get("metadata") or {}).get("name", "")),
        scene_id_of(resource),
        str(status.get("phase") or "Pending"),
        f"{pct:.0f}%" if isinstance(pct, (int, float)) else "-",
        f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
        f"{psnr:.2f}" if isinstance(psnr, (int, float)) else "-",
        f"{size:.2f}" if isinstance(size, (int, float)) else "-",
        age(_created(resource), now),
    )


WIDE_COLUMNS = ("REASON", "QUEUE", "GPUS", "JOB")


def wide_row(resource: Mapping[str, Any]) -> tuple[str, ...]:
    """The extra columns of `list -o wide`."""
    spec, status = resource.get("spec") or {}, _status(resource)
    return (str(status.get("reason") or "-"), str(spec.get("queueName") or "-"),
            str((spec.get("resources") or {}).get("gpus") or 1), str(status.get("jobName") or "-"))


def format_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """Plain, kubectl-like columns (3 spaces apart), so scripts can `awk` them."""
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in all_rows)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    secs = int(round(seconds))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(resource: Mapping[str, Any]) -> str | None:
    """One line a user sees while training: the original progress words plus PSNR, rate and ETA."""
    progress = _status(resource).get("progress") or {}
    if not progress.get("message"):
        return None
    parts = [str(progress["message"])]
    if isinstance(progress.get("psnr"), (int, float)):
        parts.append(f"PSNR: {progress['psnr']:.2f} dB")
    if isinstance(progress.get("numGaussians"), int):
        parts.append(f"Gaussians: {progress['numGaussians']}")
    if isinstance(progress.get("stepsPerSec"), (int, float)):
        parts.append(f"{progress['stepsPerSec']:.1f} it/s")
    if progress.get("etaSeconds") is not None:
        parts.append(f"ETA {format_eta(progress['etaSeconds'])}")
    return " | ".join(parts)


def phase_line(resource: Mapping[str, Any]) -> str:
    status = _status(resource)
    phase = status.get("phase") or "Pending"
    detail = status.get("message") or status.get("reason") or ""
    return f"phase: {phase}" + (f" ({detail})" if detail else "")


def is_terminal(resource: Mapping[str, Any]) -> bool:
    return _status(resource).get("phase") in ("Succeeded", "Failed")


def size_matches(size_bytes: int, model_size_mb: float | None) -> bool:
    """Whether a downloaded file has the size the trainer reported (MiB, rounded to 2 decimals)."""
    if model_size_mb is None:
        return True
    return abs(size_bytes / (1024 * 1024) - float(model_size_mb)) <= 0.0051 + 1e-9
