"""What a probe (the map store, or your own) sees of one attention call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from shapetrace.journey import LayerRecord

__all__ = ["AttentionCall", "Probe", "to_bhtd"]


def to_bhtd(tensor: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A view of a per-head tensor (or scores, or a mask) in (B, H, T, X) layout.

    >>> to_bhtd(torch.zeros(16, 1024, 40), batch=2, heads=8).shape
    torch.Size([2, 8, 1024, 40])
    """
    if tensor.dim() == 4:
        if tensor.shape[1] != heads and tensor.shape[2] == heads:
            return tensor.transpose(1, 2)
        return tensor
    if tensor.dim() == 3 and tensor.shape[0] == batch * heads:
        return tensor.reshape(batch, heads, tensor.shape[1], tensor.shape[2])
    if tensor.dim() == 3 and tensor.shape[0] == batch:
        return tensor.unsqueeze(1)
    if tensor.dim() == 2:
        return tensor[None, None]
    raise ValueError(f"cannot read a {tuple(tensor.shape)} tensor as (B, H, T, X)")


@dataclass
class AttentionCall:
    """One attention call, as the layer computed it.

    ``query_heads`` (B, H, N, d) and ``key_heads`` (B, H, M, d) are the tensors that entered
    the score computation (every token: in joint attention the image and text tokens in the
    model's order). ``probs`` is (B, H, N, M) when the code materialized it. ``query_tokens``
    and ``key_tokens`` select the layer's cross block: the image queries and the text keys of
    a joint layer (None: every query, every key). ``call_index`` counts this layer's calls in
    the trace (``layer`` is the journey's record, which stands for every call of one input
    signature).
    """

    layer: LayerRecord
    query_heads: torch.Tensor
    key_heads: torch.Tensor
    scale: float
    mask: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    query_tokens: slice | None = None
    key_tokens: slice | None = None
    call_index: int = 0  # this call of the layer, counted from 0 in the trace

    def compute_probs(
        self,
        dtype: torch.dtype = torch.float32,
        rows: torch.Tensor | slice | None = None,
        *,
        grad: bool = False,
    ) -> torch.Tensor:
        """softmax(q kᵀ · scale) over the keys, computed beside the layer: (B, H, N, M), or
        for a joint layer the image-query x text-key block of the joint softmax (normalized
        over every key, so a row sums to the share of attention the text gets).

        ``rows`` (a 1-D index of batch rows, or a slice of them) computes only those rows:
        under classifier-free guidance a store that keeps the conditional half pays for half.
        ``grad=True`` keeps the autograd graph back to q and k (and so to the latents and the
        model's weights) when the forward runs with gradients enabled, for losses on the maps
        (Attend-and-Excite, Break-a-Scene); by default nothing is recorded for autograd.
        """
        device = self.query_heads.device
        autocast = _AUTOCAST.get(device)
        if autocast is None:
            kind = device.type
            autocast = _AUTOCAST[device] = kind if torch.amp.is_autocast_available(kind) else ""
        if autocast and torch.is_autocast_enabled(autocast):
            with torch.autocast(autocast, enabled=False):  # probabilities in ``dtype``, always
                return self.compute_probs(dtype, rows, grad=grad)
        if torch.is_grad_enabled() and not grad:
            with torch.no_grad():
                return self._probs(dtype, rows)
        return self._probs(dtype, rows)

    def _probs(self, dtype: torch.dtype, rows: torch.Tensor | slice | None) -> torch.Tensor:
        if self.probs is not None:
            probs = self.probs if rows is None else _rows(self.probs, rows)
            return self._cross_block(probs, keys_only=False).to(dtype)
        q, k, mask = self.query_heads, self.key_heads, self.mask
        plain = mask is None and self.query_tokens is None and k.shape[:2] == q.shape[:2]
        one = _one_row(rows, q.shape[0]) if plain else None
        if one is not None:
            # one kept row (a store under guidance keeps the conditional half): its heads
            # (H, N, d) taken in one op each, not a slice and a reshape (both views): measured
            # -0.06 ±0.08 and -0.09 ±0.05 ms per tiny forward of 16 cross calls
            q, k = q[one], k[one]
        elif rows is not None:
            q, k = _rows(q, rows), _rows(k, rows)
            if mask is not None and mask.dim() == 4 and mask.shape[0] > 1:
                mask = _rows(mask, rows)
        if self.query_tokens is not None:
            q = q[:, :, self.query_tokens]
            if mask is not None and mask.dim() == 4 and mask.shape[2] > 1:
                mask = mask[:, :, self.query_tokens]
        if q.dtype != dtype or k.dtype != dtype:
            q, k = q.to(dtype), k.to(dtype)
        if one is not None:
            probs = _scores3(q, k, self.scale).softmax(dim=-1).unsqueeze(0)
            return self._cross_block(probs, keys_only=True)
        scores = _scores(q, k, self.scale)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask.to(dtype)
        return self._cross_block(scores.softmax(dim=-1), keys_only=True)

    def _cross_block(self, probs: torch.Tensor, *, keys_only: bool) -> torch.Tensor:
        if self.query_tokens is None and self.key_tokens is None:
            return probs
        if not keys_only and self.query_tokens is not None:
            probs = probs[:, :, self.query_tokens]
        if self.key_tokens is not None:
            probs = probs[..., self.key_tokens]
        return probs


_ZEROS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_AUTOCAST: dict[torch.device, str] = {}  # device -> its type if torch has autocast for it


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q kᵀ · scale as one batched product with the scale folded in (what diffusers'
    ``get_attention_scores`` computes): (B, H, N, d) x (B, H, M, d) -> (B, H, N, M)."""
    b, h, n, d = q.shape
    m = k.shape[2]
    if k.shape[:2] != (b, h):  # broadcast heads or batch: the general product
        return torch.matmul(q, k.transpose(-1, -2)) * scale
    return _scores3(q.reshape(b * h, n, d), k.reshape(b * h, m, d), scale).view(b, h, n, m)


def _scores3(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(G, N, d) x (G, M, d) -> (G, N, M) for any strides (baddbmm reads views as they are)."""
    zero = _ZEROS.get((q.device, q.dtype))
    if zero is None:  # beta=0 ignores it; a 0-dim tensor broadcasts to any shape
        zero = _ZEROS[(q.device, q.dtype)] = torch.zeros((), device=q.device, dtype=q.dtype)
    return torch.baddbmm(zero, q, k.mT, beta=0.0, alpha=scale)


def _one_row(rows: torch.Tensor | slice | None, batch: int) -> int | None:
    """The row a slice of one row of ``batch`` takes (None for anything else)."""
    if not isinstance(rows, slice) or rows.step not in (None, 1) or rows.start is None:
        return None
    if rows.stop == rows.start + 1 and 0 <= rows.start < batch:
        return int(rows.start)
    return None


def _rows(t: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


@runtime_checkable
class Probe(Protocol):
    """Anything with ``on_attention(call)``; an optional ``wants(layer) -> bool`` says which
    layers it wants (the tracer then skips the others), an optional ``on_missed(layer, why)``
    hears of a wanted call it could not be given, and an optional ``on_forward_end()`` is
    called when the traced model's call ends and when the trace does (a probe that defers
    work does it there)."""

    def on_attention(self, call: AttentionCall) -> None: ...
