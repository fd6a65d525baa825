"""The operator's one typed configuration, read from `SPLATOPS_OPERATOR_*` environment variables.

Validated once at startup (`Settings.from_env()`); a bad value stops the operator with a message
naming the variable, instead of failing later inside a handler.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from splatops.controller import policy as pol
from splatops.api.models import PodTemplate

ENV_PREFIX = "SPLATOPS_OPERATOR_"

# The default GPU pool: A10G (g5) instances by the well-known instance-type label, which every EKS
# node has (managed node groups, Karpenter, Auto Mode): no GPU Feature Discovery needed.
DEFAULT_GPU_NODE_LABEL_KEY = "node.kubernetes.io/instance-type"
DEFAULT_GPU_NODE_LABEL_VALUES = ("g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge", "g5.12xlarge", "g5.16xlarge",
                                 "g5.24xlarge", "g5.48xlarge")
DEFAULT_TOLERATIONS: tuple[dict[str, Any], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)


class SettingsError(ValueError):
    """Startup configuration is invalid; the message names each offending variable."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _json_value(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what} must be JSON ({exc})") from exc
    return value


def _env_alias(field: str) -> AliasChoices:
    """The Job defaults are read, like every setting, as `SPLATOPS_OPERATOR_<NAME>`, and also as
    `SPLATOPS_<NAME>` (e.g. SPLATOPS_DEFAULT_BACKOFF_LIMIT); the field name works as a keyword
    (populate_by_name)."""
    return AliasChoices(f"{ENV_PREFIX}{field.upper()}", f"SPLATOPS_{field.upper()}")


