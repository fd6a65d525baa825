"""Build the trainer's batch/v1 Job from a GaussianSplatTraining: a pure function of (resource, settings).

Deterministic: the same resource always gives the same Job (name included), so a retried or
restarted operator that sees 409 on create knows the existing Job is its own.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping

from splatops import contract, names
from splatops.api import layout
from splatops.api.layout import OutputKey
from splatops.api.models import PodTemplate, Spec
from splatops.api.pods import bounded, child_labels, restricted_container_security
from splatops.controller.settings import Settings

JOB_NAME_PREFIX = "gst-"
MAX_JOB_NAME = 63  # the Job controller copies the name into a pod label (63 characters)
TERMINATION_MESSAGE_PATH = contract.TERMINATION_LOG
SHM_VOLUME = names.SHM_VOLUME
TMP_VOLUME = names.TMP_VOLUME
RUN_AS_USER = names.IMAGE_UID


def job_name(training_name: str) -> str:
    """`gst-<name>` (at most 62 characters), else `gst-<head>-<hash>` (exactly 63): distinct
    trainings never share a Job name (the Job controller copies it into a 63-character label)."""
    return JOB_NAME_PREFIX + bounded(training_name, MAX_JOB_NAME - len(JOB_NAME_PREFIX))


def training_job_name(training: Mapping[str, Any]) -> str:
    """The Job of `training`: the one its status already names (only ever a Job it owned; an
    operator before the collision-free names named long trainings' Jobs otherwise, and an upgrade
    must find those), else job_name() of its name."""
    recorded = (training.get("status") or {}).get("jobName")
    return str(recorded) if recorded else job_name(training["metadata"]["name"])




def scene_dir(spec: Spec) -> str:
    return posixpath.normpath(posixpath.join(names.SCENE_MOUNT, spec.scene.path))


def pod_output(pod: Mapping[str, Any]) -> OutputKey | None:
    """The output directory a trainer pod (of a Job built here) writes: its claim and the
    SPLATOPS_OUTPUT_DIR of its trainer container (None for a pod that names neither)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    claim = next((v.get("persistentVolumeClaim", {}).get("claimName") for v in spec.get("volumes") or []
                  if v.get("name") == names.SCENE_VOLUME), None)
    container = next((c for c in spec.get("containers") or [] if c.get("name") == names.TRAINER_CONTAINER), {})
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    out = env.get(contract.ENV_OUTPUT_DIR)
    if not out and env.get(contract.ENV_SCENE_DIR):  # a pod of an older operator: the trainer's default
        out = layout.seed_output_path(str(env[contract.ENV_SCENE_DIR]))
    if not claim or not out:
        return None
    return (str(meta.get("namespace") or ""), str(claim), posixpath.normpath(layout.volume_relative(str(out))))


def data_factor(spec: Spec, status: Mapping[str, Any] | None) -> int:
    """The factor to train at: status.dataFactor once an OOM downscale raised it, else the spec's."""
    raised = (status or {}).get("dataFactor")
    return int(raised) if isinstance(raised, int) and raised > spec.data_factor else spec.data_factor


def trainer_env(training: Mapping[str, Any], spec: Spec, settings: Settings) -> list[dict[str, Any]]:
    env = {
        contract.ENV_SCENE_DIR: scene_dir(spec),
        contract.ENV_OUTPUT_DIR: layout.output_location(spec, training["metadata"]["name"]).in_pod,
        contract.ENV_SCENE_ID: training["metadata"]["name"],
        contract.ENV_DATA_FACTOR: str(data_factor(spec, training.get("status"))),
        contract.ENV_MAX_STEPS: str(spec.max_steps),
        contract.ENV_STRATEGY: spec.strategy,
        contract.ENV_SH_DEGREE: str(spec.sh_degree),
        contract.ENV_SEED: str(spec.seed),
        contract.ENV_DEVICE: "cuda",
        contract.ENV_METRICS_PORT: str(settings.trainer_metrics_port),
        contract.ENV_TERMINATION_LOG: TERMINATION_MESSAGE_PATH,
        contract.ENV_FORMATS: ",".join(spec.outputs.formats),
        # The root filesystem is read-only and the image's user has no home: caches (torch,
        # Python) go to the /tmp emptyDir instead of failing.
        "HOME": "/tmp",
        "XDG_CACHE_HOME": "/tmp/.cache",
    }
    env[contract.ENV_RECONSTRUCT] = spec.reconstruct
    if spec.reconstruct_only:
        env[contract.ENV_RECONSTRUCT_ONLY] = "true"
    if spec.eval_every is not None:
        env[contract.ENV_EVAL_EVERY] = str(spec.eval_every)
    if spec.checkpoint_every is not None:
        env[contract.ENV_CHECKPOINT_EVERY] = str(spec.checkpoint_every)
    if spec.scene.source:
        env[contract.ENV_SCENE_SOURCE] = spec.scene.source
    if spec.output is not None and spec.output.uri:
        env[contract.ENV_OUTPUT_URI] = spec.output.uri
    if spec.max_gaussians is not None:
        env[contract.ENV_MAX_GAUSSIANS] = str(spec.max_gaussians)
    return [{"name": k, "value": v} for k, v in env.items()]


