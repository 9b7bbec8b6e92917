"""How a layer's q and k heads follow from its projections: learned on a recorded call, so
that later calls of the same signature hand probes q and k without the op recorder.

A plan holds when each of q and k is one projection's output (or one piece of a fused one)
split into heads as ``reshape(B, N, H, d).transpose(1, 2)``, times a constant: the learned
plan is replayed on the recorded call's own projection outputs and must give its q and k
exactly. Joint layers, masks and anything else (norms or rotary embeddings on q and k) have
no plan: probes then get those layers through the recorder on every call.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from shapetrace.journey import LayerRecord
from shapetrace.tracing._call import CallState
from shapetrace.tracing._fire import as_bhtd

__all__ = ["Plan", "Side", "learn_plan"]


@dataclass(frozen=True)
class Side:
    """Where q (or k) comes from: a projection module, which piece of its output, and the
    factor it carries into the score op."""

    module: weakref.ref[nn.Module]
    piece: int
    pieces: int
    factor: float

    def heads(self, out: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        """(B, H, T, d) from the projection's output (B, T, C)."""
        if self.pieces > 1:
            width = out.shape[-1] // self.pieces
            out = out[..., self.piece * width : (self.piece + 1) * width]
        b, t = out.shape[0], out.shape[-2]
        split = out.reshape(b, t, heads, head_dim).transpose(1, 2)
        return split * self.factor if self.factor != 1.0 else split


@dataclass(frozen=True)
class Plan:
    """q and k of a layer from its projections, and the scale probes apply to q·kᵀ."""

    q: Side
    k: Side
    heads: int
    head_dim: int
    scale: float
    causal: bool


def _side(
    state: CallState, lineage: frozenset[int], factor: float
) -> tuple[Side, torch.Tensor] | None:
    if len(lineage) != 1:
        return None
    (pid,) = lineage
    proj = state.projections.get(pid)
    if proj is None:
        return None
    base = state.projections.get(proj.parent, proj) if proj.parent is not None else proj
    if base.module is None or base.output is None:
        return None
    side = Side(weakref.ref(base.module), proj.piece, proj.pieces, factor)
    return side, base.output


def learn_plan(state: CallState, record: LayerRecord) -> Plan | None:
    """The plan of a recorded call, checked against its own q and k; None when there is none."""
    main = state.main
    if main is None or main.query is None or main.key is None or main.mask is not None:
        return None
    if record.kind not in ("self", "cross") or not record.has("query_heads"):
        return None
    q_factor = main.q_factor if main.q_factor is not None else 1.0
    k_factor = main.k_factor if main.k_factor is not None else 1.0
    q_side, k_side = _side(state, main.q_lineage, q_factor), _side(state, main.k_lineage, k_factor)
    if q_side is None or k_side is None:
        return None
    batch, heads, _, head_dim = record.shape("query_heads")
    q = as_bhtd(main.query, main.q_axis, batch, heads)
    k = as_bhtd(main.key, main.k_axis, batch, heads)
    if q is None or k is None:
        return None
    with torch.no_grad():
        q_hat = q_side[0].heads(q_side[1], heads, head_dim)
        k_hat = k_side[0].heads(k_side[1], heads, head_dim)
        if q_hat.shape != q.shape or k_hat.shape != k.shape:
            return None
        if q.device.type != "meta" and not (torch.equal(q_hat, q) and torch.equal(k_hat, k)):
            return None
    total = main.scale if main.scale is not None else head_dim**-0.5
    return Plan(q_side[0], k_side[0], heads, head_dim, total / main.kept_scale, main.causal)
