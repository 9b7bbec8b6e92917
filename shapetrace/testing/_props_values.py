"""Properties about the numbers: softmax weights, convex combinations, uniform scores, the
scale. Each checks one invariant on one subject whose output is plain attention
(``configuration.plain_math``) and raises :class:`InvariantViolation`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from shapetrace.testing._subject import AttentionSubject, Patch, violation
from shapetrace.testing.tolerance import max_abs_diff

__all__ = [
    "check_convex_combination",
    "check_scale",
    "check_softmax_normalization",
    "check_uniform_scores",
]


def _within(actual: Tensor, expected: Tensor, atol: float) -> tuple[bool, float]:
    diff = max_abs_diff(actual, expected)
    return math.isfinite(diff) and diff <= atol, diff


def _value_scaling(subject: AttentionSubject) -> tuple[Patch, Tensor]:
    """to_v rescaled per channel by seeded factors D in [0.5, 2]: (patch, D)."""
    to_v = subject.linear("to_v")
    generator = torch.Generator().manual_seed(subject.shapes.seed + 6)
    factors = 0.5 + 1.5 * torch.rand(to_v.out_features, generator=generator, dtype=torch.float64)
    on_device = factors.to(to_v.weight.device)
    weight = (to_v.weight.detach().double() * on_device[:, None]).to(to_v.weight)
    bias = None if to_v.bias is None else (to_v.bias.detach().double() * on_device).to(to_v.bias)
    return {"to_v": (weight, bias)}, factors


def check_softmax_normalization(subject: AttentionSubject) -> None:
    """With every key the same token, each attended row must be exactly that token's value:
    the weights of one query sum to 1 over the M keys (not over queries, not over heads).

    Only a miss that is a *row-sum* error is reported here: each head's attended channels come
    out r times the value, with the same r when the values are rescaled (and head_dim >= 2,
    so that "the same r for every channel" means something). Any other miss belongs to
    another invariant, reported by the properties after this one.
    """
    s = subject.shapes
    x, context = subject.inputs(salt=6)
    context = context[:, :1].expand(-1, s.context_tokens, -1).contiguous()  # M copies of one token
    merged = subject.attended(x, context)
    expected = subject.math_reference(x, context).merged  # the value u, in every row
    atol = subject.attended_atol(x, context)
    if _within(merged, expected, atol)[0] or subject.head_dim < 2:
        return
    patch, factors = _value_scaling(subject)
    with subject.patched(patch):
        rescaled = subject.attended(x, context)
    shape = (s.batch, s.query_tokens, subject.heads, subject.head_dim)
    a = torch.cat(
        [merged.double().cpu().reshape(shape), rescaled.double().cpu().reshape(shape)], -1
    )
    u = expected.cpu().reshape(shape)
    u = torch.cat([u, u * factors.reshape(subject.heads, subject.head_dim)], -1)  # (B, N, H, 2d)
    if not bool(torch.isfinite(a).all()):
        return
    size = u.norm(dim=-1)  # (B, N, H)
    usable = size > 10 * atol
    if not bool(usable.any()):
        return
    sums = (a * u).sum(-1) / size.clamp_min(1e-300) ** 2  # (B, N, H): each row's weight sum
    residual = (a - sums[..., None] * u).abs().amax(dim=-1)[usable]
    missed = (a - u).abs().amax(dim=-1)[usable]
    if float(residual.max()) <= atol and float(missed.max()) > atol:
        r = sums[usable]
        raise violation(
            "softmax_normalization",
            subject,
            f"with all M={s.context_tokens} keys the same token, attended rows come out "
            f"{float(r.min()):.4g} to {float(r.max()):.4g} times its value instead of exactly "
            "1 times: each query's attention weights must sum to 1 over the key axis "
            "(softmax(dim=-1) on (B, H, N, M) scores), not over queries or heads",
        )


def check_convex_combination(subject: AttentionSubject) -> None:
    """Every attended channel lies within that channel's min/max of v over the M keys."""
    x, context = subject.inputs(salt=7)
    merged = subject.attended(x, context)
    keys = x if subject.configuration.self_attention else context
    w = subject.weights()
    v = F.linear(keys.double(), w.v_weight, w.v_bias)  # (B, M, inner)
    low, high = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)  # (B, 1, inner)
    atol = subject.attended_atol(x, context)
    a = merged.double()
    excess = torch.maximum(low - a, a - high)  # (B, N, inner), > 0 outside the range
    worst = float(excess.max())
    if worst > atol:
        b, n, ch = (int(i) for i in torch.nonzero(excess == excess.max())[0])
        raise violation(
            "convex_combination",
            subject,
            f"attended channel {ch} of query {n} (batch row {b}) is {float(a[b, n, ch]):.4g}, "
            f"outside [{float(low[b, 0, ch]):.4g}, {float(high[b, 0, ch]):.4g}], the range of "
            f"that channel of v = to_v(context) over the {subject.key_tokens} keys "
            f"(by {worst:.3g}, atol {atol:.2g}): the output is not a weighted average of the "
            "values (keys and values swapped? the context ignored?)",
        )


