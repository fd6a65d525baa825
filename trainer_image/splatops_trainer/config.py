"""The trainer's typed configuration: one dataclass, filled from CLI flags and SPLATOPS_* env vars.

Every field is an option: `--max-steps` / `SPLATOPS_MAX_STEPS`. The CLI (cli.py) builds it;
training reads it; config.json records it in full (plus scene_id and timestamp, as the original
pipeline did).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

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
    metrics_port: int = 9090  # 0 disables the Prometheus endpoint
    termination_log: Path = Path("/dev/termination-log")
    resume: bool = True  # continue from the newest compatible checkpoint

    def __post_init__(self) -> None:
        self.scene_dir = Path(self.scene_dir)
        if self.output_dir is None:
            self.output_dir = self.scene_dir / "gsplat"
        self.output_dir = Path(self.output_dir)
        self.termination_log = Path(self.termination_log)
        if self.scene_id is None:
            self.scene_id = self.scene_dir.resolve().name

    @property
    def out(self) -> Path:
        assert self.output_dir is not None
        return self.output_dir

    def resume_key(self) -> dict[str, object]:
        """The options a checkpoint must match to be resumed (others may change across restarts)."""
        return {
            "data_factor": self.data_factor,
            "max_steps": self.max_steps,
            "strategy": self.strategy,
            "sh_degree": self.sh_degree,
            "test_every": self.test_every,
            "seed": self.seed,
        }