def node_affinity(spec: Spec, settings: Settings) -> dict[str, Any] | None:
    """The spec's affinity replaces the operator's default GPU-pool affinity (both optional)."""
    if spec.affinity:
        return dict(spec.affinity)
    if not settings.gpu_node_label_key or spec.reconstruct_only:  # SfM only: any node with CPUs
        return None
    term = {"key": settings.gpu_node_label_key, "operator": "In", "values": list(settings.gpu_node_label_values)}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
        }
    }


def tolerations(spec: Spec, settings: Settings) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [dict(t) for t in settings.tolerations]
    gpu = {"key": settings.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"}
    if not any(t.get("key") == gpu["key"] and t.get("effect") in (None, "NoSchedule") for t in result):
        result.append(gpu)
    for tol in spec.tolerations or []:
        item = tol.model_dump(by_alias=True, exclude_none=True)
        if item not in result:
            result.append(item)
    return result


def resources(spec: Spec, settings: Settings) -> dict[str, Any]:
    memory = spec.resources.memory or settings.default_memory
    cpu = spec.resources.cpu or settings.default_cpu
    gpus = str(spec.resources.gpus)
    if spec.reconstruct_only:  # structure-from-motion runs on CPU threads: no GPU held (docs/trainer.md)
        return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    return {
        "requests": {"cpu": cpu, "memory": memory, settings.gpu_resource_name: gpus},
        "limits": {"memory": memory, settings.gpu_resource_name: gpus},
    }




def lifetime(spec: Spec, settings: Settings) -> dict[str, int]:
    """activeDeadlineSeconds and ttlSecondsAfterFinished: the spec's, else the operator's defaults
    (a default of 0 sets none). Once the TTL controller deletes a finished Job the training keeps
    its terminal status (terminal phases are final; nothing re-creates the Job)."""
    out: dict[str, int] = {}
    deadline = spec.active_deadline_seconds if spec.active_deadline_seconds is not None else settings.default_active_deadline_seconds or None
    if deadline is not None:
        out["activeDeadlineSeconds"] = deadline
    ttl = spec.ttl_seconds_after_finished if spec.ttl_seconds_after_finished is not None else settings.default_ttl_seconds_after_finished or None
    if ttl is not None:
        out["ttlSecondsAfterFinished"] = ttl
    return out


def _by_key(defaults: list[dict[str, Any]], overrides: list[dict[str, Any]], key: str = "name") -> list[dict[str, Any]]:
    """Merge two lists of keyed items: an override replaces the default with the same key."""
    keys = {item[key] for item in overrides}
    return [d for d in defaults if d[key] not in keys] + overrides


def _dump(items: list[Any] | None) -> list[dict[str, Any]]:
    return [i.model_dump(by_alias=True, exclude_none=True) for i in items or []]


def merged_pod_template(*templates: PodTemplate | None) -> dict[str, Any]:
    """The operator's default template, then the spec's: maps merged, lists merged by name (mounts
    by path), the later winning; tolerations added."""
    out: dict[str, Any] = {"labels": {}, "annotations": {}, "serviceAccountName": None, "imagePullSecrets": [],
                           "env": [], "volumes": [], "volumeMounts": [], "tolerations": []}
    for t in filter(None, templates):
        if t.metadata:
            out["labels"].update(t.metadata.labels or {})
            out["annotations"].update(t.metadata.annotations or {})
        out["serviceAccountName"] = t.service_account_name or out["serviceAccountName"]
        out["imagePullSecrets"] = _by_key(out["imagePullSecrets"], _dump(t.image_pull_secrets))
        out["env"] = _by_key(out["env"], _dump(t.env))
        out["volumes"] = _by_key(out["volumes"], _dump(t.volumes))
        out["volumeMounts"] = _by_key(out["volumeMounts"], _dump(t.volume_mounts), "mountPath")
        out["tolerations"] += [x for x in _dump(t.tolerations) if x not in out["tolerations"]]
    return out


def apply_pod_template(pod: dict[str, Any], container: dict[str, Any], merged: Mapping[str, Any]) -> None:
    """Add the merged template to the pod template `pod` ({metadata, spec}) and its trainer
    `container`. Additions only: the models already refused anything that would replace the
    trainer's own volumes, mounts, env or labels, and securityContext, command, resources and
    automountServiceAccountToken are never touched."""
    meta, spec = pod["metadata"], pod["spec"]
    meta["labels"] = {**merged["labels"], **meta["labels"]}  # the operator's own labels win
    if merged["annotations"]:
        meta["annotations"] = dict(merged["annotations"])
    if merged["serviceAccountName"]:
        spec["serviceAccountName"] = merged["serviceAccountName"]
    if merged["imagePullSecrets"]:
        spec["imagePullSecrets"] = list(merged["imagePullSecrets"])
    container["env"] += merged["env"]
    container["volumeMounts"] += merged["volumeMounts"]
    spec["volumes"] += merged["volumes"]
    spec["tolerations"] += [t for t in merged["tolerations"] if t not in spec["tolerations"]]


def owned_by(job: Mapping[str, Any], uid: str | None) -> bool:
    """Whether `job` belongs to the training with `uid` (not to a deleted namesake)."""
    return any(ref.get("uid") == uid for ref in (job.get("metadata") or {}).get("ownerReferences") or [])


def owner_reference(training: Mapping[str, Any]) -> dict[str, Any]:
    meta = training["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_job(training: Mapping[str, Any], spec: Spec, settings: Settings, *, suspend: bool = False,
              attempts_before: int = 0) -> dict[str, Any]:
    """The Job for `training` (its metadata, and its status for the Job's name and dataFactor) and
    its parsed `spec`. `suspend=True` creates it held back (operator queue, or Kueue);
    `attempts_before`: trainer pods its lost predecessors ran (status.attempts counts on)."""
    container = build_container(training, spec, settings)
    pod_spec = build_pod_spec(spec, settings, container)
    template = {"metadata": {"labels": child_labels(training["metadata"]["name"], training["metadata"].get("uid"))},
                "spec": pod_spec}
    apply_pod_template(template, container, merged_pod_template(settings.pod_template, spec.pod_template))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": build_job_metadata(training, spec, attempts_before),
        "spec": build_job_spec(spec, settings, template, suspend=suspend),
    }


