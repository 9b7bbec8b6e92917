"""Where a layer's token grid comes from: never from sqrt(N), always from something the model
was given.

- a UNet block's 4-D input (B, C, h, w): its tokens are the h·w pixels;
- a patch embedding (PixArt, DiT, SD3) given (B, C, H, W) with patch size p: (H/p)·(W/p);
- Flux's ``img_ids`` (row, column per packed token), when they hold values;
- grids the caller vouches for (``trace(model, grids=[(64, 64)])``, e.g. a packed latent on
  ``meta``, whose ids hold no values).

A layer takes the innermost candidate whose h·w equals its own token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Grid", "grid_of_ids", "grid_of_input", "grid_of_patches"]

_INPUT_KWARGS = ("hidden_states", "x", "sample", "query")


@dataclass(frozen=True)
class Grid:
    """A token grid and where it was read: ``feature_map`` is the 4-D input it came from."""

    h: int
    w: int
    source: str
    feature_map: tuple[int, ...] | None = None

    @property
    def tokens(self) -> int:
        return self.h * self.w


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in _INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return None


def grid_of_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Grid | None:
    """The grid of an enclosing block's 4-D input, or Flux's ``img_ids`` where they have
    values (column 1 the row, column 2 the column of each packed latent patch)."""
    x = first_tensor(args, kwargs)
    if x is not None and x.dim() == 4:
        return Grid(int(x.shape[2]), int(x.shape[3]), "enclosing block input", tuple(x.shape))
    ids = kwargs.get("img_ids")
    if isinstance(ids, torch.Tensor):
        return grid_of_ids(ids)
    return None


def grid_of_ids(ids: torch.Tensor) -> Grid | None:
    """Rows and columns counted from position ids (N, 3) or (B, N, 3), if they hold values."""
    if ids.device.type == "meta" or ids.shape[-1] < 3 or ids.numel() == 0:
        return None
    flat = ids.reshape(-1, ids.shape[-1])
    rows = int(torch.unique(flat[:, 1]).numel())
    cols = int(torch.unique(flat[:, 2]).numel())
    if rows * cols != flat.shape[0] // (ids.shape[0] if ids.dim() == 3 else 1):
        return None
    return Grid(rows, cols, "img_ids")


def grid_of_patches(module: torch.nn.Module, args: tuple[Any, ...]) -> Grid | None:
    """(H/p, W/p) of a patch embedding's (B, C, H, W) input."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    size = vars(module).get("patch_size")
    if x is None or x.dim() != 4 or not isinstance(size, int) or size < 1:
        return None
    return Grid(int(x.shape[2]) // size, int(x.shape[3]) // size, f"patch embedding (p={size})")
