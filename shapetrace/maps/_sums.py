"""The data a store holds: one ``MapSum`` per ``MapKey``, and what a probe call looks like."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from shapetrace.maps._store_settings import Resolution

__all__ = ["Key", "Known", "MapKey", "MapSum"]


class MapKey(NamedTuple):
    """What one running sum holds: place, kind, grid (h, w) and, when the store keeps layers
    apart (``detail`` "layer" or "head"), the layer's name ("" otherwise)."""

    place: str
    kind: str
    resolution: Resolution
    layer: str = ""


Key = MapKey


class Known(NamedTuple):
    """A call the store checked before, as calls like it (same layer, grid, q and k shapes,
    device, grad mode) are summed: the sum's arguments, the shape of its maps, the bytes such
    a call holds while it waits, and the settings it was checked under."""

    args: tuple[Any, ...]
    maps: tuple[int, ...]
    nbytes: int
    settings: tuple[Any, ...]


class CallLike(Protocol):
    layer: Any
    query_heads: torch.Tensor
    key_heads: torch.Tensor

    def compute_probs(
        self, dtype: torch.dtype = ..., rows: torch.Tensor | slice | None = ..., *, grad: bool = ...
    ) -> torch.Tensor: ...


@dataclass
class MapSum:
    """Running sum of probabilities for one key.

    ``total`` is (rows kept, h*w, M) summed over heads, or (rows kept, H, h*w, M) when the store
    keeps heads; ``count`` the head maps added (calls x heads), so ``mean()`` is the mean over
    heads, layers and the window's forwards. ``layers`` names the layers that contributed.
    """

    total: torch.Tensor
    heads: int
    count: int = 0
    calls: int = 0
    layers: set[str] = field(default_factory=set)

    def summed(self) -> torch.Tensor:
        """(R, h*w, M): the total summed over heads."""
        return self.total.sum(dim=1) if self.total.dim() == 4 else self.total

    def mean(self) -> torch.Tensor:
        """(R, h*w, M): the mean over the head maps added."""
        return self.summed() / max(self.count, 1)
