"""Properties about where numbers go: output shape, batch rows, heads, token order, masks.

Each function checks one invariant on one :class:`AttentionSubject` and raises
:class:`InvariantViolation` naming it; none needs a reference implementation (the reference
only calibrates the tolerance).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shapetrace.testing._module_subject import check_to_out_contract
from shapetrace.testing._subject import AttentionSubject, Patch, violation
from shapetrace.testing.strategies import random_key_mask
from shapetrace.testing.tolerance import max_abs_diff

__all__ = [
    "check_batch_independence",
    "check_head_independence",
    "check_key_permutation_invariance",
    "check_masking",
    "check_output_shape",
    "check_query_permutation_equivariance",
]


def _permutation(size: int, seed: int, device: str) -> Tensor:
    """A seeded permutation of ``range(size)`` that is not the identity (for size > 1)."""
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    if size > 1 and torch.equal(perm, torch.arange(size)):
        perm = perm.roll(1)
    return perm.to(device)


def _within(actual: Tensor, expected: Tensor, atol: float) -> tuple[bool, float]:
    """(max |actual - expected| <= atol and finite, that max)."""
    diff = max_abs_diff(actual, expected)
    return math.isfinite(diff) and diff <= atol, diff


def _rounding_hint(subject: AttentionSubject, diff: float, scale: Tensor) -> str:
    """A hint when ``diff`` is tiny next to the values: rounding, not a wiring bug."""
    size = float(scale.detach().abs().max()) if scale.numel() else 0.0
    if math.isfinite(diff) and diff < 1e-3 * size:
        return (
            f" (a difference this small, {diff / size:.1e} of the output's size, is rounding: "
            f"does the module compute in a lower precision than {subject.dtype}?)"
        )
    return ""


def check_output_shape(subject: AttentionSubject) -> None:
    """forward returns x's shape and dtype; to_out receives the B*N rows of the merged heads.

    Only the output is judged as a shape: how ``to_out`` is called (per query chunk, per
    batch row, sequence-first) is the module's business, as long as it sees every merged row
    once; when it does not, that is a contract breach (ModuleContractError), not a wrong shape.
    """
    x, context = subject.inputs()
    subject.run(x, context)  # checks the shape and dtype
    check_to_out_contract(subject, x, context)


def check_batch_independence(subject: AttentionSubject) -> None:
    """Each batch row run alone equals its slice of the batched run."""
    x, context = subject.inputs(salt=1)
    batched = subject.run(x, context)
    atol = subject.output_atol(x, context)
    for b in range(subject.shapes.batch):
        alone = subject.run(x[b : b + 1], context[b : b + 1])
        ok, diff = _within(alone, batched[b : b + 1], atol)
        if not ok:
            raise violation(
                "batch_independence",
                subject,
                f"batch row {b} run alone differs from its slice of the batch-of-"
                f"{subject.shapes.batch} run by {diff:.3g} (atol {atol:.2g}): rows of the batch "
                "are mixed; a (B*H, N, d) layout must be batch-major (row b*H + h) on both the "
                "split and the merge" + _rounding_hint(subject, diff, batched),
            )


def _perturbed_head(subject: AttentionSubject, head: int) -> Patch:
    """New (weight, bias) for to_q and the key and value projections with head ``head``'s
    rows perturbed."""
    generator = torch.Generator().manual_seed(subject.shapes.seed + 17)
    rows = slice(head * subject.head_dim, (head + 1) * subject.head_dim)
    changes: Patch = {}
    for name in ("to_q", *subject.key_projections(), *subject.value_projections()):
        layer = subject.linear(name)
        weight = layer.weight.detach().clone()
        noise = torch.randn(
            (subject.head_dim, layer.in_features), generator=generator, dtype=torch.float64
        )
        weight[rows] += (2.0 * noise / math.sqrt(layer.in_features)).to(weight)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        if bias is not None:
            bias[rows] += torch.randn(
                subject.head_dim, generator=generator, dtype=torch.float64
            ).to(bias)
        changes[name] = (weight, bias)
    return changes


def check_head_independence(subject: AttentionSubject) -> None:
    """Perturbing head h's rows of to_q/to_k/to_v changes only head h's attended channels."""
    heads, d = subject.heads, subject.head_dim
    if heads == 1:
        return
    x, context = subject.inputs(salt=2)
    before = subject.attended(x, context)
    head = subject.shapes.seed % heads
    with subject.patched(_perturbed_head(subject, head)):
        after = subject.attended(x, context)
    atol = subject.attended_atol(x, context)
    delta = (after.double() - before.double()).abs().cpu()
    b, n = delta.shape[:2]
    delta = delta.reshape(b, n, heads, d)  # (B, N, H, d)
    others = delta.clone()
    others[:, :, head] = 0
    worst = float(others.max())
    if worst > atol:
        hit = [h for h in range(heads) if float(others[:, :, h].max()) > atol]
        raise violation(
            "head_independence",
            subject,
            f"perturbing head {head}'s rows {head * d}..{(head + 1) * d - 1} of to_q, to_k and "
            f"to_v changed the attended channels of head(s) {hit} by up to {worst:.3g} "
            f"(atol {atol:.2g}): heads are split or merged across the wrong axis; split with "
            "reshape(B, N, H, d).transpose(1, 2) and merge with its exact inverse"
            + _rounding_hint(subject, worst, before),
        )


def check_query_permutation_equivariance(subject: AttentionSubject) -> None:
    """Permuting the query tokens permutes the output the same way."""
    n = subject.shapes.query_tokens
    if n == 1:
        return
    x, context = subject.inputs(salt=3)
    perm = _permutation(n, subject.shapes.seed + 3, subject.device)
    out = subject.run(x, context)
    permuted = subject.run(x[:, perm], context)
    atol = subject.output_atol(x, context)
    ok, diff = _within(permuted, out[:, perm], atol)
    if not ok:
        raise violation(
            "query_permutation_equivariance",
            subject,
            f"permuting the N={n} query tokens changed the output by {diff:.3g} beyond the same "
            f"permutation (atol {atol:.2g}): query tokens leak into each other (a head merge "
            "that mixes tokens, a causal mask, chunks reassembled out of order)"
            + _rounding_hint(subject, diff, out),
        )


def check_key_permutation_invariance(subject: AttentionSubject) -> None:
    """Permuting the context tokens (keys, values and mask together) changes nothing."""
    m = subject.shapes.context_tokens
    if m == 1:
        return
    x, context = subject.inputs(salt=4)
    perm = _permutation(m, subject.shapes.seed + 4, subject.device)
    mask = None
    if subject.masks:
        mask = random_key_mask(
            subject.shapes.batch, m, seed=subject.shapes.seed + 4, device=subject.device
        )
    out = subject.run(x, context, mask)
    permuted = subject.run(x, context[:, perm], None if mask is None else mask[:, perm])
    atol = subject.output_atol(x, context, mask)
    ok, diff = _within(permuted, out, atol)
    if not ok:
        with_mask = " and their mask" if mask is not None else ""
        raise violation(
            "key_permutation_invariance",
            subject,
            f"permuting the M={m} context tokens{with_mask} changed the output by {diff:.3g} "
            f"(atol {atol:.2g}): some key is treated by its position (dropped, truncated, "
            "causally masked) rather than by its content" + _rounding_hint(subject, diff, out),
        )


def check_masking(subject: AttentionSubject) -> None:
    """Masked keys change nothing (= removing them); a fully masked row stays finite."""
    if not subject.masks:
        return
    s = subject.shapes
    x, context = subject.inputs(salt=5)
    keep = random_key_mask(s.batch, s.context_tokens, seed=s.seed + 5, device=subject.device)
    masked = subject.run(x, context, keep)
    for b in range(s.batch):
        kept = context[b : b + 1, keep[b]]
        alone = subject.run(x[b : b + 1], kept)
        atol = subject.output_atol(x[b : b + 1], kept)
        ok, diff = _within(masked[b : b + 1], alone, atol)
        if not ok:
            dropped = (~keep[b]).nonzero().flatten().tolist()
            raise violation(
                "masking",
                subject,
                f"batch row {b} with keys {dropped} of M={s.context_tokens} masked differs by "
                f"{diff:.3g} (atol {atol:.2g}) from the same row run on the other keys alone: "
                "masked keys still change the output" + _rounding_hint(subject, diff, alone),
            )
    none_kept = keep.clone()
    none_kept[0] = False
    out = subject.run(x, context, none_kept, finite=False)
    if not bool(torch.isfinite(out).all()):
        raise violation(
            "masking",
            subject,
            f"with all M={s.context_tokens} keys of batch row 0 masked the output holds "
            f"{int((~torch.isfinite(out)).sum())} NaN/inf values; a fully masked row must stay "
            "defined",
        )
