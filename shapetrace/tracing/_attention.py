"""Reading attention off the flows: q·kᵀ (matmul, bmm, baddbmm, einsum) makes the scores,
softmax over them the probabilities, probs·v the attended values; fused SDPA gets its scores
and probabilities derived from q, k and v. Each function records the stages on the call and
returns the (tensor, flow) pairs of its output for the recorder to keep."""

from __future__ import annotations

import math
from typing import Any

import torch

from shapetrace.stages import Check
from shapetrace.tracing import _monitors
from shapetrace.tracing._call import BranchState, CallState
from shapetrace.tracing._flow import Flow, FlowTable, Role

__all__ = ["PRODUCTS", "SDPA", "SOFTMAX", "chain", "product", "sdpa", "softmax"]

PRODUCTS = frozenset({"matmul", "bmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__"})
SOFTMAX = frozenset({"softmax", "_softmax"})
SDPA = "scaled_dot_product_attention"

Pairs = list[tuple[torch.Tensor, Flow]]


def chain(flow: Flow, fallback: str) -> str:
    return "→".join(flow.ops) if flow.ops else fallback


def _resolve(t: torch.Tensor, flow: Flow) -> tuple[torch.Tensor, Flow]:
    """The whole tensor a slice was cut from (in the slice's layout), while it is alive."""
    if flow.whole is None:
        return t, flow
    ref, origin, perm = flow.whole
    whole = ref()
    if whole is None:
        return t, flow
    return (whole.permute(*perm) if perm else whole), origin


def _einsum_operands(args: tuple[Any, ...]) -> tuple[str, list[Any]]:
    equation = str(args[0]).replace(" ", "")
    operands = (
        list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    )
    return equation, operands


def product(table: FlowTable, state: CallState, name: str, args, kwargs, out) -> Pairs | None:
    """q·kᵀ or probs·v by matmul, bmm, baddbmm or einsum: the flows of its output, or None
    when the op is not one of them."""
    if not isinstance(out, torch.Tensor):
        return None
    if name == "einsum":
        return _einsum(table, state, args, out)
    alpha, mask = 1.0, None
    if name == "baddbmm":
        a, b = args[1], args[2]
        alpha = float(kwargs.get("alpha", args[4] if len(args) > 4 else 1.0))
        beta = float(kwargs.get("beta", args[3] if len(args) > 3 else 1.0))
        mask = args[0] if beta != 0 and isinstance(args[0], torch.Tensor) else None
    elif name == "__rmatmul__":
        a, b = args[1], args[0]
    else:
        a, b = args[0], args[1]
    fa, fb = table.get(a), table.get(b)
    if fa is None or fb is None:
        return None
    if fa.role is Role.PROJECTION and fb.role is Role.PROJECTION:
        if fa.seq_axis not in (None, a.dim() - 2) or fb.seq_axis not in (None, b.dim() - 1):
            return None  # not q (…, N, d) times kᵀ (…, d, M)
        k_all, _ = _resolve(b, fb)
        key = k_all.transpose(-1, -2)
        axes = (out.dim() - 2, out.dim() - 1)
        return _scores(
            state, name, (a, a.dim() - 2, fa), (key, key.dim() - 2, fb), out, axes, alpha, mask
        )
    if fa.role is Role.PROBS and fb.role is Role.PROJECTION:
        return _attended(state, name, fa, (b, b.dim() - 2, fb), out, out.dim() - 2)
    return None


def _einsum(table: FlowTable, state: CallState, args, out) -> Pairs | None:
    """q·kᵀ and probs·v written as einsum ("bhnd,bhmd->bhnm", "bhnm,bhmd->bhnd", or any
    other letters): read which axes are contracted and where the tokens go."""
    equation, operands = _einsum_operands(args)
    if len(operands) != 2 or "..." in equation or "->" not in equation:
        return None
    inputs, result = equation.split("->")
    letters = inputs.split(",")
    a, b = operands
    fa, fb = table.get(a), table.get(b)
    if fa is None or fb is None or len(letters) != 2 or fb.seq_axis is None:
        return None
    la, lb = letters
    if fa.role is Role.PROJECTION and fb.role is Role.PROJECTION and fa.seq_axis is not None:
        qa, kb = la[fa.seq_axis], lb[fb.seq_axis]
        if qa == kb or qa not in result or kb not in result:
            return None
        axes = (result.index(qa), result.index(kb))
        return _scores(
            state, "einsum", (a, fa.seq_axis, fa), (b, fb.seq_axis, fb), out, axes, 1.0, None
        )
    if fa.role is Role.PROBS and fb.role is Role.PROJECTION and fa.seq_axis is not None:
        key_letter = la[fa.key_axis] if fa.key_axis is not None else la[-1]
        if key_letter != lb[fb.seq_axis] or key_letter in result:
            return None
        return _attended(
            state, "einsum", fa, (b, fb.seq_axis, fb), out, result.index(la[fa.seq_axis])
        )
    return None


