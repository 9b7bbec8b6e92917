"""Softmax invariants of every split-head attention we ship (plain math, einops, fused SDPA):
weights >= 0 summing to 1 over the keys, convex combinations of v, uniform scores giving
the mean, masked keys changing nothing and fully masked rows staying defined.

CPU, float32 and float64; values from a seeded generator, shapes from Hypothesis.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given

from shapetrace.testing import (
    AttentionShapes,
    assert_close,
    attention_shapes,
    default_atol,
    random_key_mask,
    random_qkv,
)
from shapetrace.testing.implementations import ATTENDERS, attend, attention_probs
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = attention_shapes(**shape_bounds())
DTYPES = [torch.float32, torch.float64]
IMPLS = sorted(ATTENDERS)

PIN_ONE_QUERY_77_KEYS = AttentionShapes(
    1, 1, 8, query_tokens=1, context_tokens=77, query_dim=8, context_dim=8
)
PIN_203_QUERIES = AttentionShapes(
    2, 8, 5, query_tokens=203, context_tokens=77, query_dim=40, context_dim=40, seed=3
)
PIN_ONE_KEY = AttentionShapes(
    3, 3, 3, query_tokens=3, context_tokens=1, query_dim=9, context_dim=9, seed=1
)


@pytest.mark.parametrize("dtype", DTYPES)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_QUERY_77_KEYS)
@example(shapes=PIN_203_QUERIES)
def test_probabilities_are_nonnegative_and_each_row_sums_to_one_over_the_keys(
    shapes: AttentionShapes, dtype: torch.dtype
) -> None:
    q, k, _ = random_qkv(shapes, dtype=dtype)
    probs = attention_probs(q, k)
    s = shapes
    assert probs.shape == (s.batch, s.heads, s.query_tokens, s.context_tokens)  # (B, H, N, M)
    assert bool((probs >= 0).all())
    row_sums = probs.double().sum(dim=-1)  # over the M keys: one sum per (b, h, query)
    assert float((row_sums - 1).abs().max()) <= 4 * default_atol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_KEY)
def test_a_value_shared_by_every_key_comes_back_unchanged(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    v = v[:, :, :1].expand_as(v).contiguous()  # every key carries the same value
    out = ATTENDERS[impl](q, k, v)
    expected = v[:, :, :1].expand_as(out).double()
    assert_close(out, expected, expected.to(dtype), what=f"{impl} with one shared value")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_KEY)
def test_each_attended_row_lies_within_the_per_channel_range_of_the_values(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype, scale=3.0)  # peaky weights: rows near the edges
    out = ATTENDERS[impl](q, k, v).double()  # (B, H, N, d)
    low = v.double().amin(dim=2, keepdim=True)  # (B, H, 1, d): per channel, over the M keys
    high = v.double().amax(dim=2, keepdim=True)
    slack = 4 * default_atol(dtype) * float(v.abs().max())
    assert bool((out >= low - slack).all()) and bool((out <= high + slack).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
def test_uniform_scores_give_the_mean_of_the_values(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    out = ATTENDERS[impl](q, torch.zeros_like(k), v)  # every score 0: weights 1/M
    mean = v.double().mean(dim=2, keepdim=True).expand_as(out)
    assert_close(out, mean, v.mean(dim=2, keepdim=True).expand_as(out), what=f"{impl} mean")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_QUERY_77_KEYS)
def test_masked_keys_change_nothing_compared_with_leaving_them_out(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    keep = random_key_mask(shapes.batch, shapes.context_tokens, seed=shapes.seed)  # (B, M)
    masked = ATTENDERS[impl](q, k, v, mask=keep[:, None, None, :])  # (B, H, N, d)
    for b in range(shapes.batch):
        kept = keep[b]
        qb, kb, vb = q[b : b + 1], k[b : b + 1, :, kept], v[b : b + 1, :, kept]
        ref = attend(qb.double(), kb.double(), vb.double())
        assert_close(masked[b : b + 1], ref, attend(qb, kb, vb), what=f"{impl} masked row {b}")


@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
def test_fully_masked_rows_are_defined_zeros_not_nan(shapes: AttentionShapes, impl: str) -> None:
    q, k, v = random_qkv(shapes)
    keep = random_key_mask(shapes.batch, shapes.context_tokens, seed=shapes.seed)
    keep[0] = False  # batch row 0 has no key left
    out = ATTENDERS[impl](q, k, v, mask=keep[:, None, None, :])
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[0], torch.zeros_like(out[0]))
