"""Calls a store has accepted but not yet summed.

A store checks a call when the tracer hands it over (the layer, its grid, its rows) and
computes its probabilities later: at the end of the model's call, at a window boundary, or
before anything reads the sums. Run back to back after the forward, the few small products
and softmaxes per call cost less than interleaved with the model's own ops (on the tiny UNet
on CPU, 16 cross calls: about 0.6 ms per forward instead of 1.8 ms). Held q and k stay
bounded: past ``BUDGET_BYTES`` of tensors held, the calls are summed at once.

A call whose q or k changed in place between the hand-over and the sum (the model wrote into a
tensor the call holds) is refused by name rather than summed from the new values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shapetrace.errors import ShapeTraceError

__all__ = ["BUDGET_BYTES", "Pending", "PendingCall"]

#: bytes of q, k (and materialized probabilities) a store holds before it sums at once
BUDGET_BYTES = 64 * 2**20


def _tensors(call: Any) -> tuple[torch.Tensor, ...]:
    probs = getattr(call, "probs", None)
    if isinstance(probs, torch.Tensor):
        return (call.query_heads, call.key_heads, probs)
    return (call.query_heads, call.key_heads)


@dataclass
class PendingCall:
    """One accepted call: what ``sum`` needs, the grad mode it was handed over in, and the
    version counters of the tensors it reads."""

    call: Any
    args: tuple[Any, ...]
    grad: bool
    versions: tuple[int, ...]


class Pending:
    """The calls waiting to be summed, and the bytes they hold."""

    def __init__(self, budget: int = BUDGET_BYTES) -> None:
        self.items: list[PendingCall] = []
        self.held = 0
        self.budget = budget

    def add(self, call: Any, args: tuple[Any, ...], grad: bool) -> bool:
        """Keep a call; True when the held bytes passed the budget (sum now)."""
        tensors = _tensors(call)
        self.items.append(PendingCall(call, args, grad, tuple(t._version for t in tensors)))
        if tensors[0].device.type != "meta":  # whole storages: a view keeps all of its alive
            self.held += sum(t.untyped_storage().nbytes() for t in tensors)
        return self.held > self.budget

    def drain(self, sum_one: Callable[..., None]) -> None:
        """Sum every pending call in order with ``sum_one(call, *args)``, each under the grad
        mode it was handed over in. The list is emptied first, so an error leaves none."""
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
            if item.grad == torch.is_grad_enabled():
                sum_one(item.call, *item.args)
            else:
                with torch.set_grad_enabled(item.grad):
                    sum_one(item.call, *item.args)

    def clear(self) -> None:
        self.items.clear()
        self.held = 0

    def __len__(self) -> int:
        return len(self.items)
