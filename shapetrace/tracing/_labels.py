"""Which tensor inside an attention call is which: q, k, v and what was computed from them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

__all__ = ["Label", "LabelTable"]

# Roles: q, k, v (projections, through reshapes), kT (key with its last two axes swapped),
# qk (scores), p (probabilities), pv (attended values).


@dataclass
class Label:
    role: str
    ops: tuple[str, ...] = ()
    parent_shape: tuple[int, ...] | None = None  # for kT: the key before the transpose
    parent: torch.Tensor | None = field(default=None, repr=False)
    scale: float = 1.0  # scalars multiplied into this lineage (q, k or scores) so far

    def then(self, op: str, factor: float = 1.0) -> Label:
        ops = self.ops if len(self.ops) >= 8 else (*self.ops, op)
        return Label(self.role, ops, self.parent_shape, self.parent, self.scale * factor)


class LabelTable:
    """Labels keyed by tensor identity, without keeping any tensor alive."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref[torch.Tensor], Label]] = {}

    def get(self, tensor: object) -> Label | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        item = self._items.get(id(tensor))
        if item is None or item[0]() is not tensor:
            return None
        return item[1]

    def put(self, tensor: torch.Tensor, label: Label) -> None:
        self._items[id(tensor)] = (weakref.ref(tensor), label)

    def clear(self) -> None:
        self._items.clear()