def build_job_metadata(training: Mapping[str, Any], spec: Spec, attempts_before: int) -> dict[str, Any]:
    meta = training["metadata"]
    labels = child_labels(meta["name"], meta.get("uid"))
    if spec.queue_name:
        labels[names.KUEUE_QUEUE_LABEL] = spec.queue_name
    out: dict[str, Any] = {
        "name": training_job_name(training),
        "namespace": meta.get("namespace"),
        "labels": labels,
        "ownerReferences": [owner_reference(training)],
    }
    if attempts_before:
        out["annotations"] = {names.ANNOTATION_ATTEMPTS_BEFORE: str(attempts_before)}
    return out


def build_job_spec(spec: Spec, settings: Settings, template: dict[str, Any], *, suspend: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit if spec.backoff_limit is not None else settings.default_backoff_limit,
        "completions": 1,
        "parallelism": 1,
        # Kueue's Jobs start suspended: Kueue unsuspends them on admission.
        "suspend": bool(suspend or spec.suspend or spec.queue_name),
        # Replacement pods only once the old one is gone: two trainers must never share the output dir.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "template": template,
    }
    out.update(lifetime(spec, settings))
    return out


def pod_failure_policy() -> dict[str, Any]:
    """Invalid input and out of memory fail the Job at once (a retry cannot help); a disrupted pod
    (preemption, node drain) is not counted against backoffLimit."""
    fatal = [int(contract.ExitCode.INVALID_INPUT), int(contract.ExitCode.OUT_OF_MEMORY)]
    return {
        "rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": names.TRAINER_CONTAINER, "operator": "In", "values": fatal}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_container(training: Mapping[str, Any], spec: Spec, settings: Settings) -> dict[str, Any]:
    """The trainer container (the pod template's additions come later, apply_pod_template)."""
    return {
        "name": names.TRAINER_CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": spec.image_pull_policy or settings.image_pull_policy,
        "env": trainer_env(training, spec, settings),
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}],
        "resources": resources(spec, settings),
        "volumeMounts": [
            {"name": names.SCENE_VOLUME, "mountPath": names.SCENE_MOUNT},
            {"name": SHM_VOLUME, "mountPath": names.SHM_MOUNT},
            {"name": TMP_VOLUME, "mountPath": names.TMP_MOUNT},
        ],
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }


def build_pod_spec(spec: Spec, settings: Settings, container: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": names.SCENE_VOLUME, "persistentVolumeClaim": {"claimName": spec.scene.claim_name}},
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
            {"name": TMP_VOLUME, "emptyDir": {}},
        ],
        "tolerations": tolerations(spec, settings),
    }
    affinity = node_affinity(spec, settings)
    if affinity:
        out["affinity"] = affinity
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.priority_class_name:
        out["priorityClassName"] = spec.priority_class_name
    return out
