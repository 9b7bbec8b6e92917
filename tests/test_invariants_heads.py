"""Head split and merge: exactly reshape(B, N, H, d).transpose(1, 2) and back, the same as
einops and as diffusers' batch-major (B*H, N, d) layout, and heads that do not talk to each
other. Pure reshapes are compared exactly (atol = 0)."""

from __future__ import annotations

import einops
import pytest
import torch
from hypothesis import example, given

from shapetrace.testing import AttentionShapes, attention_shapes, random_qkv, random_tensor
from shapetrace.testing.implementations import (
    ATTENDERS,
    build_diffusers_attention,
    merge_heads,
    split_heads,
)
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = attention_shapes(**shape_bounds())
IMPLS = sorted(ATTENDERS)
PIN_SD15_LEVEL = AttentionShapes(
    2, 8, 5, query_tokens=203, context_tokens=77, query_dim=40, context_dim=40
)
PIN_ONE_HEAD = AttentionShapes(
    1, 1, 8, query_tokens=1, context_tokens=77, query_dim=8, context_dim=8
)


def _tokens(shapes: AttentionShapes) -> torch.Tensor:
    """Seeded (B, N, H*d) tokens."""
    return random_tensor((shapes.batch, shapes.query_tokens, shapes.inner_dim), seed=shapes.seed)


@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
@example(shapes=PIN_ONE_HEAD)
def test_split_heads_is_exactly_reshape_then_transpose(shapes: AttentionShapes) -> None:
    x = _tokens(shapes)
    b, n, h, d = shapes.batch, shapes.query_tokens, shapes.heads, shapes.head_dim
    split = split_heads(x, h)
    assert split.shape == (b, h, n, d)
    assert torch.equal(split, x.reshape(b, n, h, d).transpose(1, 2))
    for head in range(h):  # head h holds channels h*d .. (h+1)*d - 1 of every token
        assert torch.equal(split[:, head], x[..., head * d : (head + 1) * d])


@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_merge_of_split_and_split_of_merge_are_exact_identities(shapes: AttentionShapes) -> None:
    x = _tokens(shapes)
    assert torch.equal(merge_heads(split_heads(x, shapes.heads)), x)
    heads = split_heads(x, shapes.heads).contiguous()
    assert torch.equal(split_heads(merge_heads(heads), shapes.heads), heads)


@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_split_and_merge_agree_exactly_with_einops_rearrange(shapes: AttentionShapes) -> None:
    x = _tokens(shapes)
    split = split_heads(x, shapes.heads)
    assert torch.equal(split, einops.rearrange(x, "b n (h d) -> b h n d", h=shapes.heads))
    assert torch.equal(merge_heads(split), einops.rearrange(split, "b h n d -> b n (h d)"))


@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_diffusers_folds_heads_into_the_batch_batch_major(shapes: AttentionShapes) -> None:
    attn = build_diffusers_attention(
        shapes.inner_dim, 4, heads=shapes.heads, head_dim=shapes.head_dim
    )
    x = _tokens(shapes)
    folded = attn.head_to_batch_dim(x)  # (B*H, N, d), row b*H + h
    split = split_heads(x, shapes.heads)  # (B, H, N, d)
    for b in range(shapes.batch):
        for h in range(shapes.heads):
            assert torch.equal(folded[b * shapes.heads + h], split[b, h])
    assert torch.equal(attn.batch_to_head_dim(folded), x)


@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_perturbing_one_heads_query_changes_only_that_heads_rows(
    shapes: AttentionShapes, impl: str
) -> None:
    q, k, v = random_qkv(shapes)
    head = shapes.seed % shapes.heads
    nudged = q.clone()
    nudged[:, head] += random_tensor(nudged[:, head].shape, seed=shapes.seed + 1)
    before, after = ATTENDERS[impl](q, k, v), ATTENDERS[impl](nudged, k, v)  # (B, H, N, d)
    others = [h for h in range(shapes.heads) if h != head]
    assert torch.equal(after[:, others], before[:, others])
