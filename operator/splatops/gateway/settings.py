"""The gateway's settings, from `SPLATOPS_GATEWAY_*` environment variables (validated at startup)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splatops.api.models import DNS1123_SUBDOMAIN

ENV_PREFIX = "SPLATOPS_GATEWAY_"


class GatewaySettings(BaseSettings):
    """Where scenes are and where trainings go. Field names map to `SPLATOPS_GATEWAY_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    namespace: str | None = Field(None, description="Namespace of the trainings (default: the kubeconfig's / in-cluster one).")
    claim_name: str = Field("splatops-scenes", pattern=DNS1123_SUBDOMAIN, description="PVC holding the scenes.")
    scenes_root: str = Field(
        "backend_data/reconstructions", description="Directory of the scenes inside the claim (`<root>/<scene_id>/`)."
    )
    mount_path: str = Field("/mnt/volume", description="Where the claim is mounted (read-only) in the gateway's pod.")
    default_data_factor: int = Field(1, description="data_factor when the request gives none (the original's default).")
    default_max_steps: int = Field(30000, ge=1, description="max_steps when the request gives none (the original's default).")
    kubeconfig: str | None = Field(None, description="kubeconfig file (default: in-cluster, else $KUBECONFIG).")
    context: str | None = Field(None, description="kubeconfig context (default: the current one).")
    api_timeout: float = Field(10.0, gt=0, description="Seconds a Kubernetes API call may take before the gateway answers 503.")
    ready_cache_seconds: float = Field(5.0, ge=0, description="How long /readyz reuses its last API check.")
    auth_token: SecretStr | None = Field(None, description="Bearer token clients must send (prefer auth_token_file).")
    auth_token_file: str | None = Field(
        None, description="File holding the bearer token (a mounted Secret; re-read when it changes)."
    )
    auth_proxy_header: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]+$",
        description="Trust this header (set by an authenticating proxy) as the user's name. Only when set.",
    )
    post_rate_per_minute: float = Field(6.0, ge=0, description="POSTs per minute and client (token bucket refill); 0 = no limit.")
    post_burst: int = Field(10, ge=1, description="POSTs a client may make at once (token bucket size).")

    @field_validator("scenes_root")
    @classmethod
    def _relative(cls, value: str) -> str:
        value = value.strip("/")
        if ".." in value.split("/"):
            raise ValueError("scenes_root must stay inside the volume (no '..')")
        return value or "."
