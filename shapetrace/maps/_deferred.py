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
tensor the call holds) is refused by name rather than summed from the new values. Tensors made
under ``torch.inference_mode`` keep no version counter: such a call is summed at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shapetrace.errors import ShapeTraceError
from shapetrace.tracing._versions import versions, written

__all__ = ["BUDGET_BYTES", "MAX_CALLS", "Pending", "PendingCall"]

#: bytes of q, k (and materialized probabilities) a store holds before it sums at once
BUDGET_BYTES = 64 * 2**20
#: calls a store holds before it sums them
MAX_CALLS = 4


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
        """Keep a call; True when the held calls or bytes reached the bounds (sum now)."""
        tensors = _tensors(call)
        kept = versions(tensors)
        self.items.append(PendingCall(call, args, grad, kept or ()))
        if kept is None:  # no version counter to check later: sum it now
            return True
        if tensors[0].device.type != "meta":  # whole storages: a view keeps all of its alive
            self.held += sum(t.untyped_storage().nbytes() for t in tensors)
        return self.held > self.budget or len(self.items) >= MAX_CALLS

    def drain(self, sum_one: Callable[..., None]) -> None:
        """Sum every pending call in order with ``sum_one(call, *args)``, each under the grad
        mode it was handed over in. The list is emptied first, so an error leaves none."""
        items, self.items, self.held = self.items, [], 0
        for item in items:
            if written(_tensors(item.call), item.versions):
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
