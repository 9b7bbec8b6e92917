"""Planted-bug and correct cross-attention modules, to measure what the checks catch.

Every class is a factory ``(query_dim, context_dim, heads) -> nn.Module`` with seed 000's
layout (``to_q``, ``to_k``, ``to_v``, ``to_out``, inner width = query_dim) and
``forward(x, context)``. :class:`Plain` is the textbook version; each mutant overrides the
one step it gets wrong. ``MUTANTS`` maps each to the invariant(s) whose violation is its
honest diagnosis; ``CORRECT`` lists variants that compute the same function differently.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor, nn

from shapetrace.reference import CrossAttention
from shapetrace.testing.implementations import EinopsCrossAttention, SDPACrossAttention

CHUNK = 7  # query chunk size of the chunked variants: odd, below N=77 and N=203


class Plain(nn.Module):
    """softmax(q k^T / sqrt(d)) v over (B, H, N, d) heads, split and merged by reshape."""

    def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = query_dim // heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    def split(self, t: Tensor) -> Tensor:
        """(B, T, H*d) -> (B, H, T, d)."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, t: Tensor) -> Tensor:
        """(B, H, N, d) -> (B, N, H*d)."""
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def scale(self) -> float:
        return self.head_dim**-0.5

    def softmax(self, scores: Tensor) -> Tensor:
        return scores.softmax(dim=-1)  # over the M keys

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, H, N, d), (B, H, M, d), (B, H, M, d) -> (B, H, N, d)."""
        return self.softmax(q @ k.transpose(-2, -1) * self.scale()) @ v

    def context_in(self, context: Tensor) -> Tensor:
        return context

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        context = self.context_in(context)
        q = self.split(self.to_q(x))  # (B, H, N, d)
        k = self.split(self.to_k(context))  # (B, H, M, d)
        v = self.split(self.to_v(context))  # (B, H, M, d)
        out: Tensor = self.to_out(self.merge(self.attend(q, k, v)))  # (B, N, query_dim)
        return out


# -- planted bugs ---------------------------------------------------------------------------
class SoftmaxOverQueries(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        return scores.softmax(dim=-2)  # BUG: over the N queries


class SoftmaxOverHeads(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        return scores.softmax(dim=1)  # BUG: over the H heads


class NoScale(Plain):
    def scale(self) -> float:
        return 1.0  # BUG: raw dot products


class ScaleByInnerWidth(Plain):
    def scale(self) -> float:
        return (self.heads * self.head_dim) ** -0.5  # BUG: 1/sqrt(inner), not 1/sqrt(d)


class ScaleByHeadDim(Plain):
    def scale(self) -> float:
        return 1.0 / self.head_dim  # BUG: 1/d, not 1/sqrt(d)


class SplitWithViewNoTranspose(Plain):
    def split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, self.heads, n, self.head_dim)  # BUG: no transpose, tokens mix with heads


class MergeWithoutTranspose(Plain):
    def merge(self, t: Tensor) -> Tensor:
        b, h, n, d = t.shape
        return t.reshape(b, n, h * d)  # BUG: (B, H, N, d) read as (B, N, H*d)


class KeysAndValuesSwapped(Plain):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return super().attend(q, v, k)  # BUG: scores against v, average of k


class ContextIgnored(Plain):
    def context_in(self, context: Tensor) -> Tensor:
        return torch.zeros_like(context)  # BUG: the text never gets in


class ContextTokenDropped(Plain):
    def context_in(self, context: Tensor) -> Tensor:
        return context[:, :-1]  # BUG: an off-by-one drops the last token


class BatchAndHeadsMixed(Plain):
    """Folds heads into the batch head-major on the split, unfolds batch-major on the merge."""

    def split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        t = t.reshape(b, n, self.heads, self.head_dim).permute(2, 0, 1, 3)  # (H, B, T, d)
        return t.reshape(self.heads * b, 1, n, self.head_dim)  # row h*B + b

    def merge(self, t: Tensor) -> Tensor:
        hb, _, n, d = t.shape
        b = hb // self.heads
        return t.reshape(b, self.heads, n, d).transpose(1, 2).reshape(b, n, self.heads * d)  # BUG


class OneHeadOnly(Plain):
    def split(self, t: Tensor) -> Tensor:
        return t.unsqueeze(1)  # BUG: one head over the whole inner width

    def merge(self, t: Tensor) -> Tensor:
        return t.squeeze(1)


class CausalMaskInCrossAttention(Plain):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # BUG: text is no sequence


class QueryChunksReversed(Plain):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        parts = [Plain.attend(self, c, k, v) for c in q.split(CHUNK, dim=2)]
        return torch.cat(parts[::-1], dim=2)  # BUG: chunks put back in reverse order


class QueryBiasDropped(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = self.split(F.linear(x, self.to_q.weight))  # BUG: to_q's bias forgotten
        k, v = self.split(self.to_k(context)), self.split(self.to_v(context))
        out: Tensor = self.to_out(self.merge(self.attend(q, k, v)))
        return out


class SoftmaxWithoutMaxSubtraction(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        e = scores.exp()  # BUG: overflows once scores pass ~88 (float32)
        return e / e.sum(dim=-1, keepdim=True)


class ResidualInsideAttention(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return super().forward(x, context) + x  # BUG: the block's residual added twice


# -- planted bugs in diffusers processors (for check_attn_processor) ------------------------
class UnscaledProcessor:
    """A hand-written processor that forgets the 1/sqrt(head_dim)."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, heads = hidden_states.shape[0], attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        mask = None if attention_mask is None else attention_mask.view(b, 1, 1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        out = out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class MaskIgnoringProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, dropping the attention mask on the floor."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
    ):  # type: ignore[no-untyped-def]
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask=None)


