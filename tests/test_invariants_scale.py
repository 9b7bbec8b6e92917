"""Scale and numerics: scores are scaled by 1/sqrt(head_dim) (not 1/sqrt(inner), not 1) in
every implementation we ship or trace, the scale acts as a temperature on q k^T, and large
inputs stay finite."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, example, given

from shapetrace.reference import CrossAttention
from shapetrace.testing import (
    AttentionShapes,
    assert_close,
    attention_shapes,
    max_abs_diff,
    random_qkv,
)
from shapetrace.testing.implementations import ATTENDERS, attend, build_diffusers_attention
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = attention_shapes(**shape_bounds())
DTYPES = [torch.float32, torch.float64]
IMPLS = sorted(ATTENDERS)
PIN_SD15_LEVEL = AttentionShapes(
    1, 8, 40, query_tokens=64, context_tokens=77, query_dim=320, context_dim=768
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_default_scale_is_one_over_sqrt_head_dim_not_sqrt_inner_width(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    out = ATTENDERS[impl](q, k, v)
    d, inner = shapes.head_dim, shapes.inner_dim
    q64, k64, v64 = q.double(), k.double(), v.double()
    right = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(d), dim=-1) @ v64
    assert_close(out, right, attend(q, k, v, scale=d**-0.5), what=f"{impl} at 1/sqrt({d})")
    if shapes.heads > 1 and shapes.context_tokens > 1:  # 1/sqrt(inner) is a different scale
        wrong = attend(q64, k64, v64, scale=inner**-0.5)
        assume(max_abs_diff(wrong, right) > 1e-3)  # scores large enough to tell them apart
        assert max_abs_diff(out, wrong) > max_abs_diff(out, right)


def test_traced_modules_scale_by_one_over_sqrt_head_dim() -> None:
    seed = CrossAttention(320, 768, num_heads=8)
    assert seed.d_head == 40
    attn = build_diffusers_attention(320, 768, heads=8, head_dim=40)
    assert attn.scale == pytest.approx(40**-0.5)
    assert attn.scale != pytest.approx(320**-0.5)


@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
def test_scaling_queries_by_c_equals_scaling_the_scale_by_c(
    shapes: AttentionShapes, impl: str
) -> None:
    q, k, v = random_qkv(shapes, dtype=torch.float64)
    c = 1.0 + (shapes.seed % 7) / 2  # a temperature between 1 and 4
    s = shapes.head_dim**-0.5
    out = ATTENDERS[impl](c * q, k, v, scale=s)
    expected = ATTENDERS[impl](q, k, v, scale=c * s)
    assert_close(out, expected, expected, what=f"{impl} with q scaled by {c}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_large_inputs_stay_finite_and_accurate(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype, scale=30.0)  # scores in the hundreds and more
    out = ATTENDERS[impl](q, k, v)
    assert bool(torch.isfinite(out).all())
    ref = attend(q.double(), k.double(), v.double())
    assert_close(out, ref, attend(q, k, v), what=f"{impl} on large inputs")
