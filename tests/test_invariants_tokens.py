"""Token and batch invariants: the output keeps the query's shape for any context, context
tokens form a set (permuting them with their mask changes nothing), queries are processed
independently (permuting them permutes the output), and so are batch rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import example, given
from torch import nn

from shapetrace.reference import CrossAttention
from shapetrace.testing import (
    AttentionShapes,
    assert_close,
    attention_shapes,
    random_key_mask,
    random_qkv,
    random_tensor,
)
from shapetrace.testing.implementations import (
    ATTENDERS,
    EinopsCrossAttention,
    SDPACrossAttention,
    attend,
    build_diffusers_attention,
)
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = attention_shapes(**shape_bounds())
DTYPES = [torch.float32, torch.float64]
IMPLS = sorted(ATTENDERS)
PIN_ONE_QUERY = AttentionShapes(
    1, 1, 8, query_tokens=1, context_tokens=77, query_dim=8, context_dim=12
)
PIN_203_QUERIES = AttentionShapes(
    3, 8, 5, query_tokens=203, context_tokens=77, query_dim=40, context_dim=24
)


def _perm(size: int, seed: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "build",
    [
        lambda s: CrossAttention(s.query_dim, s.context_dim, num_heads=s.heads),
        lambda s: EinopsCrossAttention(s.query_dim, s.context_dim, num_heads=s.heads),
        lambda s: SDPACrossAttention(s.query_dim, s.context_dim, num_heads=s.heads),
        lambda s: build_diffusers_attention(
            s.query_dim, s.context_dim, heads=s.heads, head_dim=s.head_dim
        ),
    ],
    ids=["seed_reference", "einops_module", "sdpa_module", "diffusers_attention"],
)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_QUERY)
@example(shapes=PIN_203_QUERIES)
def test_output_keeps_the_query_shape_for_any_context_length_and_width(
    build: Callable[[AttentionShapes], nn.Module], shapes: AttentionShapes
) -> None:
    module = build(shapes)
    x = random_tensor((shapes.batch, shapes.query_tokens, shapes.query_dim), seed=shapes.seed)
    context = random_tensor((shapes.batch, shapes.context_tokens, shapes.context_dim), seed=1)
    with torch.no_grad():
        out = module(x, context)  # diffusers: (hidden_states, encoder_hidden_states)
    assert out.shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "with_mask"])
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_ONE_QUERY)
def test_permuting_context_tokens_with_their_mask_leaves_the_output_unchanged(
    shapes: AttentionShapes, impl: str, masked: bool, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    mask = (
        random_key_mask(shapes.batch, shapes.context_tokens, seed=shapes.seed) if masked else None
    )
    perm = _perm(shapes.context_tokens, shapes.seed)

    def run(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return ATTENDERS[impl](q, k, v, mask=None if mask is None else mask[:, None, None, :])

    out = run(k, v, mask)
    permuted = run(k[:, :, perm], v[:, :, perm], None if mask is None else mask[:, perm])
    ref = out.double()
    assert_close(permuted, ref, out, what=f"{impl} after permuting the keys")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_203_QUERIES)
def test_permuting_queries_permutes_the_output_the_same_way(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    perm = _perm(shapes.query_tokens, shapes.seed)
    out = ATTENDERS[impl](q, k, v)
    permuted = ATTENDERS[impl](q[:, :, perm], k, v)
    assert_close(permuted, out[:, :, perm].double(), out[:, :, perm], what=f"{impl} permuted")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_203_QUERIES)
def test_each_batch_row_alone_equals_its_slice_of_the_batched_run(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    batched = ATTENDERS[impl](q, k, v)
    for b in range(shapes.batch):
        alone = ATTENDERS[impl](q[b : b + 1], k[b : b + 1], v[b : b + 1])
        ref = attend(q[b : b + 1].double(), k[b : b + 1].double(), v[b : b + 1].double())
        assert_close(alone, ref, batched[b : b + 1], what=f"{impl} batch row {b} alone")
        assert_close(batched[b : b + 1], ref, alone, what=f"{impl} batch row {b} in the batch")
