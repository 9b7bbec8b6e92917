"""Tensors kept to be read later: their version counters at the time they were kept, and
whether the model has written into them since (a view and its base share one counter)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["versions", "written"]


def versions(tensors: Sequence[torch.Tensor]) -> tuple[int, ...] | None:
    """The counters to compare with later, or None when a tensor keeps none (made under
    ``torch.inference_mode``): such tensors cannot be held and must be read at once."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:  # an inference tensor's counter cannot be read
        if any(t.is_inference() for t in tensors):
            return None
        raise


def written(tensors: Sequence[torch.Tensor], kept: tuple[int, ...]) -> list[torch.Tensor]:
    """The tensors written into in place since ``kept = versions(tensors)``."""
    return [t for t, v in zip(tensors, kept) if t._version != v]
