"""The trainer's options: one typed settings model, filled from CLI flags and SPLATOPS_* env vars.

Every field is an option: `--max-steps` / `SPLATOPS_MAX_STEPS`; flags win over env vars, an env var
set empty (or blank) counts as unset. `read_options(argv, env)` reads both; the CLI passes them to
`TrainerConfig(**values)`, which itself reads no env var (so code and tests build one from values
alone). A bad value raises the exit-code-2 `TrainerError` InvalidOptions, every problem in words.
Training reads it; config.json records it in full (plus scene_id and timestamp, as the original
pipeline did).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, CliSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from splatops import contract

from .errors import invalid_options

Strategy = Literal[contract.STRATEGIES]  # type: ignore[valid-type]
Device = Literal["auto", "cuda", "cpu"]
CompileLoss = Literal["auto", "always", "never"]
# compile_loss "auto": on CUDA for runs of at least this many steps. The one-off compile (about
# 25 s with a warm cache on the H200's host, more cold) pays back over a long run's GPU time
# (a quarter less per step), not over a quick 7k one (benchmarks/README.md).
COMPILE_LOSS_MIN_STEPS = 15_000
# Structure-from-motion (reconstruct.py).
Reconstruct = Literal[contract.RECONSTRUCT_MODES]  # type: ignore[valid-type]

PROG = "splatops-train"


class TrainerConfig(BaseSettings):
    """Every option of a training run; the field's description is its `--help` line."""

    model_config = SettingsConfigDict(
        extra="forbid", cli_kebab_case=True, cli_implicit_flags=True, cli_exit_on_error=False, cli_prog_name=PROG,
    )

    scene_dir: Path = Field(description="The scene: images/ and a COLMAP model (sparse/0 or colmap/sparse_initial).")
    output_dir: Path | None = Field(None, description="Where the outputs go. Default: <scene_dir>/gsplat.")
    scene_id: str | None = Field(None, description="A label for logs and metrics. Default: the scene directory's name.")
    data_factor: int = Field(1, description="Image downscale factor: 1, 2, 4 or 8.")
    max_steps: int = Field(30_000, description="Training iterations.")
    strategy: Strategy = Field("default", description="Densification: default (3DGS) or mcmc.")
    device: Device = "auto"
    sh_degree: int = Field(3, description="Spherical-harmonics degree of the colours (0 to 4).")
    sh_degree_interval: int = Field(1000, description="Raise the active SH degree every N steps.")
    test_every: int = Field(8, description="Every N-th image is held out for evaluation; 0 = none.")
    eval_every: int = Field(7_000, description="Evaluate held-out views every N steps (and at the end); 0 = end only.")
    checkpoint_every: int = Field(2_000, description="Steps between checkpoints; 0 = only at the end.")
    keep_checkpoints: int = 2
    progress_every: int = Field(100, description="Steps between progress lines on stdout / training_log.txt.")
    seed: int = 42
    ssim_lambda: float = 0.2
    init_opacity: float = 0.1
    init_scale: float = 1.0
    random_background: bool = False
    cap_max: int = Field(1_000_000, description="MCMC: the most Gaussians.")
    max_gaussians: int = Field(0, description="Densification never grows past this many Gaussians (either strategy); 0 = no cap.")
    metrics_port: int = Field(contract.DEFAULT_METRICS_PORT, description="Prometheus endpoint; 0 = off.")
    termination_log: Path = Path(contract.TERMINATION_LOG)
    resume: bool = Field(True, description="Continue from the newest compatible checkpoint.")
    scene_source: str | None = Field(None, description="s3://bucket/prefix/: fetch the scene into scene_dir first.")
    output_uri: str | None = Field(None, description="s3://bucket/prefix/: upload the outputs there on success.")
    formats: str = Field(",".join(contract.DEFAULT_FORMATS), description="Model files beside results.ply (always written).")
    reconstruct: Reconstruct = Field("IfMissing", description="SfM when the scene has images but no COLMAP model.")
    reconstruct_only: bool = Field(False, description="Stop after the reconstruction (the REST API's colmap_ba).")
    visible_adam: bool = Field(
        True, description="Adam moves only the Gaussians the step's view sees (less GPU work per step).")
    compile_loss: CompileLoss = Field(
        "auto", description=f"torch.compile the loss: auto = on CUDA for runs of {COMPILE_LOSS_MIN_STEPS:,}+ steps.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise invalid_options("Invalid options: " + "; ".join(_words(exc))) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, **_: PydanticBaseSettingsSource
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # flags and env vars are read by from_options only, never by accident

    @field_validator("scene_dir", mode="before")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # not Path('') == Path('.'), the cwd
            raise PydanticCustomError("missing", "required")
        return value

    @model_validator(mode="after")
    def _derive_and_check(self) -> TrainerConfig:
        if self.output_dir is None:
            self.output_dir = self.scene_dir / contract.OUTPUT_DIR
        if self.scene_id is None:
            self.scene_id = self.scene_dir.resolve().name
        problems = validate(self)
        if problems:
            raise invalid_options("Invalid options: " + "; ".join(problems))
        return self

    def replace(self, **changes: Any) -> TrainerConfig:
        """A copy with some options changed, checked again."""
        return type(self)(**{**dict(self), **changes})

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: every field, paths as strings (config.json, the termination message)."""
        return self.model_dump(mode="json")

    def loss_compiled(self, device_type: str) -> bool:
        """Whether training on `device_type` compiles its loss (see COMPILE_LOSS_MIN_STEPS)."""
        if self.compile_loss != "auto":
            return self.compile_loss == "always"
        return device_type == "cuda" and self.max_steps >= COMPILE_LOSS_MIN_STEPS

    @property
    def format_list(self) -> list[str]:
        """The formats to write, results.ply's `ply` first and always, each once."""
        names = [f.strip() for f in self.formats.split(",") if f.strip()]
        return list(dict.fromkeys(["ply", *names]))

    @property
    def out(self) -> Path:
        assert self.output_dir is not None
        return self.output_dir

    def resume_key(self, scene_fingerprint: str = "") -> dict[str, object]:
        """What a checkpoint must match to be resumed: the scene's content and every option that
        changes training. Only the options in NOT_IN_RESUME_KEY (where outputs go, how often to
        report/evaluate/checkpoint, labels) may change across restarts; a new field is part of the
        key unless it is listed there.
        """
        key: dict[str, object] = {name: getattr(self, name) for name in option_names() if name not in NOT_IN_RESUME_KEY}
        key["scene"] = scene_fingerprint
        return key


def option_names() -> list[str]:
    return list(TrainerConfig.model_fields)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return contract.ENV_PREFIX + name.upper()


def _words(exc: ValidationError) -> list[str]:
    """pydantic's errors, each naming the option's flag and env var."""
    words = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        where = f"{flag(name)} (or {env_var(name)})"
        if err["type"] == "missing":
            words.append(f"{where} is required")
        else:
            words.append(f"{name}: {err['msg']}, got {err['input']!r} from {where}")
    return words


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit code 2 with our reporting, not argparse's
        raise invalid_options(f"Invalid options: {message}")


def env_options(env: Mapping[str, str]) -> dict[str, str]:
    """The options set as SPLATOPS_<NAME> env vars; set empty or blank (by a template) is unset."""
    values = {name: env.get(env_var(name), "") for name in option_names()}
    return {name: raw for name, raw in values.items() if raw.strip()}


def flag_options(argv: Sequence[str] | None) -> dict[str, Any]:
    """The options given as flags (argparse's errors raise InvalidOptions); --help prints them all."""
    parser = _Parser(
        prog=PROG,
        description="Train a 3D Gaussian Splatting model (gsplat) from a COLMAP scene. Every option "
        f"can also be set as an environment variable {contract.ENV_PREFIX}<OPTION> (flags win).",
    )
    source = CliSettingsSource(TrainerConfig, root_parser=parser)
    return dict(source(args=list(argv) if argv is not None else True)())


def read_options(argv: Sequence[str] | None, env: Mapping[str, str]) -> dict[str, Any]:
    """Flags over env vars, not yet checked."""
    return {**env_options(env), **flag_options(argv)}


# Options that do not change the trained model (so a restarted pod may change them and still resume).
# scene_dir: the scene's content is in the key (its fingerprint), not the path it is mounted at.
NOT_IN_RESUME_KEY = frozenset(
    {
        "scene_dir", "output_dir", "scene_id", "device", "eval_every", "checkpoint_every",
        "keep_checkpoints", "progress_every", "metrics_port", "termination_log", "resume", "formats",
        "scene_source", "output_uri",  # where the scene comes from / outputs go, not what is trained
        "reconstruct", "reconstruct_only",  # the model they make is in the key (the scene fingerprint)
        "compile_loss",  # the same loss, compiled or not
    }
)


def key_differences(old: dict[str, object], new: dict[str, object]) -> list[str]:
    """Human words for how two resume keys differ (for the "not resuming" log line)."""
    words = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "<unset>"), new.get(name, "<unset>")
        if a != b:
            words.append("the scene's images or COLMAP model changed" if name == "scene" else f"{name} {a} -> {b}")
    return words


