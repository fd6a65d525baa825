"""The GaussianSplatTraining API as typed models: the single source of the CRD schema.

Every field carries its `kubectl explain` description; `api/crd.py` turns these models into the
CRD's openAPIV3Schema. Field names are the API's camelCase names (aliases), Python uses snake_case.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from splatops import contract, names

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SCENE_PATH_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._/ -]*$"
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
K8S_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"


class Phase(str, enum.Enum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


# Condition types: one per phase, so `kubectl wait --for=condition=<Phase>` works for each.
# Pending's carries why a Job is not there yet (e.g. JobCreateRetrying with the API server's message).
CONDITION_TYPES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def scene_path_problem(path: str, field: str = "scene.path") -> str | None:
    """Why `path` could escape the volume (None if it cannot). Mirrors the CRD's CEL rule."""
    if path.startswith("/"):
        return f"{field} must be relative to the volume (no leading '/')"
    if ".." in path.split("/"):
        return f"{field} must not contain '..' segments"
    return None


class Scene(_Model):
    """Where the scene lives: a PersistentVolumeClaim and a directory inside it."""

    claim_name: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Name of the PersistentVolumeClaim (same namespace) holding the scene. "
        "It is mounted read-write at /data in the trainer pod; deleting the training never touches it.",
    )
    path: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=SCENE_PATH_PATTERN,
        description="Scene directory relative to the volume root (e.g. `scenes/fox`; `.` for the root). "
        "It holds images/ and colmap/sparse_initial/; outputs go to <path>/gsplat/<training name>/ "
        "unless output.path says otherwise. "
        "No leading '/', no '..' segments.",
    )

    source: str | None = Field(
        None, max_length=1024, pattern=S3_URI_PATTERN,
        description="Object storage the scene comes from, `s3://bucket/prefix/` (images/ and colmap/ under it). "
        "The trainer downloads what changed since its last run into <path> on the claim (the cache) before "
        "training, with the pod's own identity (IRSA / EKS Pod Identity, spec.podTemplate.serviceAccountName).",
    )

    @field_validator("path")
    @classmethod
    def _no_escape(cls, value: str) -> str:
        problem = scene_path_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Output(_Model):
    """Where the training writes results.ply, config.json, results/ (log, checkpoints) and error.log,
    and where else its outputs go (object storage)."""

    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=SCENE_PATH_PATTERN,
        description="Output directory relative to the volume root (same rules as scene.path). "
        "Default: <scene.path>/gsplat/<training name>. Two trainings with the same claim and output "
        "directory never run at once: the later one waits in Queued (reason OutputBusy).",
    )
    uri: str | None = Field(
        None, max_length=1024, pattern=S3_URI_PATTERN,
        description="Object storage for the outputs, `s3://bucket/prefix/`: after success the trainer uploads "
        "results.ply, config.json and results/training_log.txt there (multipart; nothing appears at a key until "
        "its upload completes), with the pod's own identity. status.outputs lists them.",
    )

    @field_validator("path")
    @classmethod
    def _no_escape(cls, value: str | None) -> str | None:
        problem = scene_path_problem(value, "output.path") if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class Resources(_Model):
    """Compute resources of the trainer container."""

    gpus: int = Field(1, ge=1, le=8, description="Number of GPUs (the operator's GPU resource, nvidia.com/gpu by default).")
    memory: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Memory request and limit, e.g. `24Gi`. Default: the operator's setting."
    )
    cpu: str | None = Field(None, pattern=QUANTITY_PATTERN, description="CPU request, e.g. `4`. Default: the operator's setting.")


OOM_FAIL = "Fail"
OOM_DOWNSCALE = "Downscale"
MAX_DATA_FACTOR = 8


