"""The trainer's typed configuration: one dataclass, filled from CLI flags and SPLATOPS_* env vars.

Every field is an option: `--max-steps` / `SPLATOPS_MAX_STEPS`. The CLI (cli.py) builds it;
training reads it; config.json records it in full (plus scene_id and timestamp, as the original
pipeline did).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, get_args

from .errors import invalid_options

Strategy = Literal["default", "mcmc"]
Device = Literal["auto", "cuda", "cpu"]

DATA_FACTORS = (1, 2, 4, 8)


@dataclasses.dataclass
class TrainerConfig:
    scene_dir: Path
    output_dir: Path | None = None  # default: scene_dir / "gsplat"
    scene_id: str | None = None  # default: the scene directory's name
    data_factor: int = 1
    max_steps: int = 30_000
    strategy: Strategy = "default"
    device: Device = "auto"
    sh_degree: int = 3
    sh_degree_interval: int = 1000  # raise the active SH degree every N steps
    test_every: int = 8  # every N-th image is held out for evaluation; 0 = none
    eval_every: int = 7_000  # evaluate held-out views every N steps (and at the end); 0 = end only
    checkpoint_every: int = 2_000  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    progress_every: int = 100  # steps between progress lines on stdout / training_log.txt
    seed: int = 42
    ssim_lambda: float = 0.2
    init_opacity: float = 0.1
    init_scale: float = 1.0
    random_background: bool = False
    cap_max: int = 1_000_000  # MCMC: the most Gaussians
    max_gaussians: int = 0  # densification never grows past this many Gaussians (either strategy); 0 = no cap
    metrics_port: int = 9090  # 0 disables the Prometheus endpoint
    termination_log: Path = Path("/dev/termination-log")
    resume: bool = True  # continue from the newest compatible checkpoint
    scene_source: str | None = None  # s3://bucket/prefix/: fetch the scene into scene_dir first
    output_uri: str | None = None  # s3://bucket/prefix/: upload the outputs there on success

    def __post_init__(self) -> None:
        self.scene_dir = Path(self.scene_dir)
        if self.output_dir is None:
            self.output_dir = self.scene_dir / "gsplat"
        self.output_dir = Path(self.output_dir)
        self.termination_log = Path(self.termination_log)
        if self.scene_id is None:
            self.scene_id = self.scene_dir.resolve().name
        problems = validate(self)
        if problems:
            raise invalid_options("Invalid options: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: every field, paths as strings (config.json, the termination message)."""
        return {
            f.name: str(v) if isinstance(v, Path) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }

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
        key: dict[str, object] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_IN_RESUME_KEY
        }
        key["scene"] = scene_fingerprint
        return key


# Options that do not change the trained model (so a restarted pod may change them and still resume).
# scene_dir: the scene's content is in the key (its fingerprint), not the path it is mounted at.
NOT_IN_RESUME_KEY = frozenset(
    {
        "scene_dir", "output_dir", "scene_id", "device", "eval_every", "checkpoint_every",
        "keep_checkpoints", "progress_every", "metrics_port", "termination_log", "resume",
        "scene_source", "output_uri",  # where the scene comes from / outputs go, not what is trained
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
        (cfg.data_factor in DATA_FACTORS, f"data_factor must be one of {', '.join(map(str, DATA_FACTORS))}, got {cfg.data_factor}"),
        (cfg.max_steps >= 1, f"max_steps must be at least 1, got {cfg.max_steps}"),
        (cfg.strategy in get_args(Strategy), f"strategy must be one of {', '.join(get_args(Strategy))}, got {cfg.strategy!r}"),
        (cfg.device in get_args(Device), f"device must be one of {', '.join(get_args(Device))}, got {cfg.device!r}"),
        (0 <= cfg.sh_degree <= 4, f"sh_degree must be between 0 and 4, got {cfg.sh_degree}"),
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
    ]
    return [message for ok, message in checks if not ok]
