"""Writing a maps run to a folder: per-word PNGs, a labelled grid, the maps, a summary.

``DIR/maps.safetensors`` holds the aggregated maps of all 77 tokens under key ``maps``,
(h, w, 77) float32; ``DIR/summary.json`` names the tokens, files and settings.

>>> summary = write_outputs("out", maps, tokens, image_size=(512, 512))   # doctest: +SKIP
>>> summary["files"]["heatmaps"][:2]                                        # doctest: +SKIP
['01_a.png', '02_cat.png']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shapetrace.errors import InputShapeError
from shapetrace.maps.heatmap import heatmap_image, labelled_grid, save_png, slug
from shapetrace.maps.text import PromptTokens

__all__ = ["SCHEMA", "WordMap", "word_maps", "write_outputs"]

SCHEMA = "shapetrace.maps/1"


@dataclass(frozen=True)
class WordMap:
    """One prompt word's map (h, w): the sum of its tokens' maps (``tokens``: indices)."""

    word: str
    index: int
    tokens: tuple[int, ...]
    map: torch.Tensor


def word_maps(maps: torch.Tensor, tokens: PromptTokens) -> list[WordMap]:
    """Per-word maps from (h, w, 77) token maps; words cut off by truncation are skipped."""
    if maps.dim() != 3 or maps.shape[-1] != tokens.ids.shape[0]:
        raise InputShapeError(
            f"maps must be (h, w, {tokens.ids.shape[0]}) for this prompt, got {tuple(maps.shape)}"
        )
    out = []
    for i, (word, idx) in enumerate(zip(tokens.words, tokens.word_tokens, strict=True)):
        if idx:
            out.append(WordMap(word, i, idx, maps[..., list(idx)].sum(dim=-1)))
    return out


def write_outputs(
    out_dir: str | Path,
    maps: torch.Tensor,
    tokens: PromptTokens,
    *,
    image_size: tuple[int, int],
    settings: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write PNGs (one per word, (H, W) = ``image_size``), ``grid.png``, ``maps.safetensors``
    and ``summary.json`` into ``out_dir``; returns the summary as written."""
    from safetensors.torch import save_file

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    maps = maps.detach().to("cpu", torch.float32).contiguous()
    save_file({"maps": maps}, str(folder / "maps.safetensors"), metadata={"schema": SCHEMA})
    words = word_maps(maps, tokens)
    files: list[str] = []
    images = []
    labels = []
    for wm in words:
        name = f"{wm.index + 1:02d}_{slug(wm.word)}.png"
        img = heatmap_image(wm.map, size=image_size)
        save_png(img, folder / name)
        files.append(name)
        images.append(img)
        labels.append(wm.word)
    grid_name = None
    if images:
        ends = [(0, "<sot>"), (tokens.length - 1, "<eot>")]
        extra_imgs = [heatmap_image(maps[..., i], size=image_size) for i, _ in ends]
        grid = labelled_grid(
            [extra_imgs[0], *images, extra_imgs[1]], [ends[0][1], *labels, ends[1][1]]
        )
        grid_name = "grid.png"
        save_png(grid, folder / grid_name)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "prompt": tokens.prompt,
        "tokens": [
            {
                "index": j,
                "id": int(tokens.ids[j]),
                "text": tokens.label(j),
                "word": tokens.token_word[j] if tokens.token_word[j] >= 0 else None,
            }
            for j in range(tokens.ids.shape[0])
        ],
        "truncated": tokens.truncated,
        "words": [
            {"word": wm.word, "index": wm.index, "tokens": list(wm.tokens), "file": f}
            for wm, f in zip(words, files, strict=True)
        ],
        "files": {
            "maps": "maps.safetensors",
            "grid": grid_name,
            "heatmaps": files,
            "summary": "summary.json",
        },
        "maps": {"key": "maps", "shape": list(maps.shape), "dtype": "float32"},
        "settings": settings or {},
    }
    if extra:
        summary.update(extra)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
