"""Heat maps drawn over the decoded image: where each word's attention falls in the picture.

Each word's map is normalized on its own (as the plain heat maps), upsampled to the image,
coloured with the same viridis ramp and blended: ``alpha`` of the heat map over the image.
Files are written under a temporary name and renamed, so a folder never holds half an image.

>>> image = Image.new("RGB", (64, 64), "gray")
>>> overlay_image(torch.rand(8, 8), image, alpha=0.5).size
(64, 64)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shapetrace.errors import InputShapeError
from shapetrace.maps.heatmap import heatmap_image, labelled_grid, slug
from shapetrace.maps.text import PromptTokens

__all__ = [
    "OVERLAY_DIR",
    "Overlay",
    "overlay_image",
    "prepare_overlay",
    "save_atomic",
    "write_overlays",
]

OVERLAY_DIR = "overlay"


def overlay_image(map2d: torch.Tensor, image: Image.Image, *, alpha: float = 0.5) -> Image.Image:
    """One (h, w) map over ``image``: RGB of the image's size, ``alpha`` heat map."""
    if not 0.0 <= alpha <= 1.0:
        raise InputShapeError(f"alpha={alpha}: the heat map's opacity is in [0, 1]")
    if map2d.dim() != 2:
        raise InputShapeError(f"an overlay takes one (h, w) map, got {tuple(map2d.shape)}")
    width, height = image.size
    heat = heatmap_image(map2d, size=(height, width))
    return Image.blend(image.convert("RGB"), heat, alpha)


def save_atomic(image: Image.Image, path: Path) -> Path:
    """Save as PNG under a temporary name in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _names(tokens: PromptTokens) -> list[tuple[int, str, str]]:
    """(word index, word, file name) of each word that has tokens."""
    return [
        (i, word, f"{OVERLAY_DIR}/{i + 1:02d}_{slug(word)}.png")
        for i, (word, idx) in enumerate(zip(tokens.words, tokens.word_tokens, strict=True))
        if idx  # a word cut off by truncation has none
    ]


def write_overlays(
    out_dir: str | Path,
    maps: torch.Tensor,
    tokens: PromptTokens,
    image: Image.Image,
    *,
    alpha: float = 0.5,
) -> dict[str, Any]:
    """Write ``image.png`` (the decoded image), ``overlay/NN_word.png`` per word and
    ``overlay/grid.png`` into ``out_dir``; returns their names (relative to ``out_dir``).

    ``maps`` is (h, w, M) as ``aggregate`` gives; a word's map is the sum of its tokens'.
    """
    if maps.dim() != 3 or maps.shape[-1] != tokens.ids.shape[0]:
        raise InputShapeError(
            f"maps must be (h, w, {tokens.ids.shape[0]}) for this prompt, got {tuple(maps.shape)}"
        )
    folder = Path(out_dir)
    maps = maps.detach().to("cpu", torch.float32)
    save_atomic(image.convert("RGB"), folder / "image.png")
    files, tiles, labels = [], [image.convert("RGB")], ["image"]
    for i, word, name in _names(tokens):
        index = list(tokens.word_tokens[i])
        tile = overlay_image(maps[..., index].sum(dim=-1), image, alpha=alpha)
        save_atomic(tile, folder / name)
        files.append(name)
        tiles.append(tile)
        labels.append(word)
    grid = f"{OVERLAY_DIR}/grid.png"
    save_atomic(labelled_grid(tiles, labels), folder / grid)
    return {"image": "image.png", "overlays": files, "grid": grid, "alpha": alpha}


@dataclass
class Overlay:
    """A decoded image waiting to be drawn on: ``files`` names what ``write`` will write."""

    image: Image.Image
    tokens: PromptTokens
    vae: Path
    alpha: float = 0.5

    @property
    def files(self) -> dict[str, Any]:
        names = [name for _, _, name in _names(self.tokens)]
        grid = f"{OVERLAY_DIR}/grid.png"
        return {"image": "image.png", "overlays": names, "grid": grid, "vae": str(self.vae)}

    def write(self, out_dir: str | Path, maps: torch.Tensor) -> dict[str, Any]:
        """``write_overlays`` of this image into ``out_dir``."""
        return write_overlays(out_dir, maps, self.tokens, self.image, alpha=self.alpha)


def prepare_overlay(
    model: str | Path,
    vae: str | Path | None,
    latents: torch.Tensor,
    tokens: PromptTokens,
    *,
    device: str | torch.device = "cpu",
) -> Overlay | None:
    """Decode ``latents`` with the model folder's VAE (or ``vae``); None when there is none.

    >>> overlay = prepare_overlay("my-sd15", None, run.latents, run.tokens)  # doctest: +SKIP
    >>> overlay.image.size, overlay.files["grid"]                          # doctest: +SKIP
    ((512, 512), 'overlay/grid.png')
    """
    from shapetrace.maps.vae import decode, find_vae, load_vae

    folder = find_vae(model, vae)
    if folder is None:
        return None
    return Overlay(decode(load_vae(folder, device=device), latents), tokens, folder)
