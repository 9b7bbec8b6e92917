"""The attention invariants, one property each, in the order the checks run them.

The order is diagnostic: structural properties first (shape, finiteness, batch rows, heads,
token order), then the ones about values (softmax weights, convex combination, scale), and
the comparisons with a float64 oracle last (without and with autograd, then at large
logits). A wrong module is reported under the
first property it fails, so the name points at the cause (a module that scales by
1/sqrt(inner) passes every structural property and fails ``scale``, not only
``reference_agreement``).

Example::

    >>> [inv.name for inv in INVARIANTS][:3]
    ['output_shape', 'finite_output', 'batch_independence']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shapetrace.testing._configurations import Configuration
from shapetrace.testing._props_agreement import (
    check_finite_large_inputs,
    check_gradient_agreement,
    check_large_logit_agreement,
    check_reference_agreement,
)
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
    check_scale,
    check_softmax_normalization,
    check_uniform_scores,
)
from shapetrace.testing._subject import AttentionSubject
from shapetrace.testing._violation import CheckArgumentError, InvariantViolation

__all__ = ["INVARIANTS", "INVARIANT_NAMES", "Invariant", "InvariantViolation", "select_invariants"]


def _always(config: Configuration) -> bool:
    return True


def _plain(config: Configuration) -> bool:
    return config.plain_math


def _context_set(config: Configuration) -> bool:
    return config.context_set


def _plain_context_set(config: Configuration) -> bool:
    return config.plain_math and config.context_set


def _maskable_context_set(config: Configuration) -> bool:
    return config.context_set and config.masks


def _token_equivariant(config: Configuration) -> bool:
    return config.token_equivariant


def check_finite_output(subject: AttentionSubject) -> None:
    """Inputs of std 1 give a finite output (``subject.run`` checks it on every run)."""
    x, context = subject.inputs(salt=14)
    subject.run(x, context)


@dataclass(frozen=True)
class Invariant:
    """One property: its ``name`` (as failure messages start), the ``statement`` it checks,
    the ``check`` run on a subject, whether it needs a mask (processors only), which layer
    configurations it ``applies`` to, and whether it runs on every configuration
    (``everywhere``) or only on the primary ones (plain cross- and self-attention)."""

    name: str
    statement: str
    check: Callable[[AttentionSubject], None]
    needs_mask: bool = False
    applies: Callable[[Configuration], bool] = _always
    everywhere: bool = False

    def runs_on(self, config: Configuration) -> bool:
        """Whether this invariant is checked on layers of ``config``."""
        return (config.primary or self.everywhere) and self.applies(config)


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "output_shape",
        "forward(x (B, N, query_dim), context (B, M, context_dim)) returns x's shape and dtype "
        "for any M and context width (a (B, C, H, W) map for a map)",
        check_output_shape,
        everywhere=True,
    ),
    Invariant(
        "finite_output",
        "inputs of std 1 give an output with no NaN or inf",
        check_finite_output,
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
        applies=_plain_context_set,
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
        applies=_token_equivariant,
    ),
    Invariant(
        "key_permutation_invariance",
        "permuting the context tokens (keys, values and mask together) leaves the output unchanged",
        check_key_permutation_invariance,
        applies=_context_set,
    ),
    Invariant(
        "masking",
        "masked keys change nothing (the same as removing them); fully masked rows stay finite",
        check_masking,
        needs_mask=True,
        applies=_maskable_context_set,
    ),
    Invariant(
        "convex_combination",
        "each attended row lies within the per-channel min/max of v over the keys",
        check_convex_combination,
        applies=_plain,
    ),
    Invariant(
        "uniform_scores",
        "with all scores equal, each attended row is the mean of v over all M keys",
        check_uniform_scores,
        applies=_plain,
    ),
    Invariant(
        "scale",
        "scores are scaled by 1/sqrt(head_dim), not 1/sqrt(inner) and not 1",
        check_scale,
        applies=_plain,
    ),
    Invariant(
        "reference_agreement",
        "the output, without and with a key mask, agrees with a float64 oracle on the same "
        "weights within atol = fudge * max(|ref64 - ref_lowp|, default_atol)",
        check_reference_agreement,
        everywhere=True,
    ),
    Invariant(
        "gradient_agreement",
        "with autograd on, the output and the gradients to the inputs and parameters agree "
        "with the float64 oracle's within the calibrated tolerance",
        check_gradient_agreement,
        everywhere=True,
    ),
    Invariant(
        "finite_large_inputs",
        "inputs scaled by 16 (scores 256 times larger, into the hundreds) give a finite output",
        check_finite_large_inputs,
    ),
    Invariant(
        "large_logit_agreement",
        "with every score scaled by 36 (to the hundreds) the output still agrees with the "
        "float64 oracle within the calibrated tolerance",
        check_large_logit_agreement,
        everywhere=True,
    ),
)
"""Every invariant, in the order the checks run them."""

INVARIANT_NAMES: tuple[str, ...] = tuple(inv.name for inv in INVARIANTS)


def select_invariants(names: Iterable[str] | None, *, with_mask: bool) -> tuple[Invariant, ...]:
    """The invariants named (all when None), in check order; ``with_mask=False`` drops the
    ones that need a mask. Unknown names and an empty selection raise CheckArgumentError.

    >>> [inv.name for inv in select_invariants(["scale", "output_shape"], with_mask=False)]
    ['output_shape', 'scale']
    """
    available = tuple(inv for inv in INVARIANTS if with_mask or not inv.needs_mask)
    if names is None:
        return available
    wanted = [names] if isinstance(names, str) else list(names)
    choices = ", ".join(inv.name for inv in available)
    if not wanted:
        raise CheckArgumentError(
            f"invariants={wanted!r} selects nothing, so nothing would be checked; leave it out "
            f"(None: every invariant) or name some of: {choices}"
        )
    known = {inv.name for inv in available}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise CheckArgumentError(f"unknown invariant(s) {unknown}; choose from {choices}")
    return tuple(inv for inv in available if inv.name in wanted)
