"""The records that say what a planted bug is: its kind, its honest diagnosis, and witnesses
of where it shows (and, for bugs that hide, where it does not), for the float64 proofs in
test_mutants (see float64_oracle.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shapetrace.testing import AttentionShapes

__all__ = [
    "AUTOGRAD",
    "GENERIC",
    "LARGE",
    "SHAPES_VARY",
    "ModuleWitness",
    "Planted",
    "ProcessorWitness",
]

GENERIC = AttentionShapes(2, 4, 4, 9, 7, 16, 12, seed=1)
"""A call where nothing is special: two rows, four heads of 4, N=9 queries, M=7 keys."""


@dataclass(frozen=True)
class ModuleWitness:
    """Where a module's bug shows: ``shapes``; to_q and to_k scaled by ``logit_factor``
    (every score times its square); ``gradients`` when it shows only in the backward or
    with autograd on."""

    shapes: AttentionShapes = field(default_factory=lambda: GENERIC)
    logit_factor: float = 1.0
    gradients: bool = False


@dataclass(frozen=True)
class ProcessorWitness:
    """Where a processor's bug shows: ``Attention(query_dim, heads=2, dim_head=4, **kwargs)``
    on a (B=2, query_dim, *grid) map (or (2, N, query_dim) tokens when ``grid`` is None),
    with ``context`` tokens (None: self-attention), an additive key mask, a ``temb`` map."""

    kwargs: dict[str, Any] = field(default_factory=lambda: {"cross_attention_dim": 12})
    query_dim: int = 16
    grid: tuple[int, int] | None = None
    tokens: int = 9
    context: int | None = 7
    mask: bool = False
    temb: bool = False
    logit_factor: float = 1.0
    gradients: bool = False
    added_kv: bool = False
    oracle_without: tuple[str, ...] = ()  # kwargs the float64 oracle leaves out (upcasting)


@dataclass(frozen=True)
class Planted:
    """A planted bug: its ``kind``, the invariants that honestly name it, its witness, for a
    processor the configurations to check it on, and for a bug that hides, a witness where
    the code is right."""

    kind: str
    expected: tuple[str, ...]
    witness: Any = field(default_factory=ModuleWitness)
    configurations: tuple[str, ...] | None = None  # processors: None, the default ones
    hides: Any = None  # where the bug does not show (for the kinds that hide), None: nowhere


SHAPES_VARY = "shows only at some shapes"
AUTOGRAD = "shows only with autograd on"
LARGE = "shows only at large logits"
