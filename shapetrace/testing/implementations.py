"""Independent attention implementations that every other one is compared against.

- the float64 math reference, :func:`reference_attention`, computed from a module's own
  projection weights (:class:`ProjectionWeights`);
- three ways to attend over split heads: plain matmul/softmax (:func:`attend`), einops
  (:func:`einops_attend`) and fused ``F.scaled_dot_product_attention`` (:func:`sdpa_attend`);
- modules with seed 000's interface built on the latter two (:class:`EinopsCrossAttention`,
  :class:`SDPACrossAttention`), and diffusers ``Attention`` builders that share weights.

Masks here are boolean, broadcastable to (B, H, N, M), True = attend. A query whose keys are
all masked gets zeros, as ``F.scaled_dot_product_attention`` gives on CPU: defined, not NaN.

Example::

    >>> q, k, v = torch.randn(2, 8, 64, 40), torch.randn(2, 8, 77, 40), torch.randn(2, 8, 77, 40)
    >>> attend(q, k, v).shape  # (B, H, N, d)
    torch.Size([2, 8, 64, 40])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shapetrace.testing._weights import ProjectionWeights, projection

__all__ = [
    "ATTENDERS",
    "EinopsCrossAttention",
    "ProjectionWeights",
    "ReferenceOutput",
    "SDPACrossAttention",
    "attend",
    "attention_probs",
    "build_diffusers_attention",
    "diffusers_attention_like",
    "einops_attend",
    "merge_heads",
    "projection",
    "reference_attention",
    "sdpa_attend",
    "split_heads",
]

Attender = Callable[..., Tensor]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H*d) -> (B, H, N, d): ``reshape(B, N, H, d).transpose(1, 2)``.

    >>> split_heads(torch.zeros(2, 77, 320), 8).shape
    torch.Size([2, 8, 77, 40])
    """
    batch, tokens, inner = x.shape
    return x.reshape(batch, tokens, heads, inner // heads).transpose(1, 2)  # (B, H, N, d)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H*d), the exact inverse of :func:`split_heads`.

    >>> merge_heads(torch.zeros(2, 8, 77, 40)).shape
    torch.Size([2, 77, 320])
    """
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (B, N, H*d)


def attention_probs(
    q: Tensor, k: Tensor, *, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """softmax(q k^T * scale) over the key axis: (B, H, N, d), (B, H, M, d) -> (B, H, N, M).

    ``scale`` defaults to 1/sqrt(d). Rows whose keys are all masked are zeros.

    >>> attention_probs(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)).sum(-1)
    tensor([[[1.0000, 1.0000, 1.0000],
             [1.0000, 1.0000, 1.0000]]])
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, N, M)
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.where(mask.any(dim=-1, keepdim=True), probs, torch.zeros_like(probs))