class Oom(_Model):
    """What to do when the trainer runs out of GPU memory (exit code 3)."""

    policy: Literal["Fail", "Downscale"] = Field(
        "Fail",
        description="`Fail` (default): the training fails with reason OutOfMemory. `Downscale`: the operator "
        "trains again at twice the dataFactor (up to 8), with a Warning Event and the new factor in "
        "status.dataFactor; the retry starts fresh (checkpoints of the old resolution are not resumed).",
    )


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(None, max_length=317, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, max_length=63, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(None, description="For NoExecute: seconds the pod stays bound after the taint appears.")


# --- core/v1 Affinity, checked by the operator only ------------------------------------------------
# The CRD keeps spec.affinity free-form (a typed copy of the whole Affinity would bloat the CRD and
# the CEL cost of its immutability rule). The operator checks its shape, field names, required
# fields, operators and weights, so a typo fails the training at once as InvalidSpec; what needs
# the API server (label syntax, values that do not fit the operator) comes back as a 422 on the
# Job, which also ends as InvalidSpec.


class _K8s(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _SelectorRequirement(_K8s):
    key: str = Field(..., min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class _LabelSelector(_K8s):
    matchLabels: dict[str, str] | None = None
    matchExpressions: list[_SelectorRequirement] | None = None


class _NodeSelectorRequirement(_K8s):
    key: str = Field(..., min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] | None = None


class _NodeSelectorTerm(_K8s):
    matchExpressions: list[_NodeSelectorRequirement] | None = None
    matchFields: list[_NodeSelectorRequirement] | None = None


class _NodeSelector(_K8s):
    nodeSelectorTerms: list[_NodeSelectorTerm]


class _PreferredSchedulingTerm(_K8s):
    weight: int = Field(..., ge=1, le=100)
    preference: _NodeSelectorTerm


class _NodeAffinity(_K8s):
    requiredDuringSchedulingIgnoredDuringExecution: _NodeSelector | None = None
    preferredDuringSchedulingIgnoredDuringExecution: list[_PreferredSchedulingTerm] | None = None


class _PodAffinityTerm(_K8s):
    topologyKey: str = Field(..., min_length=1)
    labelSelector: _LabelSelector | None = None
    namespaceSelector: _LabelSelector | None = None
    namespaces: list[str] | None = None
    matchLabelKeys: list[str] | None = None
    mismatchLabelKeys: list[str] | None = None


class _WeightedPodAffinityTerm(_K8s):
    weight: int = Field(..., ge=1, le=100)
    podAffinityTerm: _PodAffinityTerm


class _PodAffinity(_K8s):
    requiredDuringSchedulingIgnoredDuringExecution: list[_PodAffinityTerm] | None = None
    preferredDuringSchedulingIgnoredDuringExecution: list[_WeightedPodAffinityTerm] | None = None


class _Affinity(_K8s):
    nodeAffinity: _NodeAffinity | None = None
    podAffinity: _PodAffinity | None = None
    podAntiAffinity: _PodAffinity | None = None


def affinity_problem(value: Any) -> str | None:
    """Why `value` is not a core/v1 Affinity (None if its shape is one)."""
    try:
        _Affinity.model_validate(value)
    except ValidationError as exc:
        return "not a core/v1 Affinity: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {'must be an object' if e['type'] == 'model_type' else e['msg']}"
            for e in exc.errors()
        )
    return None


# --- spec.podTemplate: what a cluster needs on the trainer pod, never what makes it the trainer ---

# The trainer's own volumes, mounts, env and labels: a pod template may not replace or shadow them.
RESERVED_VOLUMES = frozenset({names.SCENE_VOLUME, names.SHM_VOLUME, names.TMP_VOLUME})
RESERVED_MOUNTS = (names.SCENE_MOUNT, names.SHM_MOUNT, names.TMP_MOUNT, contract.TERMINATION_LOG)
RESERVED_ENV = frozenset({"HOME", "XDG_CACHE_HOME"})
RESERVED_LABELS = frozenset({names.LABEL_NAME, names.LABEL_COMPONENT, names.LABEL_MANAGED_BY, names.LABEL_TRAINING,
                             names.KUEUE_QUEUE_LABEL, "job-name", "controller-uid"})
RESERVED_LABEL_PREFIXES = (f"{names.GROUP}/", "batch.kubernetes.io/")
# The volume sources Pod Security "restricted" admits (no hostPath and the like).
VOLUME_SOURCES = ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "csi", "ephemeral", "projected", "downwardAPI")


class PodMetadata(_Model):
    """Labels and annotations added to the trainer pod (e.g. karpenter.sh/do-not-disrupt)."""

    labels: dict[str, str] | None = Field(None, max_length=64, description="Extra pod labels (not the operator's own keys).")
    annotations: dict[str, str] | None = Field(None, max_length=64, description="Extra pod annotations.")


class LocalObjectReference(_Model):
    name: str = Field(..., min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the Secret.")


class EnvVar(_Model):
    """An environment variable of the trainer container (core/v1 EnvVar)."""

    name: str = Field(..., min_length=1, max_length=256, pattern=ENV_NAME, description="Variable name (not SPLATOPS_*, HOME or XDG_CACHE_HOME).")
    value: str | None = Field(None, max_length=32768, description="Literal value.")
    value_from: dict[str, Any] | None = Field(None, description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef).")


class Volume(_Model):
    """An extra pod volume (core/v1 Volume) of a kind Pod Security "restricted" admits."""

    name: str = Field(..., min_length=1, max_length=63, pattern=DNS1123_LABEL, description="Volume name (not scene, dshm or tmp).")
    config_map: dict[str, Any] | None = Field(None, description="core/v1 ConfigMapVolumeSource.")
    secret: dict[str, Any] | None = Field(None, description="core/v1 SecretVolumeSource.")
    empty_dir: dict[str, Any] | None = Field(None, description="core/v1 EmptyDirVolumeSource.")
    persistent_volume_claim: dict[str, Any] | None = Field(None, description="core/v1 PersistentVolumeClaimVolumeSource.")
    csi: dict[str, Any] | None = Field(None, description="core/v1 CSIVolumeSource.")
    ephemeral: dict[str, Any] | None = Field(None, description="core/v1 EphemeralVolumeSource.")
    projected: dict[str, Any] | None = Field(None, description="core/v1 ProjectedVolumeSource.")
    downward_api: dict[str, Any] | None = Field(None, alias="downwardAPI", description="core/v1 DownwardAPIVolumeSource.")

    @model_validator(mode="after")
    def _one_source(self) -> "Volume":
        if len(self.model_dump(exclude_none=True)) != 2:
            raise ValueError(f"volume {self.name!r} needs exactly one of {', '.join(VOLUME_SOURCES)}")
        return self


class VolumeMount(_Model):
    """An extra mount in the trainer container (core/v1 VolumeMount)."""

    name: str = Field(..., min_length=1, max_length=63, pattern=DNS1123_LABEL, description="A volume of podTemplate.volumes.")
    mount_path: str = Field(..., min_length=1, max_length=1024, pattern=r"^/", description="Absolute path (not /data, /dev/shm, /tmp or under them).")
    sub_path: str | None = Field(None, max_length=1024, description="Sub-path inside the volume.")
    read_only: bool | None = Field(None, description="Mount read-only.")


def _overlaps(path: str, reserved: str) -> bool:
    path, reserved = path.rstrip("/") or "/", reserved.rstrip("/")
    return path == reserved or reserved.startswith(path.rstrip("/") + "/") or path.startswith(reserved + "/")


def pod_template_problems(t: "PodTemplate", where: str = "spec.podTemplate") -> list[str]:
    """What in `t` would replace or shadow the trainer's own pod parts (empty: none)."""
    problems = []
    for key in ((t.metadata.labels or {}) if t.metadata else {}):
        if key in RESERVED_LABELS or key.startswith(RESERVED_LABEL_PREFIXES):
            problems.append(f"{where}.metadata.labels: {key!r} is the operator's own label")
    for i, env in enumerate(t.env or []):
        if env.name in RESERVED_ENV or env.name.startswith(contract.ENV_PREFIX):
            problems.append(f"{where}.env[{i}].name: {env.name!r} is set by the operator (use the spec's fields)")
    volumes = [v.name for v in t.volumes or []]
    for i, name in enumerate(volumes):
        if name in RESERVED_VOLUMES or name in volumes[:i]:
            problems.append(f"{where}.volumes[{i}].name: {name!r} is {'reserved' if name in RESERVED_VOLUMES else 'used twice'}")
    for i, mount in enumerate(t.volume_mounts or []):
        if mount.name not in volumes:
            problems.append(f"{where}.volumeMounts[{i}].name: no volume {mount.name!r} in {where}.volumes")
        clash = next((r for r in RESERVED_MOUNTS if _overlaps(mount.mount_path, r)), None)
        if clash:
            problems.append(f"{where}.volumeMounts[{i}].mountPath: {mount.mount_path!r} overlaps the trainer's {clash}")
    return problems


class PodTemplate(_Model):
    """What the cluster needs on the trainer pod: merged over the operator's defaults (chart value
    trainer.podTemplate). It can never change the trainer's security context, command, resources
    or scene mount: colliding names and paths are rejected (InvalidSpec naming the field)."""

    metadata: PodMetadata | None = Field(None, description="Extra pod labels and annotations (the spec's win over the defaults').")
    service_account_name: str | None = Field(
        None, max_length=253, pattern=DNS1123_SUBDOMAIN,
        description="ServiceAccount of the trainer pod, e.g. for IRSA or EKS Pod Identity. The Kubernetes API "
        "token stays unmounted (the trainer needs no API access); cloud identity webhooks add their own.",
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, max_length=16, description="Secrets for pulling the trainer image from a private registry (added to the defaults).")
    env: list[EnvVar] | None = Field(None, max_length=64, description="Extra environment variables of the trainer (the spec's win by name).")
    volumes: list[Volume] | None = Field(None, max_length=16, description="Extra pod volumes.")
    volume_mounts: list[VolumeMount] | None = Field(None, max_length=16, description="Extra mounts in the trainer container.")
    tolerations: list[Toleration] | None = Field(None, max_length=32, description="Extra tolerations.")

    @model_validator(mode="after")
    def _no_collisions(self) -> "PodTemplate":
        problems = pod_template_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


ModelFormat = Literal["ply", "spz", "splat", "ply_compressed"]  # contract.FORMAT_FILES' keys


class Outputs(_Model):
    """What the trainer writes beside results.ply."""

    formats: list[ModelFormat] = Field(
        default_factory=lambda: ["ply", "spz"], min_length=1, max_length=4,
        description="Model formats: `ply` (results.ply, always written), `spz` (Niantic's compressed "
        "format, about 10x smaller, for web viewers), `splat` and `ply_compressed` (gsplat's exports).",
    )


class Spec(_Model):
    """Desired training. Immutable once created, except `suspend`."""

    scene: Scene = Field(..., description="The scene to train on.")
    output: Output | None = Field(
        None, description="Where the outputs go (same volume). Default: <scene.path>/gsplat/<training name>/."
    )
    data_factor: Literal[contract.DATA_FACTORS] = Field(1, description="Image downscale factor: 1, 2, 4 or 8. Higher trains faster on less memory.")
    max_steps: int = Field(30000, ge=contract.MIN_STEPS, le=contract.MAX_STEPS, description="Training iterations (1 to 1,000,000).")
    strategy: Literal[contract.STRATEGIES] = Field("default", description="Densification strategy: `default` (3DGS) or `mcmc`.")
    sh_degree: int = Field(3, ge=0, le=contract.MAX_SH_DEGREE, description="Spherical-harmonics degree of the Gaussians' colour (0 to 4).")
    eval_every: int | None = Field(
        None, ge=0, le=1_000_000, description="Evaluate PSNR/SSIM on held-out views every N steps (0 = only at the end). Default: the trainer's."
    )
    checkpoint_every: int | None = Field(
        None, ge=0, le=1_000_000, description="Write a resumable checkpoint every N steps (0 = only at the end). Default: the trainer's."
    )
    seed: int = Field(42, ge=0, le=contract.MAX_SEED, description="Random seed.")
    max_gaussians: int | None = Field(
        None, ge=1000, le=100_000_000,
        description="Densification never grows the model past this many Gaussians (both strategies; "
        "for mcmc the smaller of this and its own cap). Bounds GPU memory: about 1 KB per Gaussian "
        "plus ~0.8 KB per pixel of the largest image (docs/trainer-training.md). Default: no cap.",
    )
    oom: Oom = Field(default_factory=Oom, description="What happens when the trainer runs out of GPU memory.")
    resources: Resources = Field(default_factory=Resources, description="GPU count, memory and CPU of the trainer.")
    image: str | None = Field(None, min_length=1, max_length=512, description="Trainer image. Default: the operator's trainer image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the trainer image. Default: the operator's setting."
    )
    node_selector: dict[str, str] | None = Field(
        None, max_length=32, description="Extra node labels the trainer pod requires (added to the GPU pool affinity)."
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=32, description="Tolerations added to the operator's defaults (the nvidia.com/gpu taint is always tolerated)."
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="A core/v1 Affinity that replaces the operator's default GPU-pool node affinity "
        "(e.g. to target another GPU product or instance type).",
    )

    @field_validator("affinity")
    @classmethod
    def _affinity_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problem = affinity_problem(value)
            if problem:
                raise ValueError(problem)
        return value
    priority_class_name: str | None = Field(None, max_length=253, pattern=DNS1123_SUBDOMAIN, description="PriorityClass of the trainer pod.")
    output: Output | None = Field(None, description="Where the outputs also go (object storage).")
    pod_template: PodTemplate | None = Field(
        None, description="Labels, annotations, service account, image pull secrets, env, volumes and tolerations "
        "added to the trainer pod, over the operator's defaults.",
    )
    queue_name: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=K8S_LABEL_VALUE,
        description="Kueue LocalQueue name. When set, the Job is created suspended with the "
        "kueue.x-k8s.io/queue-name label and Kueue admits it (the operator's own cap does not apply).",
    )
    backoff_limit: int | None = Field(
        None, ge=0, le=100,
        description="Retries of a failing trainer pod (exit code 1) before the training fails. Default: the operator's (3).",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=60, le=30 * 86400,
        description="Wall-clock limit of the training in seconds; then it fails with DeadlineExceeded. Default: the operator's (86400 = 24 h).",
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=365 * 86400,
        description="Delete the finished Job (not the resource, its status or the data) after this many seconds. "
        "Default: the operator's (604800 = 7 days).",
    )
    suspend: bool = Field(False, description="Pause the training: its pod stops; setting false again resumes from the last checkpoint.")
    outputs: Outputs = Field(default_factory=Outputs, description="Model formats written beside results.ply.")
    reconstruct: Literal["IfMissing", "Always", "Never"] = Field(
        "IfMissing",
        description="Structure-from-motion (COLMAP, on the trainer pod's CPU threads) before training: `IfMissing` "
        "when the scene has images/ but no COLMAP model, `Always` to redo it (the replaced model is kept as "
        "colmap/sparse_initial.previous/), `Never` (no model fails with ColmapNotFound). The model goes to "
        "<scene.path>/colmap/sparse_initial/; its numbers to status.reconstruction.",
    )
    reconstruct_only: bool = Field(
        False,
        description="Stop after the reconstruction (the REST API's colmap_ba): no training, and the Job requests "
        "no GPU (nor the GPU-pool affinity); status.modelPath is the COLMAP model's directory. Use with "
        "reconstruct: Always to redo an existing model.",
    )


class Progress(_Model):
    """Latest progress reported by the trainer (read from its log)."""

    step: int = Field(..., ge=0, description="Current iteration.")
    max_steps: int = Field(..., ge=1, description="Total iterations.")
    percent: float = Field(..., ge=0, le=100, description="step / maxSteps in percent.")
    loss: float | None = Field(None, description="Training loss at this step.")
    psnr: float | None = Field(None, description="Latest evaluation PSNR in dB.")
    ssim: float | None = Field(None, description="Latest evaluation SSIM.")
    num_gaussians: int | None = Field(None, ge=0, description="Number of Gaussians in the model.")
    steps_per_sec: float | None = Field(None, ge=0, description="Training rate in iterations per second.")
    eta_seconds: float | None = Field(None, ge=0, description="Estimated seconds to completion.")
    message: str = Field(..., description="Progress in the original pipeline's words, e.g. `Iteration 15234/30000 | Loss: 0.0234`, "
                         "or the stage's, e.g. `Extracting features 12/50`.")
    stage: str | None = Field(
        None, description="A stage before training (`Reconstructing`: structure-from-motion); then step and maxSteps "
        "count that stage's items (images, image pairs). Absent during training."
    )
    updated_at: str = Field(..., description="When this progress was read (RFC 3339).")


class Condition(_Model):
    """A status condition (metav1.Condition shape)."""

    type: str = Field(..., description="Pending, Queued, Running, Suspended, Succeeded or Failed.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="Machine-readable reason in CamelCase.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str = Field(..., description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="The spec generation this condition was computed from.")


class OutputRef(_Model):
    """One output of a successful run."""

    name: str = Field(..., description="What it is: ply, spz, splat, ply_compressed, preview, metrics, config or log.")
    uri: str | None = Field(None, description="Where it was uploaded (s3://...), with spec.output.uri.")
    path: str | None = Field(None, description="Its path inside the volume.")
    bytes: int | None = Field(None, ge=0, description="Size in bytes.")
    sha256: str | None = Field(None, description="SHA-256 of its content (hex).")


class GpuMemory(_Model):
    """The trainer's GPU memory check before training, shown when it will probably not fit."""

    estimate_bytes: int = Field(..., ge=0, description="The trainer's estimate of the run's peak GPU memory in bytes.")
    free_bytes: int = Field(..., ge=0, description="The GPU's free memory when the trainer checked, in bytes.")
    fits: bool = Field(..., description="Whether the estimate fits in the free memory.")
    advice: str = Field("", description="What to change so that it fits (maxGaussians, dataFactor, spec.oom.policy Downscale).")


class Status(_Model):
    """Observed state, written by the operator only."""

    phase: Phase | None = Field(None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    progress: Progress | None = Field(None, description="Latest training progress.")
    model_path: str | None = Field(None, description="Path of the trained model (results.ply) inside the volume, on success.")
    model_size_mb: float | None = Field(None, alias="modelSizeMB", description="Size of the trained model file in MB.")
    metrics: dict[str, Any] | None = Field(
        None,
        description="Final metrics reported by the trainer (psnr, ssim, numGaussians, steps, durationSeconds, "
        "gpuSeconds: seconds the run held its GPU, the cost basis; peakGpuMemoryBytes; gpuMemoryEstimateBytes: "
        "the trainer's estimate before training).",
    )
    gpu_memory: GpuMemory | None = Field(
        None,
        description="Set when the trainer's check before training says the run will probably not fit in the "
        "GPU's free memory (a Warning Event GPUMemoryTight says so too); training still starts.",
    )
    data_factor: int | None = Field(
        None,
        description="The dataFactor the current run trains at: spec.dataFactor, doubled after each CUDA "
        "out-of-memory failure under spec.oom.policy Downscale.",
    )
    config: dict[str, Any] | None = Field(None, description="The training configuration the trainer used (also in config.json of the output directory).")
    outputs: list[OutputRef] | None = Field(None, description="The outputs of a successful run: name, uri (object storage) "
                                            "and/or path (inside the volume), bytes and sha256.")
    reconstruction: dict[str, Any] | None = Field(
        None, description="Structure-from-motion's numbers when the trainer reconstructed the scene: images, registered, "
        "unregistered (names), points, mean_reprojection_error_px, seconds, matcher, camera_mode."
    )
    job_name: str | None = Field(None, description="Name of the batch/v1 Job running the training.")
    attempts: int | None = Field(None, ge=0, description="Trainer pods started so far (retries and preemptions included).")
    start_time: str | None = Field(None, description="When the training first started running (RFC 3339).")
    completion_time: str | None = Field(None, description="When the training succeeded or failed (RFC 3339).")
    queued_at: str | None = Field(None, description="When the training last entered the queue (RFC 3339).")
    reason: str | None = Field(None, description="Machine-readable reason of the current phase (e.g. OutOfMemory, DeadlineExceeded).")
    message: str | None = Field(None, description="Human-readable, actionable explanation of the current phase.")
    conditions: list[Condition] | None = Field(None, description="Conditions, one per phase type, for `kubectl wait --for=condition=Succeeded`.")
    observed_generation: int | None = Field(None, description="The metadata.generation the operator last acted on.")


class GaussianSplatTraining(_Model):
    """A whole resource (for validation of samples and typed access in tests)."""

    api_version: str = Field(..., alias="apiVersion")
    kind: str
    metadata: dict[str, Any]
    spec: Spec
    status: Status | None = None


def parse_spec(raw: dict[str, Any]) -> Spec:
    """Validate a resource's spec as the operator sees it (raises pydantic.ValidationError)."""
    return Spec.model_validate(dict(raw))