# -- correct variants -----------------------------------------------------------------------
class QueryChunked(Plain):
    """Sliced attention (as diffusers' SlicedAttnProcessor): CHUNK queries at a time."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.cat([Plain.attend(self, c, k, v) for c in q.split(CHUNK, dim=2)], dim=2)


class Float64Inside(Plain):
    """Everything after the projections in float64, cast back at the end."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return super().attend(q.double(), k.double(), v.double()).to(q.dtype)


class SoftmaxUpcast(Plain):
    """Softmax in at least float32 (diffusers' upcast_softmax): never a down-cast of float64."""

    def softmax(self, scores: Tensor) -> Tensor:
        wide = torch.promote_types(scores.dtype, torch.float32)
        return scores.to(wide).softmax(dim=-1).to(scores.dtype)


class EinopsRearrange(Plain):
    """Heads split and merged with einops patterns."""

    def split(self, t: Tensor) -> Tensor:
        return einops.rearrange(t, "b t (h d) -> b h t d", h=self.heads)

    def merge(self, t: Tensor) -> Tensor:
        return einops.rearrange(t, "b h n d -> b n (h d)")


def _sdpa(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return SDPACrossAttention(query_dim, context_dim, num_heads=heads)


def _einops(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return EinopsCrossAttention(query_dim, context_dim, num_heads=heads)


MUTANTS: dict[type[Plain], tuple[str, ...]] = {
    SoftmaxOverQueries: ("softmax_normalization",),
    SoftmaxOverHeads: ("softmax_normalization",),
    NoScale: ("scale",),
    ScaleByInnerWidth: ("scale",),
    ScaleByHeadDim: ("scale",),
    SplitWithViewNoTranspose: ("head_independence",),
    MergeWithoutTranspose: ("head_independence", "query_permutation_equivariance"),
    KeysAndValuesSwapped: ("convex_combination",),
    ContextIgnored: ("convex_combination",),
    ContextTokenDropped: ("softmax_normalization", "key_permutation_invariance", "uniform_scores"),
    BatchAndHeadsMixed: ("batch_independence",),
    OneHeadOnly: ("head_independence",),
    CausalMaskInCrossAttention: ("query_permutation_equivariance", "key_permutation_invariance"),
    QueryChunksReversed: ("query_permutation_equivariance",),
    QueryBiasDropped: ("reference_agreement",),
    SoftmaxWithoutMaxSubtraction: ("finite_large_inputs",),
    ResidualInsideAttention: ("reference_agreement",),
}
"""Each planted bug and the invariant(s) that honestly describe it."""

CORRECT = {
    "plain": Plain,
    "einops_rearrange": EinopsRearrange,
    "einops_module": _einops,
    "sdpa": _sdpa,
    "query_chunked": QueryChunked,
    "float64_inside": Float64Inside,
    "softmax_upcast": SoftmaxUpcast,
}
"""Variants that compute exactly cross-attention, by other routes."""

PROCESSOR_MUTANTS: dict[type, tuple[str, ...]] = {
    UnscaledProcessor: ("scale",),
    MaskIgnoringProcessor: ("masking",),
}
"""Planted bugs in diffusers attention processors, for ``check_attn_processor``."""


# -- the modules shapetrace ships, as check_attention_module factories -----------------------
def seed_reference(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return CrossAttention(query_dim, context_dim, num_heads=heads)


def einops_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return EinopsCrossAttention(query_dim, context_dim, num_heads=heads)


def sdpa_module(query_dim: int, context_dim: int, heads: int) -> nn.Module:
    return SDPACrossAttention(query_dim, context_dim, num_heads=heads)


SHIPPED = {"seed_reference": seed_reference, "einops": einops_module, "sdpa": sdpa_module}
