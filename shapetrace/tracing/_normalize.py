"""Shapes as the code produced them, and the one normalized layout the journey records."""

from __future__ import annotations

import torch

__all__ = ["heads_layout", "to_bhtd"]

Shape = tuple[int, ...]


def heads_layout(raw: Shape, batch: int | None, heads: int | None) -> tuple[Shape, str, int | None]:
    """Map a per-head tensor's raw shape to (B, H, T, d); return (shape, layout, heads).

    >>> heads_layout((16, 1024, 40), batch=2, heads=8)
    ((2, 8, 1024, 40), '(B*H, T, d) batch-major', 8)
    >>> heads_layout((4, 1024, 40), batch=2, heads=8)[1]
    '(B*H, T, d) batch-major, in slices of 4 rows'
    >>> heads_layout((2, 8, 1024, 40), batch=2, heads=8)
    ((2, 8, 1024, 40), '(B, H, T, d)', 8)
    """
    if len(raw) == 4:
        if heads is not None and raw[1] != heads and raw[2] == heads:
            return (raw[0], raw[2], raw[1], raw[3]), "(B, T, H, d)", heads
        return raw, "(B, H, T, d)", raw[1]
    if len(raw) == 3 and batch:
        if heads and raw[0] == batch * heads:
            return (batch, heads, raw[1], raw[2]), "(B*H, T, d) batch-major", heads
        if heads and raw[0] < batch * heads and (batch * heads) % raw[0] == 0:
            # a processor that works on slices of the (B*H) axis (diffusers' sliced attention)
            layout = f"(B*H, T, d) batch-major, in slices of {raw[0]} rows"
            return (batch, heads, raw[1], raw[2]), layout, heads
        if raw[0] == batch:
            return (batch, 1, raw[1], raw[2]), "(B, T, d) one head", 1
        if raw[0] % batch == 0:
            h = raw[0] // batch
            return (batch, h, raw[1], raw[2]), "(B*H, T, d) batch-major", h
    return raw, "unrecognized", heads


def to_bhtd(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A view of a per-head tensor (or scores) in (B, H, T, X) layout."""
    if tensor.dim() == 4:
        if tensor.shape[1] != heads and tensor.shape[2] == heads:
            return tensor.transpose(1, 2)
        return tensor
    if tensor.dim() == 3:
        return tensor.reshape(batch, heads, tensor.shape[1], tensor.shape[2])
    raise ValueError(f"cannot read a {tuple(tensor.shape)} tensor as (B, H, T, X)")
