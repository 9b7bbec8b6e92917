"""Properties that compare with the oracle: the output without and with autograd (gradients
too), and at large logits; and finiteness where ``exp`` overflows.

The oracle is the float64 math reference on the module's own weights, or for a processor the
same ``Attention`` on diffusers' reference processor in float64; the tolerance is PyTorch's
self-calibrating rule (see :mod:`shapetrace.testing.tolerance`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from shapetrace.testing._subject import AttentionSubject, violation
from shapetrace.testing.implementations import split_heads
from shapetrace.testing.strategies import random_key_mask, random_tensor
from shapetrace.testing.tolerance import max_abs_diff

__all__ = [
    "GRADIENT_FUDGE",
    "GRADIENT_RTOL",
    "LARGE_INPUT_SCALE",
    "LOGIT_FACTOR",
    "check_finite_large_inputs",
    "check_gradient_agreement",
    "check_large_logit_agreement",
    "check_reference_agreement",
]

LARGE_INPUT_SCALE = 16.0
"""x and context are multiplied by this in :func:`check_finite_large_inputs`: scores grow
256-fold, to the hundreds and more, where ``exp`` overflows unless each row's max is
subtracted first."""

GRADIENT_FUDGE = 4.0
"""Gradients get four times the output's fudge: a backward sums over every token, in another
order than the reference's (PyTorch's own SDPA gradient tests use fudges of 4 to 160)."""

GRADIENT_RTOL: dict[torch.dtype, float] = {torch.float16: 0.05, torch.bfloat16: 0.1}
"""In half precision a gradient may also be off by this fraction of the largest gradient
entry of the call: a weight's gradient sums over every token (a key bias's cancels to zero),
and an implementation that sums per chunk rounds each partial sum (bfloat16 keeps 8 bits).
A lost or wrong backward is off by far more."""

LOGIT_FACTOR = 6.0
"""to_q and the key projections are multiplied by this in :func:`check_large_logit_agreement`:
every score grows 36-fold, to the hundreds, as trained models' do."""


def _within(actual: Tensor, expected: Tensor, atol: float) -> tuple[bool, float]:
    diff = max_abs_diff(actual, expected)
    return math.isfinite(diff) and diff <= atol, diff


def _largest_logit(subject: AttentionSubject, x: Tensor, context: Tensor) -> str:
    """', largest scaled score about N' from the plain math (empty where that is not it)."""
    if not subject.configuration.plain_math:
        return ""
    w = subject.weights()
    keys = x if subject.configuration.self_attention else context
    q = split_heads(F.linear(x.double(), w.q_weight, w.q_bias), subject.heads)
    k = split_heads(F.linear(keys.double(), w.k_weight, w.k_bias), subject.heads)
    top = float(torch.matmul(q, k.transpose(-2, -1)).abs().max()) * subject.head_dim**-0.5
    return f", largest scaled score about {top:.3g}"


def check_reference_agreement(subject: AttentionSubject) -> None:
    """The output agrees with the oracle in float64 within the calibrated tolerance, without
    and (where the layer takes one) with a key mask."""
    s = subject.shapes
    x, context = subject.inputs(salt=10)
    masks: list[Tensor | None] = [None]
    if subject.masks:
        masks.append(
            random_key_mask(s.batch, subject.key_tokens, seed=s.seed + 10, device=subject.device)
        )
    for mask in masks:
        out = subject.run(x, context, mask)
        ref64 = subject.reference(x, context, mask)
        atol = subject.atol(ref64, subject.reference(x, context, mask, dtype=subject.dtype))
        ok, diff = _within(out, ref64, atol)
        if not ok:
            masked = " with a key mask" if mask is not None else ""
            raise violation(
                "reference_agreement",
                subject,
                f"the output{masked} differs from {subject.oracle} by {diff:.3g} "
                f"(atol {atol:.2g}){subject.agreement_hint()}",
            )


