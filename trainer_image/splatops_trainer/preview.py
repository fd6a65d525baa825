"""preview.png: held-out views side by side with their renders, each labelled with its PSNR.

A grid of pairs (ground truth | render), two pairs a row, each image scaled so its longer side is
CELL pixels (the grid at most MAX_WIDTH wide). Written atomically beside results.ply at each evaluation (the newest wins)
and at the end, so a user (or the web page) sees what the model looks like before reading numbers.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import atomic

MAX_WIDTH = 2048
CELL = 320  # each image's longer side, up or down: readable, and the PNG stays ~1 MB for photos
MAX_VIEWS = 6  # pairs in the grid, spread evenly over the held-out views
PAIRS_PER_ROW = 2
LABEL_HEIGHT = 16
GAP = 4
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclasses.dataclass(frozen=True)
class PreviewView:
    name: str
    truth: np.ndarray  # [H, W, 3] uint8
    render: np.ndarray  # [H, W, 3] uint8
    psnr: float


def pick(count: int, limit: int = MAX_VIEWS) -> list[int]:
    """Indices of at most `limit` of `count` views, evenly spread (first and last included)."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def render_grid(views: Sequence[PreviewView], step: int | None = None) -> Image.Image:
    if not views:
        raise ValueError("no views to preview")
    per_row = min(PAIRS_PER_ROW, len(views))
    h0, w0 = views[0].truth.shape[:2]
    scale = min(CELL / max(w0, h0), (MAX_WIDTH - GAP * (2 * per_row + 1)) // (2 * per_row) / w0)
    cell_w, cell_h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    rows = -(-len(views) // per_row)
    width = GAP + per_row * 2 * (cell_w + GAP)
    height = GAP + rows * (cell_h + LABEL_HEIGHT + GAP)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, view in enumerate(views):
        x = GAP + (i % per_row) * 2 * (cell_w + GAP)
        y = GAP + (i // per_row) * (cell_h + LABEL_HEIGHT + GAP)
        for j, pixels in enumerate((view.truth, view.render)):
            tile = Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize((cell_w, cell_h), Image.Resampling.LANCZOS)
            grid.paste(tile, (x + j * (cell_w + GAP), y + LABEL_HEIGHT))
        draw.text((x, y + 2), _label(draw, font, view, step, 2 * cell_w + GAP), fill=TEXT, font=font)
    return grid


def _label(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, view: PreviewView, step: int | None, width: int) -> str:
    """The longest of the label's forms that fits over the pair; the PSNR always stays."""
    at = f" @ {step}" if step is not None else ""
    for text in (f"{view.name}: truth | render{at}  PSNR {view.psnr:.2f} dB", f"{view.name}  PSNR {view.psnr:.2f} dB",
                 f"PSNR {view.psnr:.2f} dB"):
        if draw.textlength(text, font=font) <= width:
            return text
    return f"{view.psnr:.1f} dB"


def write_preview(path: Path, views: Sequence[PreviewView], step: int | None = None) -> int:
    """Write the grid as PNG, atomically; returns its size in bytes."""
    buf = io.BytesIO()
    render_grid(views, step).save(buf, format="PNG", optimize=True)
    atomic.write_bytes(path, buf.getvalue())
    return buf.tell()
