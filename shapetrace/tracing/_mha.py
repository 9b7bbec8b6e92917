"""nn.MultiheadAttention runs as one fused function: its stages are derived from its inputs
and its attributes, and marked as derived."""

from __future__ import annotations

import math
from typing import Any

import torch

from shapetrace.tracing._call import CallState
from shapetrace.tracing._discover import LayerInfo

__all__ = ["mha_post", "mha_pre"]

_NOTE = "derived: inside fused multi_head_attention_forward"


def _bte(t: torch.Tensor, batch_first: bool) -> tuple[int, int, int]:
    """(B, T, E) of a MultiheadAttention input, batched or not."""
    if t.dim() == 2:
        return 1, t.shape[0], t.shape[1]
    if batch_first:
        return t.shape[0], t.shape[1], t.shape[2]
    return t.shape[1], t.shape[0], t.shape[2]


def mha_pre(
    state: CallState, info: LayerInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    module = info.module
    assert isinstance(module, torch.nn.MultiheadAttention)
    names = ("query", "key", "value")
    given = dict(zip(names, args))
    given.update({n: kwargs[n] for n in names if n in kwargs})
    q, k, v = given["query"], given.get("key", given["query"]), given.get("value", given["query"])
    batch_first = bool(getattr(module, "batch_first", False))
    heads = int(module.num_heads)
    embed = int(module.embed_dim)
    d = embed // heads
    b, n, _ = _bte(q, batch_first)
    _, m, kdim = _bte(k, batch_first)
    state.kind = "self" if (k is q and v is q) else "cross"
    state.heads, state.head_dim = heads, d
    state.sdpa_scale = 1.0 / math.sqrt(d)
    layout = "(B, T, E)" if batch_first or q.dim() == 2 else "(T, B, E) seq-first"
    state.add("input", tuple(q.shape), op="layer input", layout=layout)
    if state.kind == "cross":
        state.add("context", tuple(k.shape), op="key/value input", layout=layout)
    add = state.add
    add("query", (b, n, embed), op=f"in_proj q {embed}→{embed}", derived=True, note=_NOTE)
    add("key", (b, m, embed), op=f"in_proj k {kdim}→{embed}", derived=True, note=_NOTE)
    add("value", (b, m, embed), op=f"in_proj v {kdim}→{embed}", derived=True, note=_NOTE)
    for name, tokens in (("query_heads", n), ("key_heads", m), ("value_heads", m)):
        add(name, (b, heads, tokens, d), op="split heads", derived=True, note=_NOTE)
    add("scores", (b, heads, n, m), op="q kᵀ / sqrt(d)", derived=True, note=_NOTE)
    add("probs", (b, heads, n, m), op="softmax(dim=-1)", derived=True, note=_NOTE)
    add("attended", (b, heads, n, d), op="probs @ v", derived=True, note=_NOTE)
    add("merged", (b, n, embed), op="merge heads", derived=True, note=_NOTE)
    state.softmax_dim = -1


def mha_post(state: CallState, out: Any) -> None:
    result = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(result, torch.Tensor):
        state.add("output", tuple(result.shape), op="out_proj")
