"""How a flow passes through an op that moves or combines tokens without meaning anything for
attention: views and reshapes, permutations, indexing, splits, concatenation, elementwise ops.

Each function returns the (tensor, flow) pairs to record for the op's outputs.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from shapetrace.stages import Segment
from shapetrace.tracing._axes import (
    cat_segments,
    map_getitem,
    map_permute,
    map_reshape,
    map_same,
    move_perm,
    piece_bounds,
    slice_segments,
    swap_perm,
)
from shapetrace.tracing._flow import Flow, Role, Source, Span

__all__ = [
    "CATS",
    "FACTORIES",
    "SPLITS",
    "carry",
    "concatenate",
    "elementwise",
    "index",
    "permute",
    "split",
    "store",
]

Shape = tuple[int, ...]
Out = list[tuple[torch.Tensor, Flow]]

PERMUTATIONS = frozenset(
    {
        "transpose",
        "swapaxes",
        "swapdims",
        "permute",
        "movedim",
        "moveaxis",
        "t",
        "T",
        "mT",
        "mH",
        "H",
        "adjoint",
    }
)
INDEXING = frozenset({"__getitem__", "narrow", "select"})
SPLITS = frozenset({"chunk", "split", "split_with_sizes", "tensor_split", "unbind"})
CATS = frozenset({"cat", "concat", "concatenate", "stack"})
FACTORIES = frozenset(
    {
        "ones_like",
        "zeros_like",
        "empty_like",
        "full_like",
        "rand_like",
        "randn_like",
        "randint_like",
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
        "new_tensor",
    }
)
_MUL = frozenset({"mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__"})
_DIV = frozenset({"div", "div_", "true_divide", "divide", "__truediv__", "__itruediv__"})


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], at: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[at] if len(args) > at else default


def carry(flow: Flow, op: str, mapper: Callable[[Span], Span | None], **changes: Any) -> Flow:
    """The flow with its token and key spans moved by ``mapper`` (segments dropped when the
    token span is lost)."""
    seq = mapper(flow.seq) if flow.seq is not None else None
    key = mapper(flow.key) if flow.key is not None else None
    packed = mapper(flow.packed) if flow.packed is not None else None
    segments = flow.segments if seq is not None else None
    base = {"seq": seq, "key": key, "segments": segments, "packed": packed}
    base.update(changes)
    return flow.then(op, **base)


def _reshape_mapper(old: Shape, new: Shape) -> Callable[[Span], Span | None]:
    if old == new:
        return lambda span: span
    if math.prod(old) == math.prod(new):
        return lambda span: map_reshape(old, new, span)
    return lambda span: map_same(old, new, span)


def _scalar(args: tuple[Any, ...]) -> float | None:
    for value in args[1:2]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def elementwise(name: str, args: tuple[Any, ...], out: Any, flows: Out) -> Out:
    """Any other op: the first flow leads; flows of its role it combines with (an added LoRA
    projection, RoPE's rotated half) join its lineage; scalars multiplied into q, k or the
    scores join its scale."""
    lead_t, lead = flows[0]
    if lead.role is Role.TOKENS and isinstance(out, torch.Tensor) and out.shape == lead_t.shape:
        return [(out, lead)]  # a block's norms and MLP keep the tokens where they were
    lineage = lead.lineage.union(*(f.lineage for _t, f in flows[1:] if f.role is lead.role))
    scale = lead.scale
    factor = _scalar(args) if lead.role in (Role.PROJECTION, Role.SCORES) else None
    if factor is not None and name in _MUL:
        scale *= factor
    elif factor and name in _DIV:
        scale /= factor
    done: Out = []
    for item in out if isinstance(out, (list, tuple)) else (out,):
        if isinstance(item, torch.Tensor):
            mapper = _reshape_mapper(tuple(lead_t.shape), tuple(item.shape))
            done.append((item, carry(lead, name, mapper, lineage=lineage, scale=scale)))
    return done


def permute(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, flow: Flow) -> Out:
    x = args[0]
    ndim = x.dim()
    if name in ("transpose", "swapaxes", "swapdims"):
        perm = swap_perm(
            ndim, int(_arg(args, kwargs, 1, "dim0", 0)), int(_arg(args, kwargs, 2, "dim1", 1))
        )
    elif name == "permute":
        dims = kwargs.get("dims", args[1] if len(args) == 2 else args[1:])
        perm = [int(d) for d in (dims if isinstance(dims, Sequence) else (dims,))]
    elif name in ("movedim", "moveaxis"):
        src, dst = _arg(args, kwargs, 1, "source", 0), _arg(args, kwargs, 2, "destination", 0)
        if not isinstance(src, int) or not isinstance(dst, int):
            return [(out, carry(flow, name, lambda _s: None))]
        perm = move_perm(ndim, src, dst)
    elif name in ("T", "H") or (name == "t" and ndim < 2):
        perm = list(reversed(range(ndim)))
    else:  # t, mT, mH, adjoint: the last two axes
        perm = swap_perm(ndim, -1, -2) if ndim >= 2 else list(range(ndim))
    whole = None
    if flow.whole is not None:  # a slice transposed (kᵀ of a key slice) still knows its whole
        ref, origin, before = flow.whole
        whole = (ref, origin, tuple(before[i] for i in perm) if before else tuple(perm))
    packed = None
    if flow.packed is not None:  # only the leading (pieces) axis of packed features matters
        lead = next(new for new, old in enumerate(perm) if int(old) % ndim == flow.packed[0])
        packed = (lead, lead + flow.packed[1] - flow.packed[0])
    flow = carry(flow, name, lambda span: map_permute(span, perm), whole=whole, packed=packed)
    return [(out, flow)]


def index(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, flow: Flow, keep_whole: bool
) -> Out:
    """``x[...]``, ``narrow`` and ``select``: a slice of the tokens keeps its segments; a slice
    of the tokens or of axis 0 remembers the whole tensor (chunked queries, sliced heads)."""
    x = args[0]
    shape = tuple(x.shape)
    if name == "__getitem__":
        where = args[1]
    else:
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % max(x.dim(), 1)
        if name == "narrow":
            start = int(_arg(args, kwargs, 2, "start", 0)) % max(shape[dim], 1)
            where = (
                *[slice(None)] * dim,
                slice(start, start + int(_arg(args, kwargs, 3, "length", 0))),
            )
        else:
            where = (*[slice(None)] * dim, int(_arg(args, kwargs, 2, "index", 0)))
    changes: dict[str, Any] = {}
    kept_tokens = kept_rows = None
    if flow.seq is not None:
        _span, kept_tokens, kept_rows = map_getitem(shape, where, flow.seq)
    elif shape:
        _span, _tokens, kept_rows = map_getitem(shape, where, (len(shape) - 1, len(shape)))
    if kept_tokens is not None and flow.segments is not None:
        changes["segments"] = slice_segments(flow.segments, *kept_tokens)
    if keep_whole and (kept_tokens is not None or kept_rows is not None):
        changes["whole"] = (weakref.ref(x), flow, None)
    return [(out, carry(flow, name, lambda span: map_getitem(shape, where, span)[0], **changes))]


def split(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, flow: Flow, keep_whole: bool
) -> Out:
    """Pieces along the tokens get their share of the segments; along other axes the flow
    carries over (unbind drops the axis)."""
    x = args[0]
    at = 1 if name == "unbind" else 2
    dim = int(_arg(args, kwargs, at, "dim", 0)) % max(x.dim(), 1)
    pieces = [p for p in out if isinstance(p, torch.Tensor)]
    if name == "unbind":

        def shift(span: Span) -> Span | None:
            if span[0] <= dim < span[1]:
                return None
            return span if dim > span[0] else (span[0] - 1, span[1] - 1)

        return [(p, carry(flow, name, shift)) for p in pieces]
    if flow.seq_axis == dim and flow.segments is not None:
        bounds = piece_bounds([p.shape[dim] for p in pieces])
        whole = (weakref.ref(x), flow, None) if keep_whole else None
        return [
            (p, flow.then(name, segments=slice_segments(flow.segments, lo, hi), whole=whole))
            for p, (lo, hi) in zip(pieces, bounds)
        ]
    return [(p, flow.then(name)) for p in pieces]


def concatenate(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Any,
    get: Callable[[Any], Flow | None],
) -> Out:
    """``cat`` along the tokens joins the segments in the order given (SD3: image then text;
    Flux: text then image); ``stack`` adds an axis. Lineages join."""
    tensors = [t for t in _arg(args, kwargs, 0, "tensors", ()) if isinstance(t, torch.Tensor)]
    flows = [get(t) for t in tensors]
    known = [(t, f) for t, f in zip(tensors, flows) if f is not None]
    if not known or not isinstance(out, torch.Tensor):
        return []
    lead_t, lead = known[0]
    lineage = lead.lineage.union(*(f.lineage for _t, f in known[1:]))
    dim = int(_arg(args, kwargs, 1, "dim", 0))
    if name == "stack":
        dim %= out.dim()

        def shift(span: Span) -> Span | None:
            return (
                (span[0] + 1, span[1] + 1) if dim <= span[0] else (span if dim >= span[1] else None)
            )

        return [(out, carry(lead, name, shift, lineage=lineage))]
    dim %= lead_t.dim()
    if lead.seq_axis == dim and all(f is None or f.seq_axis == dim for f in flows):
        parts: list[tuple[Segment, ...]] = []
        for t, f in zip(tensors, flows):
            if f is not None and f.segments is None:
                return [(out, lead.then(name, lineage=lineage, segments=None))]
            parts.append(
                f.segments
                if f is not None and f.segments is not None
                else (Segment(Source.OTHER.value, t.shape[dim]),)
            )
        return [(out, lead.then(name, lineage=lineage, segments=cat_segments(parts)))]
    return [(out, lead.then(name, lineage=lineage))]


def store(args: tuple[Any, ...], value_flow: Flow) -> Out:
    """``target[i] = value``: the target now holds what the value held (diffusers' sliced
    attention writes each slice's result into a preallocated tensor)."""
    target, value = args[0], args[2]
    if not isinstance(target, torch.Tensor) or not isinstance(value, torch.Tensor):
        return []
    if target.dim() != value.dim():
        return [(target, value_flow.then("setitem", seq=None, key=None, segments=None))]
    return [(target, value_flow.then("setitem"))]