def check_uniform_scores(subject: AttentionSubject) -> None:
    """With to_k zeroed every score is equal, so each attended row is the mean of v."""
    x, context = subject.inputs(salt=8)
    to_k = subject.linear("to_k")
    zero_bias = None if to_k.bias is None else torch.zeros_like(to_k.bias)
    with subject.patched({"to_k": (torch.zeros_like(to_k.weight), zero_bias)}):
        merged = subject.attended(x, context)
        ref64 = subject.math_reference(x, context).merged
        lowp = subject.math_reference(x, context, dtype=subject.dtype).merged
    atol = subject.atol(ref64, lowp)
    ok, diff = _within(merged, ref64, atol)
    if ok:
        return
    hint = ""
    keys = x if subject.configuration.self_attention else context
    if subject.key_tokens > 1:
        w = subject.weights()
        v = F.linear(keys.double(), w.v_weight, w.v_bias)  # (B, M, inner)
        for label, part in (("the last", v[:, :-1]), ("the first", v[:, 1:])):
            if _within(merged, part.mean(dim=1, keepdim=True).expand_as(ref64), atol)[0]:
                hint = f"; it is the mean over M-1 keys, {label} context token left out"
    raise violation(
        "uniform_scores",
        subject,
        f"with to_k zeroed (all scores equal) attended rows should be the mean of v over all "
        f"{subject.key_tokens} keys, but are off by {diff:.3g} (atol {atol:.2g}){hint}",
    )


_SCALES = (
    ("1 (no scaling)", lambda d, inner, qd, cd: 1.0),
    ("1/sqrt(inner)", lambda d, inner, qd, cd: inner**-0.5),
    ("1/head_dim", lambda d, inner, qd, cd: 1.0 / d),
    ("1/inner", lambda d, inner, qd, cd: 1.0 / inner),
    ("sqrt(head_dim)", lambda d, inner, qd, cd: d**0.5),
    ("1/sqrt(query_dim)", lambda d, inner, qd, cd: qd**-0.5),
    ("1/sqrt(context_dim)", lambda d, inner, qd, cd: cd**-0.5),
)


def check_scale(subject: AttentionSubject) -> None:
    """Scores are scaled by 1/sqrt(head_dim): when the output misses the reference, but
    matches the reference at another common scale, that scale is named."""
    s, d = subject.shapes, subject.head_dim
    x, context = subject.inputs(salt=9)
    out = subject.run(x, context)
    right = d**-0.5
    ref64 = subject.math_reference(x, context)
    atol = subject.atol(
        ref64.output, subject.math_reference(x, context, dtype=subject.dtype).output
    )
    ok, miss = _within(out, ref64.output, atol)
    if ok:
        return
    for label, formula in _SCALES:
        scale = formula(d, subject.inner, s.query_dim, s.context_dim)
        if abs(scale - right) <= 1e-9 * right:
            continue  # this example cannot tell the two apart
        other = subject.math_reference(x, context, scale=scale).output
        if _within(out, other, atol)[0]:
            raise violation(
                "scale",
                subject,
                f"the output matches attention with scores scaled by {label} = {scale:.4g} "
                f"(within {max_abs_diff(out, other):.2g}), not by 1/sqrt(head_dim) = 1/sqrt({d}) "
                f"= {right:.4g} (off by {miss:.3g}, atol {atol:.2g})",
            )
