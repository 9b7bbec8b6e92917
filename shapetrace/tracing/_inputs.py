"""Tagging a layer's (or a block's) inputs with where their tokens come from, and its outputs
as tokens again for the ops that follow in the block."""

from __future__ import annotations

from typing import Any

import torch

from shapetrace.stages import Segment
from shapetrace.tracing._call import CallState
from shapetrace.tracing._flow import Flow, FlowTable, Role, Source

__all__ = ["layer_inputs", "tag_inputs", "tag_outputs"]

_HIDDEN = ("hidden_states", "x", "sample", "query")
_CONTEXT = ("encoder_hidden_states", "context", "key_value_states")


def layer_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
    """(hidden states, text context, image-prompt tokens) of a call.

    The context is a keyword (``encoder_hidden_states``, ``context``, T5's
    ``key_value_states``) or the second positional argument when it is a 3-D tensor (the
    ``forward(x, context)`` convention); diffusers passes IP-Adapter tokens as a tuple
    (text, [image-prompt tokens, ...]).
    """
    hidden = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if hidden is None:
        hidden = next((kwargs[k] for k in _HIDDEN if isinstance(kwargs.get(k), torch.Tensor)), None)
    context: Any = next((kwargs[k] for k in _CONTEXT if kwargs.get(k) is not None), None)
    if (
        context is None
        and len(args) > 1
        and isinstance(args[1], torch.Tensor)
        and args[1].dim() == 3
    ):
        context = args[1]
    ip: list[torch.Tensor] = []
    if isinstance(context, tuple) and len(context) == 2:
        context, extra = context
        ip = [
            t
            for t in (extra if isinstance(extra, (list, tuple)) else (extra,))
            if isinstance(t, torch.Tensor)
        ]
    if not isinstance(context, torch.Tensor) or context is hidden:
        context = None
    return hidden, context, ip


def _tag(table: FlowTable, t: torch.Tensor, source: Source) -> None:
    current = table.get(t)
    if current is not None and current.role is Role.TOKENS:
        return  # the block's tags are better: they saw text and image joined (Flux)
    if t.dim() == 4 and source is Source.HIDDEN:  # (B, C, h, w): tokens are the pixels
        seq, n = (2, 4), int(t.shape[2] * t.shape[3])
    elif t.dim() == 4:  # (B, images, M, D) image-prompt tokens
        seq, n = (2, 3), int(t.shape[2])
    elif t.dim() >= 2:
        seq, n = (t.dim() - 2, t.dim() - 1), int(t.shape[-2])
    else:
        return
    table.put(t, Flow(Role.TOKENS, seq, (Segment(source.value, n),)))


def tag_inputs(
    table: FlowTable,
    hidden: torch.Tensor | None,
    context: torch.Tensor | None,
    ip: list[torch.Tensor],
) -> None:
    """Tag where the tokens enter; tensors already followed from a block's inputs keep those."""
    if hidden is not None:
        _tag(table, hidden, Source.HIDDEN)
    if context is not None:
        _tag(table, context, Source.CONTEXT)
    for t in ip:
        _tag(table, t, Source.IP)


def tag_outputs(table: FlowTable, out: Any, state: CallState) -> None:
    """The layer's outputs are tokens again: the queries' tokens, or in joint attention the
    image part (first output) and the text part (second)."""
    main = state.main
    segments = main.q_segments if main is not None else None
    outputs = [
        t
        for t in (out if isinstance(out, (tuple, list)) else (out,))
        if isinstance(t, torch.Tensor)
    ]
    for t in outputs[:2]:
        if t.dim() == 4:
            table.put(t, Flow(Role.TOKENS, (2, 4), segments))
            continue
        if t.dim() < 2:
            continue
        n = int(t.shape[-2])
        kept = segments
        if segments is not None and sum(s.tokens for s in segments) != n:
            kept = next(((s,) for s in segments if s.tokens == n), None)
        table.put(t, Flow(Role.TOKENS, (t.dim() - 2, t.dim() - 1), kept))
