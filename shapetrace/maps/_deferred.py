"""Calls a store has accepted but not yet summed.

A store checks a call when the tracer hands it over (the layer, its grid, its rows) and
computes its probabilities later: at the end of the model's call, at a window boundary, or
before anything reads the sums, and after every ``MAX_CALLS`` calls. Run back to back, the
few small products and softmaxes per call cost less than interleaved with the model's own
ops one by one (on the tiny UNet on CPU, 16 cross calls: about 0.6 ms per forward instead of
1.8 ms when all are summed after the forward). Held q and k stay bounded: past
``BUDGET_BYTES`` of tensors held, or ``MAX_CALLS`` calls, the calls are summed at once. The
call bound keeps the heap from fragmenting around many small held tensors: with every call of
a forward held, peak RSS over 50 guided steps of the tiny UNet grew 1.9 MiB more than over
one (1.5 MiB of it by step 10, then flat); with 4, 0.5 MiB, about what summing each call at
once leaves.

A call whose q or k changed in place between the hand-over and the sum (the model wrote into a
tensor the call holds) is refused by name rather than summed from the new values.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from shapetrace.errors import ShapeTraceError

__all__ = ["BUDGET_BYTES", "MAX_CALLS", "STACK_BYTES", "Pending", "PendingCall", "stack_key"]

#: bytes of q, k (and materialized probabilities) a store holds before it sums at once
BUDGET_BYTES = 64 * 2**20
#: calls a store holds before it sums them
MAX_CALLS = 4
#: bytes of float32 probabilities one stacked product of calls of the same shape may make
STACK_BYTES = 4 * 2**20


def _tensors(call: Any) -> tuple[torch.Tensor, ...]:
    probs = getattr(call, "probs", None)
    if isinstance(probs, torch.Tensor):
        return (call.query_heads, call.key_heads, probs)
    return (call.query_heads, call.key_heads)


@dataclass
class PendingCall:
    """One accepted call: ``args`` as the store accepted it (layer name, key, rows, expected
    probabilities shape), whether its sum keeps a graph, and the version counters of the
    tensors it reads (set when it is held)."""

    call: Any
    args: tuple[Any, ...]
    grad: bool
    versions: tuple[int, ...] = ()


class Pending:
    """The calls waiting to be summed, and the bytes they hold."""

    def __init__(self, budget: int = BUDGET_BYTES) -> None:
        self.items: list[PendingCall] = []
        self.held = 0
        self.budget = budget

    def add(self, item: PendingCall) -> bool:
        """Keep a call; True when the held calls or bytes reached the bounds (sum now)."""
        tensors = _tensors(item.call)
        item.versions = tuple(t._version for t in tensors)
        self.items.append(item)
        if tensors[0].device.type != "meta":  # whole storages: a view keeps all of its alive
            self.held += sum(t.untyped_storage().nbytes() for t in tensors)
        return self.held > self.budget or len(self.items) >= MAX_CALLS

    def drain(self, sum_group: Callable[[list[PendingCall]], None]) -> None:
        """Sum every pending call with ``sum_group(calls)``: calls with one ``stack_key``
        together, each group under the grad mode its calls were handed over in, groups in
        the order of their first call. The list is emptied and every call's q and k checked
        for in-place writes first, so an error leaves none and sums none."""
        items, self.items, self.held = self.items, [], 0
        for item in items:
            changed = [t for t, v in zip(_tensors(item.call), item.versions) if t._version != v]
            if changed:
                name = getattr(item.call.layer, "name", "?")
                raise ShapeTraceError(
                    f"layer {name!r}: its q or k was changed in place after the call, before "
                    "the store summed it; the model writes into tensors it had already used. "
                    "Build the store with defer=False to sum each call as it comes"
                )
        groups: dict[Hashable, list[PendingCall]] = {}
        ordered: list[list[PendingCall]] = []
        for item in items:
            key = stack_key(item)
            group = None if key is None else groups.get(key)
            if group is None:
                group = []
                ordered.append(group)
                if key is not None:
                    groups[key] = group
            group.append(item)
        for group in ordered:
            grad = group[0].grad
            if grad == torch.is_grad_enabled():
                sum_group(group)
            else:
                with torch.set_grad_enabled(grad):
                    sum_group(group)

    def clear(self) -> None:
        self.items.clear()
        self.held = 0

    def __len__(self) -> int:
        return len(self.items)


def stack_key(item: PendingCall) -> Hashable | None:
    """What calls must share to be computed in one product (None: computed alone): the
    call's own ``stack_key`` (shapes, dtypes, device, scale) and the rows taken; a call kept
    with its autograd graph is always alone, so the graph stays one call's."""
    own = getattr(item.call, "stack_key", None)
    key = own() if callable(own) and not item.grad else None
    if key is None:
        return None
    rows = item.args[2]
    taken = (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else id(rows)
    return (key, taken)