def _s3_ok(uri: str | None) -> bool:
    """Unset, or s3://<bucket>[/<prefix>] with a valid bucket name."""
    if uri is None:
        return True
    bucket = uri.removeprefix("s3://").split("/", 1)[0] if uri.startswith("s3://") else ""
    return 3 <= len(bucket) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)


def validate(cfg: TrainerConfig) -> list[str]:
    """Every problem with the options, in words a user can act on (empty: all good)."""
    checks: list[tuple[bool, str]] = [
        (cfg.data_factor in contract.DATA_FACTORS, f"data_factor must be one of {', '.join(map(str, contract.DATA_FACTORS))}, got {cfg.data_factor}"),
        (cfg.max_steps >= contract.MIN_STEPS, f"max_steps must be at least {contract.MIN_STEPS}, got {cfg.max_steps}"),
        (0 <= cfg.sh_degree <= contract.MAX_SH_DEGREE, f"sh_degree must be between 0 and {contract.MAX_SH_DEGREE}, got {cfg.sh_degree}"),
        (cfg.sh_degree_interval >= 1, f"sh_degree_interval must be at least 1, got {cfg.sh_degree_interval}"),
        (cfg.test_every == 0 or cfg.test_every >= 2, f"test_every must be 0 (no held-out views) or at least 2, got {cfg.test_every}"),
        (cfg.eval_every >= 0, f"eval_every must be 0 or more, got {cfg.eval_every}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be 0 or more, got {cfg.checkpoint_every}"),
        (cfg.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {cfg.keep_checkpoints}"),
        (cfg.progress_every >= 0, f"progress_every must be 0 (only at the end) or more, got {cfg.progress_every}"),
        (0.0 <= cfg.ssim_lambda <= 1.0, f"ssim_lambda must be between 0 and 1, got {cfg.ssim_lambda}"),
        (0.0 < cfg.init_opacity < 1.0, f"init_opacity must be between 0 and 1 (exclusive), got {cfg.init_opacity}"),
        (cfg.init_scale > 0.0, f"init_scale must be positive, got {cfg.init_scale}"),
        (cfg.cap_max >= 1, f"cap_max must be at least 1, got {cfg.cap_max}"),
        (cfg.max_gaussians >= 0, f"max_gaussians must be 0 (no cap) or more, got {cfg.max_gaussians}"),
        (0 <= cfg.metrics_port <= 65535, f"metrics_port must be 0 (off) or a TCP port, got {cfg.metrics_port}"),
        (bool(str(cfg.scene_id).strip()), "scene_id must not be empty"),
        (_s3_ok(cfg.scene_source), f"scene_source must be s3://bucket/prefix/, got {cfg.scene_source!r}"),
        (_s3_ok(cfg.output_uri), f"output_uri must be s3://bucket/prefix/, got {cfg.output_uri!r}"),
        (
            all(f in contract.FORMAT_FILES for f in cfg.format_list),
            f"formats must be a comma-separated list of {', '.join(contract.FORMAT_FILES)}, got {cfg.formats!r}",
        ),
    ]
    return [message for ok, message in checks if not ok]
