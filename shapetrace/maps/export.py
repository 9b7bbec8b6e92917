"""Writing a maps run to a folder: per-word PNGs, a labelled grid, the maps, a summary.

``DIR/maps.safetensors`` holds the aggregated maps of all 77 tokens under key ``maps``,
(h, w, 77) float32; ``DIR/summary.json`` names the tokens, files and settings. Every file
a run writes is listed under ``summary["files"]``, which is how a later run recognizes the
folder as an earlier run's (``foreign_files``) and replaces it as a whole.

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

from shapetrace._checks import show
from shapetrace.errors import InputShapeError, OutputError
from shapetrace.maps.heatmap import heatmap_image, labelled_grid, save_png, slug
from shapetrace.maps.text import PromptTokens

__all__ = ["SCHEMA", "WordMap", "foreign_files", "word_maps", "write_outputs", "written_files"]

SCHEMA = "shapetrace.maps/1"
#: Characters of a word kept in its heat map's file name (file systems allow 255 bytes).
NAME_CHARS = 40


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
    more_files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write PNGs (one per word, (H, W) = ``image_size``), ``grid.png``, ``maps.safetensors``
    and ``summary.json`` into ``out_dir``; returns the summary as written. ``more_files``
    names files a caller wrote there too (the overlays), listed under ``summary["files"]``
    so a later run replaces them with the rest."""
    from safetensors.torch import save_file

    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"out_dir {show(folder)} is a file; give a folder to write the maps in")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot make out_dir {show(folder)} ({err.strerror or err}); choose a folder you "
            "can write to"
        ) from None
    maps = maps.detach().to("cpu", torch.float32).contiguous()
    save_file({"maps": maps}, str(folder / "maps.safetensors"), metadata={"schema": SCHEMA})
    words = word_maps(maps, tokens)
    files: list[str] = []
    images = []
    labels = []
    for wm in words:
        name = f"{wm.index + 1:02d}_{slug(wm.word)[:NAME_CHARS]}.png"
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
            **(more_files or {}),
        },
        "maps": {"key": "maps", "shape": list(maps.shape), "dtype": "float32"},
        "settings": settings or {},
    }
    if extra:
        summary.update(extra)
    text = json.dumps(summary, indent=2, allow_nan=False)  # never NaN: JSON has none
    (folder / "summary.json").write_text(text + "\n", encoding="utf-8")
    return summary


def _listed(files: Any) -> list[str]:
    """Every file name under ``summary["files"]`` (strings, lists and dicts of them)."""
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [name for value in files.values() for name in _listed(value)]
    if isinstance(files, list):
        return [name for value in files for name in _listed(value)]
    return []


def foreign_files(folder: str | Path) -> list[str]:
    """The names in ``folder`` that are not an earlier ``shapetrace maps`` run's: those its
    ``summary.json`` (of this schema) does not list, or every name when there is none.
    An empty list means the folder can be replaced as a whole.

    >>> foreign_files("maps/")                                        # doctest: +SKIP
    ['notes.txt']
    """
    root = Path(folder)
    names = sorted(p.name for p in root.iterdir())
    try:
        summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return names
    if not isinstance(summary, dict) or summary.get("schema") != SCHEMA:
        return names
    listed = {*_listed(summary.get("files")), "summary.json"}
    return [n for n in names if n not in listed or not (root / n).is_file()]


def written_files(summary: dict[str, Any]) -> str:
    """What a summary says was written: '6 heat maps, grid.png, maps.safetensors (16, 16, 77)
    and summary.json'."""
    files = summary["files"]
    parts = [f"{len(files['heatmaps'])} heat map(s)"]
    parts += [files["grid"]] if files.get("grid") else []
    parts.append(f"{files['maps']} {tuple(summary['maps']['shape'])}")
    return f"{', '.join(parts)} and {files['summary']}"
