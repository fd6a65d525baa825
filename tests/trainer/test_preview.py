"""preview.png's grid and the Reporter's metrics.jsonl / preview hooks (no training)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatops import contract
from splatops_trainer import preview
from splatops_trainer.config import TrainerConfig
from splatops_trainer.report import Reporter


def _view(i: int, w: int, h: int) -> preview.PreviewView:
    truth = np.full((h, w, 3), 200, np.uint8)
    render = np.zeros((h, w, 3), np.uint8)
    render[: h // 2] = 255
    return preview.PreviewView(name=f"img_{i:03d}.png", truth=truth, render=render, psnr=20.0 + i)


@pytest.mark.parametrize(
    "count, size, max_width",
    [(1, (64, 48), 320 * 2 + 12), (3, (64, 48), 320 * 4 + 20), (3, (300, 200), 320 * 4 + 20),
     (6, (1920, 1080), 320 * 4 + 20), (2, (100, 5000), 6 * 4 + 20), (2, (5000, 100), 320 * 4 + 20)],
)
def test_grid_is_at_most_2048_wide_and_keeps_the_aspect(count: int, size: tuple[int, int], max_width: int) -> None:
    w, h = size
    grid = preview.render_grid([_view(i, w, h) for i in range(count)], step=100)
    assert grid.width == max_width <= 2048
    rows = -(-count // preview.PAIRS_PER_ROW)
    cell_h = max(1, round(h * preview.CELL / max(w, h)))
    assert grid.height == preview.GAP + rows * (cell_h + preview.LABEL_HEIGHT + preview.GAP)


def test_truth_left_render_right_under_a_label() -> None:
    grid = np.asarray(preview.render_grid([_view(0, 192, 144)]))
    top = preview.GAP + preview.LABEL_HEIGHT
    assert tuple(grid[top + 30, preview.GAP + 10]) == (200, 200, 200)  # ground truth
    assert tuple(grid[top + 5, preview.GAP + preview.CELL + preview.GAP + 10]) == (255, 255, 255)  # render, top half
    label = grid[preview.GAP : top - 2, preview.GAP : preview.GAP + 120]
    assert (label > 200).any()  # the PSNR label is drawn


@pytest.mark.parametrize("count, limit, expected", [(3, 6, [0, 1, 2]), (11, 6, [0, 2, 4, 6, 8, 10]), (7, 2, [0, 6])])
def test_pick_spreads_views(count: int, limit: int, expected: list[int]) -> None:
    assert preview.pick(count, limit) == expected


def test_reporter_writes_metrics_and_preview(tmp_path: Path) -> None:
    (tmp_path / "scene").mkdir()
    cfg = TrainerConfig(scene_dir=tmp_path / "scene", metrics_port=0, max_steps=20)
    with Reporter(cfg, stdout=io.StringIO()) as reporter:
        reporter.on_progress(contract.Progress(step=10, max_steps=20, loss=0.5, num_gaussians=7, steps_per_sec=3.0))
        reporter.on_eval(contract.Progress(step=20, max_steps=20, loss=0.4, psnr=25.0, ssim=0.9, event="eval"))
        reporter.on_preview(20, [_view(0, 32, 24), _view(1, 32, 24)])
    lines = [json.loads(x) for x in (cfg.out / contract.METRICS_JSONL).read_text().splitlines()]
    assert [(x["event"], x["step"]) for x in lines] == [("progress", 10), ("eval", 20)]
    assert lines[0]["num_gaussians"] == 7 and lines[1]["psnr"] == 25.0
    with Image.open(cfg.out / contract.PREVIEW_PNG) as img:
        assert img.format == "PNG" and img.width == preview.GAP + 2 * 2 * (preview.CELL + preview.GAP)
    assert not [p for p in cfg.out.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_formats_option_is_validated(tmp_path: Path) -> None:
    from splatops_trainer.errors import TrainerError

    assert TrainerConfig(scene_dir=tmp_path, formats="spz").format_list == ["ply", "spz"]
    with pytest.raises(TrainerError, match="formats must be"):
        TrainerConfig(scene_dir=tmp_path, formats="ply,gltf")
