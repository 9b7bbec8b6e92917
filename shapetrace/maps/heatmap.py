"""PNG heat maps of per-token attention, with numpy and pillow only.

Each map is normalized to [0, 1] on its own (min to max), upsampled to the image size,
coloured with a viridis ramp and saved; ``labelled_grid`` puts them side by side with the word
under each.

>>> img = heatmap_image(torch.rand(16, 16), size=(512, 512))
>>> img.size, img.mode
((512, 512), 'RGB')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from shapetrace.errors import InputShapeError

__all__ = [
    "colorize",
    "heatmap_image",
    "labelled_grid",
    "normalize",
    "save_png",
    "slug",
    "upsample",
]

#: viridis sampled at 9 evenly spaced points, linearly interpolated between them.
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def normalize(map2d: torch.Tensor) -> torch.Tensor:
    """(h, w) -> (h, w) in [0, 1] by its own min and max; a constant map becomes zeros."""
    x = map2d.detach().to(torch.float32)
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 0.0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def upsample(map2d: torch.Tensor, size: tuple[int, int], *, mode: str = "bilinear") -> torch.Tensor:
    """(h, w) -> (H, W) with ``F.interpolate`` ("bilinear" or "nearest")."""
    if map2d.dim() != 2:
        raise InputShapeError(f"a heat map is one (h, w) map, got {tuple(map2d.shape)}")
    x = map2d[None, None].to(torch.float32)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")[0, 0]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)[0, 0]


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 viridis colours (values clipped)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    frac = (v - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[hi] * frac
    return np.round(rgb).astype(np.uint8)


def heatmap_image(
    map2d: torch.Tensor, *, size: tuple[int, int] | None = None, mode: str = "bilinear"
) -> Image.Image:
    """One map (h, w) as an RGB image of ``size`` (H, W) (default: the map's own size).

    Note pillow reports ``img.size`` as (width, height).
    """
    x = normalize(map2d)
    if size is not None and tuple(size) != tuple(x.shape):
        x = upsample(x, (int(size[0]), int(size[1])), mode=mode).clamp(0.0, 1.0)
    return Image.fromarray(colorize(x.cpu().numpy()))


def labelled_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str],
    *,
    columns: int | None = None,
    tile: int = 128,
    pad: int = 4,
) -> Image.Image:
    """Images resized to ``tile`` pixels wide, in a grid, each with its label underneath."""
    if len(images) != len(labels):
        raise InputShapeError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        raise InputShapeError("no heat maps to put in a grid")
    font = ImageFont.load_default()
    cols = columns or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    w0, h0 = images[0].size
    th = max(1, round(tile * h0 / w0))
    label_h = 16
    cell_w, cell_h = tile + pad, th + label_h + pad
    grid = Image.new("RGB", (cols * cell_w + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(grid)
    for k, (img, label) in enumerate(zip(images, labels, strict=True)):
        r, c = divmod(k, cols)
        x, y = pad + c * cell_w, pad + r * cell_h
        grid.paste(img.resize((tile, th), Image.Resampling.NEAREST), (x, y))
        text = label if len(label) <= 18 else label[:16] + ".."
        draw.text((x + 2, y + th + 2), text, fill="black", font=font)
    return grid


def slug(word: str) -> str:
    """A file-name-safe form of a word: 'cat,' -> 'cat'."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", word).strip("_")
    return s or "token"


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG, creating the folder; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    image.save(p, format="PNG")
    return p
