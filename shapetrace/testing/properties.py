"""The attention invariants, one property each, in the order the checks run them.

The order is diagnostic: structural properties first (shape, batch rows, heads, token
order), then the ones about values (softmax weights, convex combination, scale), and the
catch-all comparison with a float64 reference last. A wrong module is reported under the
first property it fails, so the name points at the cause (a module that scales by
1/sqrt(inner) passes every structural property and fails ``scale``, not only
``reference_agreement``).

Example::

    >>> [inv.name for inv in INVARIANTS][:3]
    ['output_shape', 'batch_independence', 'softmax_normalization']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shapetrace.testing._props_structure import (
    check_batch_independence,
    check_head_independence,
    check_key_permutation_invariance,
    check_masking,
    check_output_shape,
    check_query_permutation_equivariance,
)
from shapetrace.testing._props_values import (
    check_convex_combination,
    check_finite_large_inputs,
    check_reference_agreement,
    check_scale,
    check_softmax_normalization,
    check_uniform_scores,
)
from shapetrace.testing._subject import AttentionSubject
from shapetrace.testing._violation import InvariantViolation

__all__ = ["INVARIANTS", "INVARIANT_NAMES", "Invariant", "InvariantViolation", "select_invariants"]


@dataclass(frozen=True)
class Invariant:
    """One property: its ``name`` (as failure messages start), the ``statement`` it checks,
    the ``check`` run on a subject, and whether it needs a mask (processors only)."""

    name: str
    statement: str
    check: Callable[[AttentionSubject], None]
    needs_mask: bool = False


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "output_shape",
        "forward(x (B, N, query_dim), context (B, M, context_dim)) returns (B, N, query_dim) "
        "for any M and context width, the merged heads (B, N, inner) passing through to_out",
        check_output_shape,
    ),
    Invariant(
        "batch_independence",
        "each batch row run alone equals its slice of the batched run",
        check_batch_independence,
    ),
    Invariant(
        "softmax_normalization",
        "attention weights are >= 0 and each query's weights sum to 1 over the M keys",
        check_softmax_normalization,
    ),
    Invariant(
        "head_independence",
        "heads split as reshape(B, N, H, d).transpose(1, 2) and merge back exactly: "
        "perturbing head h's slice of q, k and v changes only head h's attended channels",
        check_head_independence,
    ),
    Invariant(
        "query_permutation_equivariance",
        "permuting the query tokens permutes the output the same way",
        check_query_permutation_equivariance,
    ),
    Invariant(
        "key_permutation_invariance",
        "permuting the context tokens (keys, values and mask together) leaves the output unchanged",
        check_key_permutation_invariance,
    ),
    Invariant(
        "masking",
        "masked keys change nothing (the same as removing them); fully masked rows stay finite",
        check_masking,
        needs_mask=True,
    ),
    Invariant(
        "convex_combination",
        "each attended row lies within the per-channel min/max of v over the keys",
        check_convex_combination,
    ),
    Invariant(
        "uniform_scores",
        "with all scores equal, each attended row is the mean of v over all M keys",
        check_uniform_scores,
    ),
    Invariant(
        "scale",
        "scores are scaled by 1/sqrt(head_dim), not 1/sqrt(inner) and not 1",
        check_scale,
    ),
    Invariant(
        "reference_agreement",
        "the output agrees with a float64 reference on the same weights, within "
        "atol = fudge * max(|ref64 - ref_lowp|, default_atol)",
        check_reference_agreement,
    ),
    Invariant(
        "finite_large_inputs",
        "inputs scaled up (scores in the hundreds) give a finite output in every dtype",
        check_finite_large_inputs,
    ),
)
"""Every invariant, in the order the checks run them."""

INVARIANT_NAMES: tuple[str, ...] = tuple(inv.name for inv in INVARIANTS)


def select_invariants(names: Iterable[str] | None, *, with_mask: bool) -> tuple[Invariant, ...]:
    """The invariants named (all when None), in check order; ``with_mask=False`` drops the
    ones that need a mask. Unknown names raise ValueError listing the known ones.

    >>> [inv.name for inv in select_invariants(["scale", "output_shape"], with_mask=False)]
    ['output_shape', 'scale']
    """
    available = tuple(inv for inv in INVARIANTS if with_mask or not inv.needs_mask)
    if names is None:
        return available
    wanted = [names] if isinstance(names, str) else list(names)
    known = {inv.name for inv in available}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"unknown invariant(s) {unknown}; choose from "
            f"{', '.join(inv.name for inv in available)}"
        )
    return tuple(inv for inv in available if inv.name in wanted)
