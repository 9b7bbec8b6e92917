"""Provenance: what each tensor inside a traced block was derived from.

A layer's inputs are tagged where they enter (the hidden states, the text given as encoder
hidden states, image-prompt tokens); every tensor computed from them carries a ``Flow``: its
role so far, which projections it descends from (its lineage), and where its tokens lie: a
span of axes holding them and the run of ``Segment``s along it (for example
[hidden 4096, context 333] after SD3 concatenates image and text). q, k and v are not known
by name: the score op decides which lineage was the query and which the key.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from shapetrace.stages import Segment

__all__ = ["Flow", "FlowTable", "Role", "Source", "Span", "segments_sources"]

#: [start, stop) of the axes that together hold the tokens: (1, 2) for (B, N, C), (2, 4) for
#: a (B, C, h, w) feature map before it is flattened.
Span = tuple[int, int]


class Source(str, Enum):
    """Which input of the layer a token came from."""

    HIDDEN = "hidden"
    CONTEXT = "context"
    IP = "ip"
    OTHER = "other"


class Role(Enum):
    """What a tensor is, as far as the ops seen so far tell."""

    TOKENS = "tokens"  # an input, or computed from one without a projection
    PROJECTION = "projection"  # a linear projection of tokens: q, k or v, not known yet
    SCORES = "scores"  # q kᵀ
    PROBS = "probs"  # softmax of scores
    ATTENDED = "attended"  # probs times v


@dataclass(frozen=True)
class Flow:
    """The provenance of one tensor.

    ``seq`` is the span of axes holding the tokens (the query axis for scores and probs,
    whose key axis is ``key``); ``segments`` the token runs along it, or None when unknown.
    ``lineage`` names the projections the tensor descends from; ``packed`` is the span of axes
    still holding one projection's output features, so splitting its leading axis into 2 or 3
    gives a fused projection's pieces (``to_qkv(x).chunk(3, -1)``, or timm's
    ``qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)``). ``scale`` is the
    product of the scalars multiplied in so far.
    ``whole`` is (a weak reference to the tensor this one was sliced from, its flow, the
    permutation applied since): a slice of the (B*H) axis or a chunk of the queries, kept
    through later transposes but dropped by any other op.
    """

    role: Role
    seq: Span | None
    segments: tuple[Segment, ...] | None
    lineage: frozenset[int] = frozenset()
    packed: Span | None = None
    scale: float = 1.0
    ops: tuple[str, ...] = ()
    key: Span | None = None
    key_segments: tuple[Segment, ...] | None = None
    key_lineage: frozenset[int] = frozenset()
    whole: Any = field(default=None, repr=False)

    def then(self, op: str, **changes: Any) -> Flow:
        """This flow after ``op``: the op chain grows (up to 8 ops), ``packed`` and the slice
        origin are dropped unless ``changes`` keep them."""
        ops = self.ops if len(self.ops) >= 8 else (*self.ops, op)
        get = changes.get
        return Flow(
            get("role", self.role),
            get("seq", self.seq),
            get("segments", self.segments),
            get("lineage", self.lineage),
            get("packed"),
            get("scale", self.scale),
            ops,
            get("key", self.key),
            get("key_segments", self.key_segments),
            get("key_lineage", self.key_lineage),
            get("whole"),
        )

    @property
    def seq_axis(self) -> int | None:
        """The single axis holding the tokens, or None when they span several or are unknown."""
        if self.seq is None or self.seq[1] - self.seq[0] != 1:
            return None
        return self.seq[0]

    @property
    def key_axis(self) -> int | None:
        if self.key is None or self.key[1] - self.key[0] != 1:
            return None
        return self.key[0]


def segments_sources(segments: tuple[Segment, ...] | None) -> frozenset[str]:
    return frozenset(s.source for s in segments or ())


class FlowTable:
    """Flows keyed by tensor identity, without keeping any tensor alive."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref[torch.Tensor], Flow]] = {}

    def get(self, tensor: object) -> Flow | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        item = self._items.get(id(tensor))
        if item is None or item[0]() is not tensor:
            return None
        return item[1]

    def put(self, tensor: torch.Tensor, flow: Flow) -> None:
        self._items[id(tensor)] = (weakref.ref(tensor), flow)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
