"""``nn.MultiheadAttention`` runs as one fused function: its stages are derived from its
inputs and attributes, and marked as derived."""

from __future__ import annotations

import math
from typing import Any

import torch

from shapetrace.stages import Segment
from shapetrace.tracing._call import CallState

__all__ = ["mha_post", "mha_pre"]

_NOTE = "derived: inside fused multi_head_attention_forward"


def _bte(t: torch.Tensor, batch_first: bool) -> tuple[int, int, int]:
    """(B, T, E) of a MultiheadAttention input, batched or not."""
    if t.dim() == 2:
        return 1, t.shape[0], t.shape[1]
    if batch_first:
        return t.shape[0], t.shape[1], t.shape[2]
    return t.shape[1], t.shape[0], t.shape[2]


def mha_pre(state: CallState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Every stage of one MultiheadAttention call, from its inputs: q is the query input's,
    k and v the key and value inputs' (the same tensor as the query's: self-attention)."""
    module = state.info.module
    assert isinstance(module, torch.nn.MultiheadAttention)
    names = ("query", "key", "value")
    given = dict(zip(names, args))
    given.update({n: kwargs[n] for n in names if n in kwargs})
    q = given["query"]
    k = given.get("key", q)
    batch_first = bool(getattr(module, "batch_first", False))
    heads, embed = int(module.num_heads), int(module.embed_dim)
    d = embed // heads
    b, n, _ = _bte(q, batch_first)
    _, m, kdim = _bte(k, batch_first)
    own = k is q
    q_segs = (Segment("hidden", n),)
    k_segs = (Segment("hidden" if own else "context", m),)
    branch, _ = state.branch(frozenset({1}), frozenset({1 if own else 2}), q_segs, k_segs)
    branch.heads, branch.head_dim, branch.derived = heads, d, True
    branch.scale = 1.0 / math.sqrt(d)
    layout = "(B, T, E)" if batch_first or q.dim() == 2 else "(T, B, E) seq-first"
    state.add("input", tuple(q.shape), op="layer input", layout=layout)
    if not own:
        state.add("context", tuple(k.shape), op="key/value input", layout=layout)
    add = state.add
    add("query", (b, n, embed), op=f"in_proj q {embed}→{embed}", derived=True, note=_NOTE)
    add("key", (b, m, embed), op=f"in_proj k {kdim}→{embed}", derived=True, note=_NOTE)
    add("value", (b, m, embed), op=f"in_proj v {kdim}→{embed}", derived=True, note=_NOTE)
    badd = branch.add
    for name, tokens in (("query_heads", n), ("key_heads", m), ("value_heads", m)):
        badd(name, (b, heads, tokens, d), op="split heads", derived=True, note=_NOTE)
    badd("scores", (b, heads, n, m), op="q kᵀ / sqrt(d)", derived=True, note=_NOTE)
    badd("probs", (b, heads, n, m), op="softmax(dim=-1)", derived=True, note=_NOTE)
    badd("attended", (b, heads, n, d), op="probs @ v", derived=True, note=_NOTE)
    add("merged", (b, n, embed), op="merge heads", derived=True, note=_NOTE)


def mha_post(state: CallState, out: Any) -> None:
    result = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(result, torch.Tensor):
        state.add("output", tuple(result.shape), op="out_proj")