def attend(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """Plain attention, probabilities materialized: -> (B, H, N, d)."""
    return torch.matmul(attention_probs(q, k, scale=scale, mask=mask), v)


def einops_attend(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """The same attention written with ``einops.einsum``, axes named: -> (B, H, N, d)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = einops.einsum(q, k, "b h n d, b h m d -> b h n m") * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if mask is not None:
        probs = torch.where(mask.any(dim=-1, keepdim=True), probs, torch.zeros_like(probs))
    return einops.einsum(probs, v, "b h n m, b h m d -> b h n d")


def sdpa_attend(
    q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """Fused ``F.scaled_dot_product_attention`` (never materializes probs): -> (B, H, N, d)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if mask is not None:  # fully masked rows: zeros on every backend, not NaN
        out = torch.where(mask.any(dim=-1, keepdim=True), out, torch.zeros_like(out))
    return out


ATTENDERS: dict[str, Attender] = {"math": attend, "einops": einops_attend, "sdpa": sdpa_attend}
"""The split-head attention implementations shapetrace ships, by name."""


@dataclass(frozen=True)
class ReferenceOutput:
    """What :func:`reference_attention` returns: ``output`` (B, N, query_dim) and ``merged``,
    the attended heads merged back (B, N, inner), i.e. what goes into ``to_out``."""

    output: Tensor
    merged: Tensor


def reference_attention(
    weights: ProjectionWeights,
    x: Tensor,
    context: Tensor,
    *,
    heads: int,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> ReferenceOutput:
    """Cross-attention computed from ``weights`` in their dtype (float64 for the oracle).

    x (B, N, query_dim), context (B, M, context_dim), mask (B, M) bool or None.
    ``scale`` defaults to 1/sqrt(head_dim).

    >>> layer = SDPACrossAttention(16, 12, num_heads=2).double()
    >>> ref = reference_attention(ProjectionWeights.from_module(layer),
    ...                           torch.randn(1, 5, 16, dtype=torch.float64),
    ...                           torch.randn(1, 7, 12, dtype=torch.float64), heads=2)
    >>> ref.output.shape, ref.merged.shape
    (torch.Size([1, 5, 16]), torch.Size([1, 5, 16]))
    """
    w = weights

    def project(t: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return split_heads(F.linear(t.to(weight.dtype), weight, bias), heads)

    q = project(x, w.q_weight, w.q_bias)  # (B, H, N, d)
    k = project(context, w.k_weight, w.k_bias)  # (B, H, M, d)
    v = project(context, w.v_weight, w.v_bias)  # (B, H, M, d)
    key_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, M)
    merged = merge_heads(attend(q, k, v, scale=scale, mask=key_mask))  # (B, N, inner)
    return ReferenceOutput(output=F.linear(merged, w.out_weight, w.out_bias), merged=merged)


class _SeedInterfaceAttention(nn.Module):
    """Seed 000's layout: inner width = query_dim, ``num_heads`` heads of query_dim // heads."""

    attender: Attender

    def __init__(self, query_dim: int, context_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if num_heads < 1 or query_dim % num_heads:
            raise ValueError(f"query_dim {query_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = self.heads = num_heads
        self.d_head = query_dim // num_heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, query_dim)."""
        q = split_heads(self.to_q(x), self.num_heads)  # (B, H, N, d)
        k = split_heads(self.to_k(context), self.num_heads)  # (B, H, M, d)
        v = split_heads(self.to_v(context), self.num_heads)  # (B, H, M, d)
        out: Tensor = self.to_out(merge_heads(type(self).attender(q, k, v)))  # (B, N, query_dim)
        return out


class EinopsCrossAttention(_SeedInterfaceAttention):
    """Seed 000's ``CrossAttention`` with heads split, attended and merged by einops.

    >>> attn = EinopsCrossAttention(64, 32, num_heads=4)
    >>> attn(torch.randn(2, 9, 64), torch.randn(2, 77, 32)).shape
    torch.Size([2, 9, 64])
    """

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, query_dim)."""
        h = self.num_heads
        q = einops.rearrange(self.to_q(x), "b n (h d) -> b h n d", h=h)
        k = einops.rearrange(self.to_k(context), "b m (h d) -> b h m d", h=h)
        v = einops.rearrange(self.to_v(context), "b m (h d) -> b h m d", h=h)
        attended = einops_attend(q, k, v)  # (B, H, N, d)
        out: Tensor = self.to_out(einops.rearrange(attended, "b h n d -> b n (h d)"))
        return out


class SDPACrossAttention(_SeedInterfaceAttention):
    """Seed 000's ``CrossAttention`` on fused ``F.scaled_dot_product_attention``.

    >>> SDPACrossAttention(64, 32, num_heads=4)(torch.randn(2, 9, 64), torch.randn(2, 77, 32)).shape
    torch.Size([2, 9, 64])
    """

    attender = staticmethod(sdpa_attend)


def build_diffusers_attention(
    query_dim: int,
    context_dim: int,
    *,
    heads: int,
    head_dim: int,
    processor: Any = None,
    qkv_bias: bool = False,
) -> nn.Module:
    """A diffusers ``Attention`` (SD's cross-attention layout) with the given processor.

    ``processor`` None means diffusers' reference ``AttnProcessor``.

    >>> attn = build_diffusers_attention(320, 768, heads=8, head_dim=40)
    >>> attn(torch.randn(1, 64, 320), encoder_hidden_states=torch.randn(1, 77, 768)).shape
    torch.Size([1, 64, 320])
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor

    attn = Attention(
        query_dim,
        cross_attention_dim=context_dim,
        heads=heads,
        dim_head=head_dim,
        bias=qkv_bias,
        processor=AttnProcessor() if processor is None else processor,
    )
    return attn.eval()


def diffusers_attention_like(module: nn.Module, *, heads: int, processor: Any = None) -> nn.Module:
    """A diffusers ``Attention`` holding a copy of ``module``'s projection weights.

    ``module`` has to_q/to_k/to_v/to_out (seed 000's ``CrossAttention`` or any module of the
    check contract); q, k and v biases are kept when ``module`` has them.
    """
    to_q, to_k = projection(module, "to_q"), projection(module, "to_k")
    inner = to_q.out_features
    attn = build_diffusers_attention(
        to_q.in_features,
        to_k.in_features,
        heads=heads,
        head_dim=inner // heads,
        processor=processor,
        qkv_bias=to_q.bias is not None,
    )
    attn.to(dtype=to_q.weight.dtype, device=to_q.weight.device)
    ProjectionWeights.from_module(module, dtype=to_q.weight.dtype).load_into(attn)
    return attn