class Settings(BaseSettings):
    """Everything the operator can be told. Field names map to `SPLATOPS_OPERATOR_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    # -- what to watch
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated namespaces to watch (globs allowed); empty = cluster-wide.",
    )
    # -- the trainer Job
    trainer_image: str = Field("ghcr.io/splatops/trainer:0.1.0", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu_resource_name: str = Field("nvidia.com/gpu", min_length=1)
    gpu_node_label_key: str = Field(DEFAULT_GPU_NODE_LABEL_KEY, description="Node label of the GPU pool; empty = no affinity.")
    gpu_node_label_values: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_GPU_NODE_LABEL_VALUES))
    tolerations: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=lambda: [dict(t) for t in DEFAULT_TOLERATIONS],
        description="JSON list of tolerations added to every trainer pod.",
    )
    pod_template: Annotated[PodTemplate | None, NoDecode] = Field(
        None, description="JSON PodTemplate (the spec's podTemplate shape) merged into every trainer pod; "
        "a training's spec.podTemplate wins.",
    )
    # Sized to fit g5.xlarge, the smallest A10G instance (docs/eks.md: allocatable ~3.92 CPU and
    # ~14.5 GiB after EKS's kube-reserved and eviction threshold, less the DaemonSets).
    default_memory: str = "12Gi"
    default_cpu: str = "3"
    shm_size: str = Field("1Gi", description="Size limit of the /dev/shm memory emptyDir (counts against the memory limit).")
    trainer_metrics_port: int = Field(9090, ge=1, le=65535)
    # Job defaults where the resource's spec has none (the spec's values win); 0 = none.
    default_backoff_limit: int = Field(
        3, ge=0, le=100, validation_alias=_env_alias("default_backoff_limit"),
        description="Job backoffLimit when spec.backoffLimit is unset (0 = no retries).",
    )
    default_active_deadline_seconds: int = Field(
        86400, ge=0, validation_alias=_env_alias("default_active_deadline_seconds"),
        description="Job activeDeadlineSeconds when spec.activeDeadlineSeconds is unset (0 = no deadline).",
    )
    default_ttl_seconds_after_finished: int = Field(
        604800, ge=0, validation_alias=_env_alias("default_ttl_seconds_after_finished"),
        description="Job ttlSecondsAfterFinished when spec.ttlSecondsAfterFinished is unset (0 = keep finished Jobs).",
    )
    # -- policy on what a spec may ask of its pod (controller/policy.py; the chart's `policy` values)
    policy_allowed_image_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated images a spec.image may name: a repository (any tag or digest) or a "
        "prefix ending in '/'; '*' = any image; empty = the repository of trainer_image.",
    )
    policy_allowed_priority_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated PriorityClasses a spec may name; empty = none.")
    policy_denied_toleration_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(pol.DEFAULT_DENIED_TOLERATION_KEYS),
        description="Comma-separated taint keys (a trailing '*' = a prefix) spec.tolerations may not name; "
        "a toleration without a key is always refused.")
    policy_denied_node_label_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(pol.DEFAULT_DENIED_NODE_LABEL_KEYS),
        description="Comma-separated node label keys (a trailing '*' = a prefix) spec.nodeSelector and "
        "spec.affinity's node affinity may not name.")
    # -- admission
    max_concurrent: int = Field(0, ge=0, description="Cap on trainings running at once; 0 = no cap.")
    # -- progress
    progress_interval: float = Field(15.0, gt=0, description="Seconds between pod-log progress polls.")
    status_min_interval: float = Field(10.0, ge=0, description="Minimum seconds between progress status writes per resource.")
    log_tail_lines: int = Field(200, ge=1, le=100_000)
    unschedulable_grace: float = Field(900.0, ge=0, description="Seconds a pod may stay Unschedulable before the training fails.")
    provisioning_grace: float = Field(
        2700.0, ge=0, description="Seconds an Unschedulable pod may wait while a node is being provisioned for it "
        "(status.nominatedNodeName, or a Karpenter Nominated Event): a g5 node launch is not a failure.")
    # -- serving
    metrics_port: int = Field(8080, ge=0, le=65535, description="Prometheus /metrics port; 0 = off.")
    liveness_port: int = Field(8081, ge=0, le=65535, description="kopf liveness port; 0 = off.")
    liveness_path: str = "/healthz"
    # -- high availability (kopf peering)
    standalone: bool = Field(False, description="Run without peering (single replica only).")
    peering_name: str = Field("splatops", min_length=1)
    peering_mandatory: bool = Field(
        False, description="Start paused until the peering object is read (and stay paused while it is missing): "
        "required with two or more replicas, or a standby may act before it sees the active one.")
    priority: int = Field(0, description="kopf peering priority; give each replica a distinct one.")
    peering_lifetime: int = Field(
        60, ge=2, le=3600,
        description="Seconds a replica's peering heartbeat stays valid: a standby takes over this long "
        "after the active replica's last heartbeat when it dies without removing it (kopf's default: 60).",
    )
    # -- watching (never go silent on a stalled watch)
    # Whole seconds: kopf sends it as the API's `timeoutSeconds`, which rejects "300.0" (400).
    watch_server_timeout: int = Field(300, gt=0)
    watch_client_timeout: float = Field(330.0, gt=0)
    watch_connect_timeout: float = Field(30.0, gt=0)
    watch_inactivity_timeout: float = Field(600.0, gt=0)
    # -- kopf posting
    event_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="kopf log lines at or above this level are also posted as Kubernetes Events.")
    # -- logging (kopf's handler and formatters, as `kopf run` sets them up)
    log_level: Literal["DEBUG", "INFO", "WARNING"] = Field("INFO", description="Lowest level printed (stderr).")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line (kopf's formatter).")
    # -- process
    gc_tuning: bool = Field(True, description="Freeze startup objects out of Python's GC and collect less often (see main.tune_gc).")

    @field_validator("namespaces", "gpu_node_label_values", "policy_allowed_image_prefixes",
                     "policy_allowed_priority_classes", "policy_denied_toleration_keys",
                     "policy_denied_node_label_keys", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("tolerations", mode="before")
    @classmethod
    def _tolerations(cls, value: Any) -> Any:
        value = _json_value(value, "tolerations")
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise ValueError("tolerations must be a JSON list of objects")
        return value

    @field_validator("pod_template", mode="before")
    @classmethod
    def _pod_template(cls, value: Any) -> Any:
        value = _json_value(value, "pod_template")
        return value or None

    @field_validator("liveness_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("liveness_path must start with '/'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.gpu_node_label_key and not self.gpu_node_label_values:
            raise ValueError("gpu_node_label_values must not be empty when gpu_node_label_key is set")
        if self.watch_client_timeout <= self.watch_server_timeout:
            raise ValueError("watch_client_timeout must exceed watch_server_timeout so the server ends watches first")
        if self.metrics_port and self.metrics_port == self.liveness_port:
            raise ValueError("metrics_port and liveness_port must differ")
        if self.standalone and self.peering_mandatory:
            # kopf would pause for ever, silently, waiting for a peering it was told not to use.
            raise ValueError("standalone and peering_mandatory exclude each other: a standalone operator uses no "
                             "peering; set one of them to false")
        return self

    @property
    def policy(self) -> pol.Policy:
        images = self.policy_allowed_image_prefixes or [pol.image_repository(self.trainer_image)]
        return pol.Policy(
            allowed_image_prefixes=tuple(images),
            allowed_priority_classes=tuple(self.policy_allowed_priority_classes),
            denied_toleration_keys=tuple(self.policy_denied_toleration_keys),
            denied_node_label_keys=tuple(self.policy_denied_node_label_keys),
        )

    @property
    def liveness_endpoint(self) -> str | None:
        return f"http://0.0.0.0:{self.liveness_port}{self.liveness_path}" if self.liveness_port else None

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read and validate the environment; raise SettingsError naming each bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(format_errors(exc)) from None


def format_errors(exc: ValidationError) -> str:
    lines = ["invalid operator settings:"]
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        env = f"{ENV_PREFIX}{field.upper()}" if field else "(settings)"
        for info in Settings.model_fields.values():
            choices = getattr(info.validation_alias, "choices", ())
            if field in choices:  # a setting read under more than one name: name them all
                env = " or ".join(map(str, choices))
        lines.append(f"  {env}: {err['msg']}")
    return "\n".join(lines)