def _scores(state, name, query, key, out, axes, alpha, mask) -> Pairs:
    """q (with its token axis) times k (in its own layout, token axis given)."""
    (q, q_axis, fq), (k, k_axis, fk) = query, key
    branch, new = state.branch(fq.lineage, fk.lineage, fq.segments, fk.segments)
    branch.score_ops += 1
    scale = fq.scale * fk.scale * alpha
    if new:
        q_all, fq_all = _resolve(q, fq)
        state.heads(
            branch, "query_heads", tuple(q_all.shape), q_axis, fq.lineage, chain(fq, "query")
        )
        state.heads(branch, "key_heads", tuple(k.shape), k_axis, fk.lineage, chain(fk, "key"))
        branch.scale, branch.mask, branch.kept_scale = scale, mask, fq.scale * fk.scale
        branch.q_factor, branch.k_factor = fq.scale, fk.scale
        branch.query, branch.key, branch.q_axis, branch.k_axis = q_all, k, q_axis, k_axis
        branch.q_segments = fq_all.segments if fq_all.segments is not None else fq.segments
        state.pair(branch, "scores", tuple(out.shape), name)
    flow = Flow(
        Role.SCORES,
        (axes[0], axes[0] + 1),
        fq.segments,
        fq.lineage,
        scale=scale,
        ops=(name,),
        key=(axes[1], axes[1] + 1),
        key_segments=fk.segments,
        key_lineage=fk.lineage,
    )
    return [(out, flow)]


def softmax(state: CallState, args, kwargs, out, flow: Flow, *, monitors: bool) -> Pairs:
    """Softmax over scores: the probabilities, checked when ``monitors``."""
    scores = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    ndim = scores.dim()
    axis = (0 if ndim in (0, 1, 3) else 1) if dim is None else int(dim) % ndim
    branch = state.find_branch(flow.lineage, flow.key_lineage)
    key_axis = flow.key_axis if flow.key_axis is not None else ndim - 1
    if "probs" not in branch.stages:
        branch.scale = flow.scale  # the scale of the scores that really entered softmax
        scaled = f" · {flow.scale:.4g}" if flow.scale != 1.0 else ""
        branch.stages.pop("scores", None)
        state.pair(branch, "scores", tuple(scores.shape), f"{chain(flow, 'scores')}{scaled}")
        state.pair(branch, "probs", tuple(out.shape), f"softmax(dim={axis - ndim})")
        whole = branch.query is not None and branch.query.shape[:-1] == out.shape[:-1]
        if whole and axis == key_axis and branch.score_ops == 1:
            branch.probs = out
    if monitors:
        _monitors.softmax_checks(state, scores, out, axis, key_axis)
    return [(out, flow.then("softmax", role=Role.PROBS))]


def _attended(state: CallState, name, fp: Flow, value, out, out_axis: int) -> Pairs:
    v, v_axis, fv = value
    branch = state.find_branch(fp.lineage, fp.key_lineage)
    branch.v_lineage = branch.v_lineage | fv.lineage
    if "value_heads" not in branch.stages:
        v_all, _ = _resolve(v, fv)
        state.heads(
            branch, "value_heads", tuple(v_all.shape), v_axis, fv.lineage, chain(fv, "value")
        )
        state.heads(branch, "attended", tuple(out.shape), out_axis, fv.lineage, name)
    flow = Flow(Role.ATTENDED, (out_axis, out_axis + 1), fp.segments, fp.lineage, ops=(name,))
    return [(out, flow)]


def sdpa(
    table: FlowTable, state: CallState, args, kwargs, out, *, monitors: bool
) -> Pairs:
    """Fused SDPA: its stages derived from q, k and v; the flow of its output."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    given = dict(zip(names, args))
    given.update({n: kwargs[n] for n in names if n in kwargs})
    q, k, v = given["query"], given["key"], given["value"]
    fq, fk, fv = (table.get(t) or Flow(Role.PROJECTION, None, None) for t in (q, k, v))
    branch, new = state.branch(fq.lineage, fk.lineage, fq.segments, fk.segments)
    branch.v_lineage, branch.derived = branch.v_lineage | fv.lineage, True
    branch.score_ops += 1
    if new:
        _sdpa_stages(state, branch, given, (fq, fk, fv), out, monitors)
    if not isinstance(out, torch.Tensor):
        return []
    seq = (out.dim() - 2, out.dim() - 1)
    return [(out, Flow(Role.ATTENDED, seq, fq.segments, fq.lineage, ops=(SDPA,)))]


def _sdpa_stages(state, branch: BranchState, given, flows, out, monitors: bool) -> None:
    (q, k, v), (fq, fk, fv) = (given["query"], given["key"], given["value"]), flows
    q_all, fq_all = _resolve(q, fq)
    k_all, _ = _resolve(k, fk)
    for stage, t, f in (
        ("query_heads", q_all, fq),
        ("key_heads", k_all, fk),
        ("value_heads", _resolve(v, fv)[0], fv),
    ):
        state.heads(branch, stage, tuple(t.shape), t.dim() - 2, f.lineage, chain(f, stage[0]))
    scale = given.get("scale")
    base = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    branch.scale = base * fq.scale * fk.scale
    branch.kept_scale = fq.scale * fk.scale
    branch.q_factor, branch.k_factor = fq.scale, fk.scale
    pair = (*q_all.shape[:-1], k_all.shape[-2])
    derived = f"derived: softmax(q kᵀ · {branch.scale:.4g}) beside fused SDPA"
    state.pair(
        branch, "scores", pair, "derived: q kᵀ · scale (never materialized)", derived=True
    )
    state.pair(branch, "probs", pair, derived, derived=True)
    if isinstance(out, torch.Tensor):
        state.heads(branch, "attended", tuple(out.shape), out.dim() - 2, fv.lineage, SDPA)
    branch.query, branch.key = q_all, k_all
    branch.q_axis, branch.k_axis = q_all.dim() - 2, k_all.dim() - 2
    branch.mask, branch.causal = given.get("attn_mask"), bool(given.get("is_causal", False))
    if fq_all.segments is not None:
        branch.q_segments = fq_all.segments
    if monitors:
        state.checks.append(
            Check("softmax_axis", True, "fused SDPA: over the keys by construction")
        )
