"""Seeded tensors to go with drawn shapes: the values of every example come from a
``torch.Generator`` seeded by the example's seed, so shrinking works on the shapes.

Example::

    >>> random_tensor((2, 3), seed=0).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from shapetrace.errors import InputShapeError

if TYPE_CHECKING:
    from shapetrace.testing.strategies import AttentionShapes

__all__ = ["random_key_mask", "random_qkv", "random_tensor"]


def random_tensor(
    shape: Sequence[int],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> torch.Tensor:
    """Standard normal values times ``scale``, from a CPU generator seeded with ``seed``.

    Values are drawn in float64 on the CPU and then cast, so the same seed gives the same
    numbers (up to rounding) on every device and dtype.

    >>> random_tensor((2, 3), seed=0).shape
    torch.Size([2, 3])
    >>> torch.equal(random_tensor((4,), seed=7), random_tensor((4,), seed=7))
    True
    """
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * scale
    return values.to(device=device, dtype=dtype)


def random_key_mask(
    batch: int,
    tokens: int,
    *,
    seed: int,
    keep_probability: float = 0.6,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A boolean key mask (batch, tokens), True = attend; every row keeps at least one key.

    >>> mask = random_key_mask(3, 5, seed=1)
    >>> mask.shape, bool(mask.any(dim=-1).all())
    (torch.Size([3, 5]), True)
    """
    if batch < 1 or tokens < 1:
        raise InputShapeError(f"a key mask needs batch >= 1 and tokens >= 1, got {batch}, {tokens}")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand((batch, tokens), generator=generator) < keep_probability
    first = torch.randint(tokens, (batch,), generator=generator)
    keep[torch.arange(batch), first] = True
    return keep.to(device)


def random_qkv(
    shapes: AttentionShapes,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded split-head q (B, H, N, d), k and v (B, H, M, d) for ``shapes``.

    >>> from shapetrace.testing import AttentionShapes
    >>> q, k, v = random_qkv(AttentionShapes(2, 8, 40, 64, 77, 320, 768))
    >>> tuple(q.shape), tuple(k.shape)
    ((2, 8, 64, 40), (2, 8, 77, 40))
    """
    s = shapes
    base = s.seed * 1009
    q = random_tensor(
        (s.batch, s.heads, s.query_tokens, s.head_dim),
        seed=base,
        dtype=dtype,
        device=device,
        scale=scale,
    )
    k, v = (
        random_tensor(
            (s.batch, s.heads, s.context_tokens, s.head_dim),
            seed=base + i,
            dtype=dtype,
            device=device,
            scale=scale,
        )
        for i in (1, 2)
    )
    return q, k, v
