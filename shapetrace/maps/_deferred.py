"""Calls a store has accepted but not yet summed.

A store checks a call when the tracer hands it over (the layer, its grid, its rows; for a call
like one checked before, only the window's shape check is left, made when it is summed: see
``_intake``) and computes its probabilities later: at the end of the model's call, at a window
boundary, or before anything reads the sums, and after every ``MAX_CALLS`` calls. Run back to
back, the few small products and softmaxes per call cost less than interleaved with the
model's own ops one by one (on the tiny UNet on CPU, 16 cross calls: about 0.6 ms per forward
instead of 1.8 ms when all are summed after the forward). Held q and k stay bounded: past
``BUDGET_BYTES`` of tensors held, or ``MAX_CALLS`` calls, the calls are summed at once. The
call bound keeps what is held, and the heap around it, small. Peak RSS above the start of a
guided loop of the tiny UNet at 256x256, medians of three fresh processes, after 1 and after 50
steps, in MiB: 4 calls 9.1 to 9.7 and 9.6 to 10.0 (three such sets), 8 calls 9.6 to 9.9 and
10.2 to 10.4 (two), every call of a forward (16) 10.7 and 11.5 (one). Holding 8 rather than 4
saves 0.2 to 0.3 ms per forward of the tiny UNet at 64x64 (two sums instead of four).

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

__all__ = ["BUDGET_BYTES", "MAX_CALLS", "Pending", "PendingCall", "held_bytes"]

#: bytes of q, k (and materialized probabilities) a store holds before it sums at once
BUDGET_BYTES = 64 * 2**20
#: calls a store holds before it sums them
MAX_CALLS = 8


def _tensors(call: Any) -> tuple[torch.Tensor, ...]:
    probs = getattr(call, "probs", None)
    if isinstance(probs, torch.Tensor):
        return (call.query_heads, call.key_heads, probs)
    return (call.query_heads, call.key_heads)


def held_bytes(call: Any) -> int:
    """Bytes a held call keeps alive: whole storages, since a view keeps all of its own."""
    return _storage_bytes(_tensors(call))


def _storage_bytes(tensors: tuple[torch.Tensor, ...]) -> int:
    if tensors[0].device.type == "meta":
        return 0
    return sum(t.untyped_storage().nbytes() for t in tensors)


@dataclass
class PendingCall:
    """One accepted call: what its sum needs (``job``: the arguments of a call checked at
    hand-over, or the store's note for a call like one checked before), the grad mode it was
    handed over in, and the tensors it reads with their version counters then."""

    call: Any
    job: Any
    grad: bool
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]


class Pending:
    """The calls waiting to be summed, and the bytes they hold."""

    def __init__(self, budget: int = BUDGET_BYTES) -> None:
        self.items: list[PendingCall] = []
        self.held = 0
        self.budget = budget

    def add(self, call: Any, job: Any, grad: bool, nbytes: int | None = None) -> bool:
        """Keep a call (``nbytes`` held, counted from its storages when not given); True when
        the held calls or bytes reached the bounds (sum now)."""
        tensors = _tensors(call)
        kept = versions(tensors)
        self.items.append(PendingCall(call, job, grad, tensors, kept or ()))
        if kept is None:  # no version counter to check later: sum it now
            return True
        self.held += _storage_bytes(tensors) if nbytes is None else nbytes
        return self.held > self.budget or len(self.items) >= MAX_CALLS

    def drain(self, take: Callable[[Any, Any, bool], None]) -> None:
        """Give every pending call in order to ``take(call, job, grad)``, refusing one whose
        q or k was written into since. The list is emptied first, so an error leaves none."""
        items, self.items, self.held = self.items, [], 0
        for item in items:
            if written(item.tensors, item.versions):
                name = getattr(item.call.layer, "name", "?")
                raise ShapeTraceError(
                    f"layer {name!r}: its q or k was changed in place after the call, before "
                    "the store summed it; the model writes into tensors it had already used. "
                    "Build the store with defer=False to sum each call as it comes"
                )
            take(item.call, item.job, item.grad)

    def clear(self) -> None:
        self.items.clear()
        self.held = 0

    def __len__(self) -> int:
        return len(self.items)
