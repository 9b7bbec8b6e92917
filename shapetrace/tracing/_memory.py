"""What shapetrace remembers of a model between calls and between traces: each layer's
journey per input signature (with its probe plan), and which block signatures hold only
layers it can skip. Dropped when the model's module tree changes."""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from dataclasses import dataclass, field

from torch import nn

from shapetrace.journey import LayerRecord, NotUnderstood
from shapetrace.tracing._plan import Plan

__all__ = ["Learned", "ModelMemory", "memory_of"]


@dataclass
class Learned:
    """One layer's journey at one signature, as recorded, and its probe plan (or None); for a
    layer that ran but was not understood, why (said again in every trace it runs in)."""

    record: LayerRecord | None  # None: the layer ran but was not understood
    plan: Plan | None
    unread: NotUnderstood | None = None


@dataclass
class ModelMemory:
    generation: int
    layers: dict[Hashable, Learned] = field(default_factory=dict)  # (layer path, signature)
    #: block signature -> every layer inside has a probe plan (so probes need no recorder)
    blocks: dict[tuple[int, Hashable], bool] = field(default_factory=dict)
    #: the model's own call signature -> its attention calls in order: (layer path, key,
    #: what was learned of that call)
    roots: dict[Hashable, tuple[tuple[str, Hashable, Learned], ...]] = field(default_factory=dict)


_MEMORY: weakref.WeakKeyDictionary[nn.Module, dict[bool, ModelMemory]] = (
    weakref.WeakKeyDictionary()
)


def memory_of(model: nn.Module, generation: int, monitors: bool) -> ModelMemory:
    """The memory of ``model`` (kept apart for traces with and without monitors), new when
    its module tree changed since."""
    per_model = _MEMORY.setdefault(model, {})
    memory = per_model.get(monitors)
    if memory is None or memory.generation != generation:
        memory = per_model[monitors] = ModelMemory(generation)
    return memory
