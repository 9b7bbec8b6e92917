"""Adding accepted calls' probabilities to a store's running sums: one call at a time, or a
group of calls of one shape (``_deferred.stack_key``) in one product and one softmax.

A call's part is its probabilities for the kept rows, (R, H, N, M), summed over heads unless
the store keeps heads (``detail="head"``). Each key's running sum counts the head maps added,
the calls and the layers they came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shapetrace.errors import ShapeTraceError
from shapetrace.maps._deferred import STACK_BYTES, PendingCall
from shapetrace.maps._sums import CallLike, MapKey, MapSum

__all__ = ["sum_call", "sum_group"]

Expected = tuple[int, int, int, int]


def sum_call(
    entries: dict[MapKey, MapSum],
    call: CallLike,
    args: tuple[str, MapKey, torch.Tensor | slice, Expected],
    *,
    heads_apart: bool,
    grad: bool,
) -> None:
    """Add one call's probabilities (R, H, N, M) for the kept rows to the sum under its key;
    ``args`` are (layer name, key, rows, expected shape) as the store accepted the call."""
    layer, key, rows, expected = args
    probs = call.compute_probs(torch.float32, rows=rows, grad=grad)
    if probs.shape != expected:
        raise ShapeTraceError(
            f"layer {layer!r}: probabilities {tuple(probs.shape)} for the kept rows, "
            f"expected (R, H, N, M) = {expected}"
        )
    part = probs if heads_apart else probs.sum(dim=1)  # (R, [H,] N, M)
    # the sum over heads is a new tensor; kept heads may be a view of the layer's own
    _add(entries, key, part, expected[1], (layer,), owned=not heads_apart, grad=grad)


def sum_group(
    entries: dict[MapKey, MapSum],
    items: Sequence[PendingCall],
    *,
    heads_apart: bool,
    grad: bool,
) -> None:
    """Add calls that share a ``stack_key`` (or one call alone): stacked up to
    ``STACK_BYTES`` of probabilities at a time, each stack in one product and one softmax,
    its parts summed per key in one op."""
    if len(items) == 1 or grad:
        for item in items:
            sum_call(entries, item.call, item.args, heads_apart=heads_apart, grad=grad)
        return
    for chunk in _chunks(items):
        if len(chunk) == 1:
            sum_call(entries, chunk[0].call, chunk[0].args, heads_apart=heads_apart, grad=grad)
        else:
            _sum_stack(entries, chunk, heads_apart=heads_apart)


def _chunks(items: Sequence[PendingCall]) -> list[list[PendingCall]]:
    """Consecutive runs whose probabilities stay within ``STACK_BYTES`` (one call may pass
    it alone)."""
    chunks: list[list[PendingCall]] = []
    size = 0
    for item in items:
        r, h, n, m = item.args[3]
        nbytes = r * h * n * m * 4
        if not chunks or size + nbytes > STACK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += nbytes
    return chunks


def _sum_stack(
    entries: dict[MapKey, MapSum], items: list[PendingCall], *, heads_apart: bool
) -> None:
    # the calls of each key next to each other (in the order keys first came), so each key's
    # share of the stack is one slice
    order: dict[MapKey, list[PendingCall]] = {}
    for item in items:
        order.setdefault(item.args[1], []).append(item)
    ranked = [item for group in order.values() for item in group]
    rows, expected = ranked[0].args[2], ranked[0].args[3]
    calls = [item.call for item in ranked]
    probs = type(calls[0]).stacked_probs(calls, torch.float32, rows)  # (G, R, H, N, M)
    if probs.shape[1:] != expected:
        names = ", ".join(repr(item.args[0]) for item in ranked)
        raise ShapeTraceError(
            f"layers {names}: probabilities {tuple(probs.shape[1:])} per call for the kept "
            f"rows, expected (R, H, N, M) = {expected}"
        )
    heads = expected[1]
    if not heads_apart and len(order) == 1:  # one key: over calls and heads at once
        (key,) = order
        layers = [item.args[0] for item in ranked]
        _add(entries, key, probs.sum(dim=(0, 2)), heads, layers, owned=True, grad=False)
        return
    parts = probs if heads_apart else probs.sum(dim=2)  # (G, R, [H,] N, M)
    start = 0
    for key, group in order.items():
        stop = start + len(group)
        one = stop - start == 1
        part = parts[start] if one else parts[start:stop].sum(dim=0)
        layers = [item.args[0] for item in group]
        _add(entries, key, part, heads, layers, owned=not one, grad=False)
        start = stop


def _add(
    entries: dict[MapKey, MapSum],
    key: MapKey,
    part: torch.Tensor,
    heads: int,
    layers: Sequence[str],
    *,
    owned: bool,
    grad: bool,
) -> None:
    """Add ``part``, the sum of ``len(layers)`` calls of ``heads`` heads, under ``key``. A
    part that is not ``owned`` (a view of a tensor others hold) is copied to start a sum."""
    entry = entries.get(key)
    if entry is None:
        total = part if grad or owned else part.detach().clone()
        entry = entries[key] = MapSum(total=total, heads=heads)
    elif grad:
        entry.total = entry.total + part
    else:
        entry.total.add_(part)
    entry.count += heads * len(layers)
    entry.calls += len(layers)
    entry.layers.update(layers)
