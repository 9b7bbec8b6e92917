"""Correct cross-attention modules that compute the same function by other routes, several
built to bait false alarms: ``to_out`` called per query chunk or per batch row, a
sequence-first layout, key-chunked online softmax, paths that branch on shapes or on
autograd. Each is a factory ``(query_dim, context_dim, heads) -> nn.Module``.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from planted_modules import CHUNK, KEY_CHUNK, Plain
from torch import Tensor
from torch.utils.checkpoint import checkpoint


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


class ToOutPerQueryChunk(Plain):
    """Attends and projects CHUNK queries at a time: to_out sees (B, CHUNK, inner) pieces."""

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        k, v = self.split(self.to_k(context)), self.split(self.to_v(context))
        parts = [
            self.to_out(self.merge(self.attend(self.split(self.to_q(xc)), k, v)))
            for xc in x.split(CHUNK, dim=1)
        ]
        return torch.cat(parts, dim=1)


class ToOutPerBatchRow(Plain):
    """One batch row at a time, each through to_out on its own."""

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return torch.cat(
            [
                super(ToOutPerBatchRow, self).forward(x[b : b + 1], context[b : b + 1])
                for b in range(x.shape[0])
            ]
        )


class SequenceFirst(Plain):
    """Works in (T, B, C), as nn.MultiheadAttention does: heads folded as (T, B*H, d)."""

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, h, d = x.shape[0], self.heads, self.head_dim
        xs, cs = x.transpose(0, 1), context.transpose(0, 1)  # (N, B, C), (M, B, C')
        q, k, v = self.to_q(xs), self.to_k(cs), self.to_v(cs)  # (T, B, inner)
        q, k, v = (t.reshape(t.shape[0], b * h, d).transpose(0, 1) for t in (q, k, v))
        probs = (q @ k.transpose(1, 2) * self.scale()).softmax(dim=-1)  # (B*H, N, M)
        attended = (probs @ v).transpose(0, 1).reshape(xs.shape[0], b, h * d)  # (N, B, inner)
        out: Tensor = self.to_out(attended).transpose(0, 1)  # to_out on (N, B, inner)
        return out


class KeyChunkedOnlineSoftmax(Plain):
    """Flash-attention style: KEY_CHUNK keys at a time, running max and sums rescaled."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        top = total = weight = None
        for kc, vc in zip(k.split(KEY_CHUNK, dim=2), v.split(KEY_CHUNK, dim=2)):
            s = q @ kc.transpose(-2, -1) * self.scale()  # (B, H, N, chunk)
            m = (
                s.amax(dim=-1, keepdim=True)
                if top is None
                else torch.maximum(top, s.amax(-1, True))
            )
            e = (s - m).exp()
            if top is not None and total is not None and weight is not None:
                shrink = (top - m).exp()  # the old sums, moved to the new max
                total, weight = total * shrink, weight * shrink
            total = e @ vc if total is None else total + e @ vc
            weight = e.sum(-1, keepdim=True) if weight is None else weight + e.sum(-1, True)
            top = m
        assert total is not None and weight is not None
        return total / weight


class PaddedToEight(Plain):
    """Pads the queries to a multiple of 8 for a kernel and keeps the first N rows."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n = q.shape[2]
        return super().attend(F.pad(q, (0, 0, 0, -n % 8)), k, v)[:, :, :n]


class ToOutOnPaddedQueries(Plain):
    """Pads the queries to a multiple of 8 before anything, runs every step (to_out too) on
    the padded rows, and returns the first N."""

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        n = x.shape[1]
        return super().forward(F.pad(x, (0, 0, 0, -n % 8)), context)[:, :n]


class BranchesOnShape(Plain):
    """Fused SDPA for aligned shapes (head dim a multiple of 8, N a multiple of 64), plain
    math otherwise: both right."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.head_dim % 8 == 0 or q.shape[2] % 64 == 0:
            return F.scaled_dot_product_attention(q, k, v)
        return super().attend(q, k, v)


class CheckpointedWhenTraining(Plain):
    """Recomputes attention in the backward (gradient checkpointing) when autograd is on."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            out: Tensor = checkpoint(super().attend, q, k, v, use_reentrant=False)
            return out
        return super().attend(q, k, v)


class _Softmax(torch.autograd.Function):
    """softmax with a hand-written backward, written right."""

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:  # type: ignore[override]
        y = scores.softmax(dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return y * (grad - (grad * y).sum(dim=-1, keepdim=True))


class HandWrittenSoftmax(Plain):
    def softmax(self, scores: Tensor) -> Tensor:
        out: Tensor = _Softmax.apply(scores)
        return out


class FoldedHeadsBatchMajor(Plain):
    """diffusers' layout: heads folded into the batch as (B*H, N, d), row b*H + h, baddbmm."""

    def split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        folded = t.reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        return folded.reshape(b * self.heads, 1, n, self.head_dim)  # row b*H + h

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q3, k3, v3 = q.squeeze(1), k.squeeze(1), v.squeeze(1)  # (B*H, T, d)
        empty = torch.empty(q3.shape[0], q3.shape[1], k3.shape[1], dtype=q3.dtype, device=q3.device)
        scores = torch.baddbmm(empty, q3, k3.transpose(1, 2), beta=0, alpha=self.scale())
        return (scores.softmax(dim=-1) @ v3).unsqueeze(1)

    def merge(self, t: Tensor) -> Tensor:
        bh, _, n, d = t.shape
        b = bh // self.heads
        return t.reshape(b, self.heads, n, d).permute(0, 2, 1, 3).reshape(b, n, self.heads * d)