def check_gradient_agreement(subject: AttentionSubject) -> None:
    """With autograd on, the output and the gradients of sum(output * g) to the inputs and the
    parameters agree with the oracle's in float64 (a path taken only when autograd is on is
    run, and a detached or hand-written backward is caught); with a key mask on even seeds,
    where the layer takes one."""
    s = subject.shapes
    x, context = subject.inputs(salt=12)
    cotangent = random_tensor(
        (s.batch, s.query_tokens, s.query_dim),
        seed=s.seed + 12,
        dtype=subject.dtype,
        device=subject.device,
    )
    mask = None
    if subject.masks and s.seed % 2 == 0:  # masked on even seeds: paths with and without
        mask = random_key_mask(s.batch, subject.key_tokens, seed=s.seed + 12, device=subject.device)
    out, grads = subject.gradients(x, context, cotangent, mask)
    subject.checked(out, x)
    ref_out, ref_grads = subject.reference_gradients(x, context, cotangent, mask)
    lowp_out, lowp_grads = subject.reference_gradients(
        x, context, cotangent, mask, dtype=subject.dtype
    )
    atol = subject.atol(ref_out, lowp_out)
    ok, diff = _within(out, ref_out, atol)
    if not ok:
        plain = _within(subject.run(x, context, mask), ref_out, atol)[0]
        where = " (under torch.no_grad it agrees: a path taken only with autograd on)" * plain
        raise violation(
            "gradient_agreement",
            subject,
            f"with autograd on, the output differs "
            f"from {subject.oracle} by {diff:.3g} (atol {atol:.2g}){where}",
        )
    largest = max((float(g.abs().max()) for g in ref_grads.values() if g is not None), default=0.0)
    for name, expected in ref_grads.items():
        got = grads.get(name)
        if expected is None:
            continue
        if got is None:
            raise violation(
                "gradient_agreement",
                subject,
                f"no gradient reaches {name}, "
                "though the output depends on it: the graph is cut (a detach, "
                "torch.no_grad or .data inside forward)",
            )
        lowp = lowp_grads.get(name)
        g_atol = subject.atol(expected, expected if lowp is None else lowp, fudge=GRADIENT_FUDGE)
        g_atol = max(g_atol, GRADIENT_RTOL.get(subject.dtype, 0.0) * largest)
        ok, diff = _within(got, expected, g_atol)
        if not ok:
            raise violation(
                "gradient_agreement",
                subject,
                f"the gradient to {name} {tuple(expected.shape)} differs from the float64 "
                f"oracle's by {diff:.3g} (atol {g_atol:.2g}) while the output agrees: the "
                "backward is wrong (a detached tensor, a hand-written backward, a gradient "
                "path that skips the softmax)",
            )


def check_finite_large_inputs(subject: AttentionSubject) -> None:
    """With x and context scaled by LARGE_INPUT_SCALE, the output holds no NaN or inf."""
    x, context = subject.inputs(salt=11, scale=LARGE_INPUT_SCALE)
    out = subject.run(x, context, finite=False)
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise violation(
            "finite_large_inputs",
            subject,
            f"with x and context scaled by {LARGE_INPUT_SCALE:g}"
            f"{_largest_logit(subject, x, context)}, the output holds {bad} NaN/inf values of "
            f"{out.numel()}: subtract each row's max before exp (torch.softmax does), and keep "
            "scores in a wide enough dtype",
        )


def check_large_logit_agreement(subject: AttentionSubject) -> None:
    """With to_q and the key projections scaled by LOGIT_FACTOR (scores x36), the output
    agrees with the oracle in float64 within the calibrated tolerance."""
    x, context = subject.inputs(salt=13)
    with subject.patched(subject.logit_scaling(LOGIT_FACTOR)):
        out = subject.run(x, context, finite=False)
        ref64 = subject.reference(x, context)
        lowp = subject.reference(x, context, dtype=subject.dtype)
        top = _largest_logit(subject, x, context)
    factor = f"scores scaled by {LOGIT_FACTOR**2:g} (q and k projections by {LOGIT_FACTOR:g}){top}"
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise violation(
            "finite_large_inputs",
            subject,
            f"with {factor}, the output holds {bad} "
            f"NaN/inf values of {out.numel()}: subtract each row's max before exp "
            "and keep scores in a wide enough dtype",
        )
    atol = subject.atol(ref64, lowp)
    ok, diff = _within(out, ref64, atol)
    if not ok:
        raise violation(
            "large_logit_agreement",
            subject,
            f"with {factor}, the output differs from {subject.oracle} by {diff:.3g} (atol "
            f"{atol:.2g}), though it agrees at ordinary scores: large logits are clamped, "
            "rounded or overflow somewhere",
        )
