"""Planted bugs in cross-attention modules, one step wrong each.

Every class is a factory ``(query_dim, context_dim, heads) -> nn.Module`` with the common
tutorial layout (``to_q``, ``to_k``, ``to_v``, ``to_out``, inner width = query_dim) and
``forward(x, context)``. :class:`Plain` is the textbook version; each mutant overrides the
one step it gets wrong. The first group are the classic mistakes; the others take a wrong
path only at some shapes (where real implementations branch), only with autograd on, or
only at large logits. ``mutants.py`` says what each is and where it shows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK = 7  # query chunk size of the chunked variants: odd, below N=77 and N=203
KEY_CHUNK = 64  # key chunk size of the online-softmax variants
LONG = 1024  # past this many queries the "long" variants take their chunked path
CLIP_TOKENS = 77


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


# -- bugs that show only at some shapes (where implementations branch) ----------------------
class ContextTruncatedTo77(Plain):
    def context_in(self, context: Tensor) -> Tensor:
        return context[:, :CLIP_TOKENS]  # BUG: "CLIP has 77 tokens"; SDXL/T5 contexts are longer


class ContextViewedAs77(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b = x.shape[0]
        q = self.split(self.to_q(x))  # (B, H, N, d)
        k, v = (  # BUG: the context length hard-coded as CLIP's 77
            t.view(b, CLIP_TOKENS, self.heads, self.head_dim).transpose(1, 2)
            for t in (self.to_k(context), self.to_v(context))
        )
        out: Tensor = self.to_out(self.merge(self.attend(q, k, v)))
        return out


class AlignedFastPathMixesHeads(Plain):
    """A "vectorized" path for N a multiple of 64 with several heads, merging without the
    transpose; the general path is right."""

    def merge(self, t: Tensor) -> Tensor:
        b, h, n, d = t.shape
        if n % 64 == 0 and h > 1:
            return t.reshape(b, n, h * d)  # BUG: only on the fast path
        return super().merge(t)


class AlignedHeadDimFusedScale(Plain):
    """A fused path for head dims that are multiples of 8, scale taken after folding heads."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.head_dim % 8 == 0:
            inner = self.heads * self.head_dim  # BUG: 1/sqrt(inner) on the fused path
            return F.scaled_dot_product_attention(q, k, v, scale=inner**-0.5)
        return super().attend(q, k, v)


class LongSequenceChunksForgetScale(Plain):
    """Past LONG queries, attends in chunks of LONG to save memory; the chunked path forgets
    the scale."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.shape[2] <= LONG:
            return super().attend(q, k, v)
        parts = [(c @ k.transpose(-2, -1)).softmax(dim=-1) @ v for c in q.split(LONG, dim=2)]
        return torch.cat(parts, dim=2)  # BUG: no 1/sqrt(d) on this path


class PaddedToEightSlicedFromTheEnd(Plain):
    """Pads the queries to a multiple of 8 for a kernel, then keeps the wrong end."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n = q.shape[2]
        pad = -n % 8
        out = super().attend(F.pad(q, (0, 0, 0, pad)), k, v)
        return out[:, :, pad:]  # BUG: the padding was appended; keep out[:, :, :n]


class KeyChunkedSoftmaxWithoutRescale(Plain):
    """Online softmax over chunks of KEY_CHUNK keys (flash-attention style) that forgets to
    rescale the running sums when the running max grows."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if k.shape[2] <= KEY_CHUNK:
            return super().attend(q, k, v)
        total = weight = None
        for kc, vc in zip(k.split(KEY_CHUNK, dim=2), v.split(KEY_CHUNK, dim=2)):
            s = q @ kc.transpose(-2, -1) * self.scale()  # (B, H, N, chunk)
            e = (s - s.amax(dim=-1, keepdim=True)).exp()  # BUG: each chunk its own max
            total = e @ vc if total is None else total + e @ vc
            weight = e.sum(-1, keepdim=True) if weight is None else weight + e.sum(-1, keepdim=True)
        assert total is not None and weight is not None
        return total / weight


# -- bugs that show only with autograd on -------------------------------------------------
class TrainingPathUnscaled(Plain):
    def scale(self) -> float:
        if torch.is_grad_enabled():
            return 1.0  # BUG: a training-only path (checkpointing, say) forgets the scale
        return super().scale()


class DetachedKeys(Plain):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return super().attend(q, k.detach(), v)  # BUG: no gradient reaches to_k or the context


class _LeakySoftmax(torch.autograd.Function):
    """softmax whose hand-written backward forgets the - y * sum(g * y) term."""

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:  # type: ignore[override]
        y = scores.softmax(dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return grad * y  # BUG: the Jacobian is diag(y) - y yᵀ


class HandWrittenSoftmaxBackward(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        out: Tensor = _LeakySoftmax.apply(scores)
        return out


# -- bugs that show only at large logits --------------------------------------------------
class ClampedScores(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        return scores.clamp(-50.0, 50.0).softmax(dim=-1)  # BUG: "for stability"


class NaiveLogSumExp(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        lse = scores.exp().sum(dim=-1, keepdim=True).log()  # BUG: overflows to inf
        return (scores - lse).exp()  # then every weight is 0: finite, and wrong


class GlobalMaxSubtraction(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        e = (scores - scores.max()).exp()  # BUG: the max over everything, not each row
        return e / e.sum(dim=-1, keepdim=True)  # rows far below it underflow: 0 / 0
