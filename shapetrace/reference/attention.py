"""The tutorials' attention, written so it runs: seed 000's multi-head ``CrossAttention`` and
seed 001's single-head functional ``cross_attention`` on 4-D feature maps.

Both check their inputs' shapes up front (the numbers are ints even on ``meta``), so a wrong
width fails with an :class:`~shapetrace.errors.InputShapeError` that names the module, the
shapes and the fix, instead of a matmul error deep inside.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shapetrace.errors import InputShapeError

__all__ = [
    "CrossAttention",
    "SpatialCrossAttention",
    "SpatialCrossAttentionParams",
    "cross_attention",
]


class CrossAttention(nn.Module):
    """Seed 000's multi-head cross-attention: image tokens query text tokens.

    ``to_q: query_dim -> query_dim``, ``to_k``/``to_v: context_dim -> query_dim``, heads split
    with ``view`` + ``transpose``, ``softmax(Q K^T / sqrt(d_head)) V``, heads merged, ``to_out``.

    Example::

        >>> attn = CrossAttention(query_dim=512, context_dim=768, num_heads=8)
        >>> attn(torch.randn(2, 64, 512), torch.randn(2, 77, 768)).shape
        torch.Size([2, 64, 512])
    """

    def __init__(self, query_dim: int, context_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if num_heads < 1:
            raise InputShapeError(
                f"CrossAttention: num_heads {num_heads} must be >= 1; SD 1.5 uses 8"
            )
        if query_dim % num_heads != 0:
            lower = query_dim - query_dim % num_heads
            raise InputShapeError(
                f"CrossAttention: query_dim {query_dim} is not divisible by num_heads "
                f"{num_heads}, so heads cannot split it evenly; use a query_dim that is a "
                f"multiple of {num_heads} (e.g. {lower or num_heads}) or a num_heads that "
                f"divides {query_dim}"
            )
        self.query_dim = query_dim
        self.context_dim = context_dim
        self.num_heads = num_heads
        self.d_head = query_dim // num_heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    @property
    def heads(self) -> int:
        """The head count, under diffusers' name for it (same as ``num_heads``)."""
        return self.num_heads

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, context_dim={self.context_dim}, "
            f"num_heads={self.num_heads}, d_head={self.d_head}"
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, query_dim)."""
        self._check(x, context)
        batch_size = x.size(0)
        q = self.to_q(x)  # (B, N, inner)
        k = self.to_k(context)  # (B, M, inner)
        v = self.to_v(context)  # (B, M, inner)
        q = q.view(batch_size, -1, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, N, d)
        k = k.view(batch_size, -1, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, M, d)
        v = v.view(batch_size, -1, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, M, d)
        scores = torch.matmul(q, k.transpose(-2, -1)) / (self.d_head**0.5)  # (B, H, N, M)
        weights = torch.softmax(scores, dim=-1)  # each row sums to 1 over the M keys
        attn = torch.matmul(weights, v)  # (B, H, N, d)
        attn = attn.transpose(1, 2).contiguous()  # (B, N, H, d)
        attn = attn.view(batch_size, -1, self.query_dim)  # (B, N, inner)
        out: Tensor = self.to_out(attn)  # (B, N, query_dim)
        return out

    def _check(self, x: Tensor, context: Tensor) -> None:
        """Raise InputShapeError for a rank, width or batch that cannot work."""
        where = f"CrossAttention(query_dim={self.query_dim}, context_dim={self.context_dim})"
        if x.dim() != 3:
            raise InputShapeError(
                f"{where}: x has shape {tuple(x.shape)}, expected (B, N, {self.query_dim}); "
                "flatten a (B, C, H, W) map with x.flatten(2).transpose(1, 2)"
            )
        if context.dim() != 3:
            raise InputShapeError(
                f"{where}: context has shape {tuple(context.shape)}, expected "
                f"(B, M, {self.context_dim}); add the batch axis with context.unsqueeze(0)"
            )
        if x.shape[-1] != self.query_dim:
            raise InputShapeError(
                f"{where}: x has width {x.shape[-1]} (shape {tuple(x.shape)}) but query_dim is "
                f"{self.query_dim}; pass x of shape (B, N, {self.query_dim}) or build with "
                f"query_dim={x.shape[-1]}"
            )
        if context.shape[-1] != self.context_dim:
            raise InputShapeError(
                f"{where}: context has width {context.shape[-1]} (shape {tuple(context.shape)}) "
                f"but context_dim is {self.context_dim}; pass context of shape "
                f"(B, M, {self.context_dim}) or build with context_dim={context.shape[-1]}"
            )
        if x.shape[0] != context.shape[0]:
            raise InputShapeError(
                f"{where}: x has batch {x.shape[0]} (shape {tuple(x.shape)}) but context has "
                f"batch {context.shape[0]} (shape {tuple(context.shape)}); give both the same "
                "batch, e.g. context.expand(x.shape[0], -1, -1)"
            )


class SpatialCrossAttentionParams(Protocol):
    """What :func:`cross_attention` needs: the four projections, as ``nn.Linear`` modules.

    ``to_q: C -> D``, ``to_k: D -> D``, ``to_v: D -> D``, ``to_out: D -> C``.
    """

    to_q: nn.Linear
    to_k: nn.Linear
    to_v: nn.Linear
    to_out: nn.Linear


def cross_attention(x: Tensor, context: Tensor, params: SpatialCrossAttentionParams) -> Tensor:
    """Seed 001's single-head cross-attention on a 4-D feature map, with persistent weights.

    The seed built fresh ``nn.Linear`` layers inside the function (new random weights on every
    call); here they come in ``params`` and are *called*, so forward hooks on them fire.
    One head of width D, so the scale 1/sqrt(D) is 1/sqrt(head_dim).

    Example::

        >>> attn = SpatialCrossAttention(channels=32, context_dim=64)
        >>> cross_attention(torch.randn(2, 32, 16, 16), torch.randn(2, 10, 64), attn).shape
        torch.Size([2, 32, 16, 16])
    """
    _check_spatial(x, context, params)
    batch_size, channels, height, width = x.shape
    dim = context.shape[-1]
    x_flat = x.reshape(batch_size, channels, height * width).permute(0, 2, 1)  # (B, HW, C)
    q = params.to_q(x_flat)  # (B, HW, D)
    k = params.to_k(context)  # (B, M, D)
    v = params.to_v(context)  # (B, M, D)
    scores = torch.matmul(q, k.transpose(-2, -1)) / (dim**0.5)  # (B, HW, M)
    weights = F.softmax(scores, dim=-1)  # each image token over the M text tokens
    attended = torch.matmul(weights, v)  # (B, HW, D)
    out = params.to_out(attended)  # (B, HW, C)
    return out.permute(0, 2, 1).reshape(batch_size, channels, height, width)  # (B, C, H, W)


def _check_spatial(x: Tensor, context: Tensor, params: SpatialCrossAttentionParams) -> None:
    """Raise InputShapeError when x, context and the projections do not fit together."""
    channels, dim = params.to_q.in_features, params.to_k.in_features
    where = f"cross_attention(channels={channels}, context_dim={dim})"
    if x.dim() != 4:
        raise InputShapeError(
            f"{where}: x has shape {tuple(x.shape)}, expected a feature map (B, {channels}, H, W)"
            "; for token sequences (B, N, C) use CrossAttention"
        )
    if context.dim() != 3:
        raise InputShapeError(
            f"{where}: context has shape {tuple(context.shape)}, expected (B, M, {dim}); "
            "add the batch axis with context.unsqueeze(0)"
        )
    if x.shape[1] != channels:
        raise InputShapeError(
            f"{where}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but to_q expects "
            f"{channels}; pass x of shape (B, {channels}, H, W) or build with "
            f"channels={x.shape[1]}"
        )
    if context.shape[-1] != dim:
        raise InputShapeError(
            f"{where}: context has width {context.shape[-1]} (shape {tuple(context.shape)}) but "
            f"to_k expects {dim}; pass context of shape (B, M, {dim}) or build with "
            f"context_dim={context.shape[-1]}"
        )
    if x.shape[0] != context.shape[0]:
        raise InputShapeError(
            f"{where}: x has batch {x.shape[0]} (shape {tuple(x.shape)}) but context has batch "
            f"{context.shape[0]} (shape {tuple(context.shape)}); give both the same batch"
        )


class SpatialCrossAttention(nn.Module):
    """The module that holds :func:`cross_attention`'s weights; one head (``heads = 1``).

    ``to_q: C -> D``, ``to_k: D -> D``, ``to_v: D -> D``, ``to_out: D -> C``.

    Example::

        >>> attn = SpatialCrossAttention(channels=320, context_dim=768)
        >>> attn(torch.randn(1, 320, 32, 32), torch.randn(1, 77, 768)).shape
        torch.Size([1, 320, 32, 32])
    """

    heads = 1

    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.context_dim = context_dim
        self.to_q = nn.Linear(channels, context_dim)
        self.to_k = nn.Linear(context_dim, context_dim)
        self.to_v = nn.Linear(context_dim, context_dim)
        self.to_out = nn.Linear(context_dim, channels)

    @property
    def num_heads(self) -> int:
        """Always 1: seed 001 attends with a single head of width ``context_dim``."""
        return self.heads

    @property
    def d_head(self) -> int:
        """The head width, ``context_dim`` (one head)."""
        return self.context_dim

    def extra_repr(self) -> str:
        return f"channels={self.channels}, context_dim={self.context_dim}, heads=1"

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, C, H, W), context (B, M, D) -> (B, C, H, W)."""
        return cross_attention(x, context, self)
