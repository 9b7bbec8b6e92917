"""Every implementation we ship or trace computes the same attention: the seed reference
module, the functional version, einops, ``F.scaled_dot_product_attention`` and diffusers'
``Attention`` with ``AttnProcessor`` and ``AttnProcessor2_0``, sharing the same weights,
all agree with the float64 reference within the self-calibrating tolerance; and each passes
the full invariant check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from hypothesis import example, given
from mutants import SHIPPED
from torch import Tensor, nn

from shapetrace.reference import CrossAttention, SpatialCrossAttention, cross_attention
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
    ProjectionWeights,
    SDPACrossAttention,
    attend,
    diffusers_attention_like,
    reference_attention,
)
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = attention_shapes(**shape_bounds())
DTYPES = [torch.float32, torch.float64]
PIN_SD15_LEVEL = AttentionShapes(
    2, 8, 5, query_tokens=203, context_tokens=77, query_dim=40, context_dim=24
)
PIN_ONE_HEAD = AttentionShapes(
    1, 1, 8, query_tokens=1, context_tokens=77, query_dim=8, context_dim=12
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "with_mask"])
@pytest.mark.parametrize("impl", sorted(ATTENDERS))
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_split_head_attention_implementations_agree_with_float64_math(
    shapes: AttentionShapes, impl: str, masked: bool, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype)
    mask = None
    if masked:
        mask = random_key_mask(shapes.batch, shapes.context_tokens, seed=shapes.seed)[
            :, None, None, :
        ]
    out = ATTENDERS[impl](q, k, v, mask=mask)
    ref = attend(q.double(), k.double(), v.double(), mask=mask)
    assert_close(out, ref, attend(q, k, v, mask=mask), what=impl)


def _seed_module(shapes: AttentionShapes, dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shapes.seed)
        module = CrossAttention(shapes.query_dim, shapes.context_dim, num_heads=shapes.heads)
    return module.to(dtype).eval()


def _sharing_weights(seed: nn.Module, heads: int) -> dict[str, nn.Module]:
    """The implementations we ship or trace, each holding ``seed``'s weights."""
    weights = ProjectionWeights.from_module(seed, dtype=seed.to_q.weight.dtype)
    q_dim, c_dim = seed.to_q.in_features, seed.to_k.in_features
    modules: dict[str, nn.Module] = {"seed_reference": seed}
    for name, cls in (("einops", EinopsCrossAttention), ("sdpa", SDPACrossAttention)):
        module = cls(q_dim, c_dim, num_heads=heads).to(seed.to_q.weight.dtype)
        weights.load_into(module)
        modules[name] = module.eval()
    modules["AttnProcessor"] = diffusers_attention_like(
        seed, heads=heads, processor=AttnProcessor()
    )
    modules["AttnProcessor2_0"] = diffusers_attention_like(
        seed, heads=heads, processor=AttnProcessor2_0()
    )
    return modules


@pytest.mark.parametrize("dtype", DTYPES)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
@example(shapes=PIN_ONE_HEAD)
def test_seed_einops_sdpa_and_diffusers_modules_agree_on_shared_weights(
    shapes: AttentionShapes, dtype: torch.dtype
) -> None:
    seed = _seed_module(shapes, dtype)
    x = random_tensor(
        (shapes.batch, shapes.query_tokens, shapes.query_dim), seed=shapes.seed, dtype=dtype
    )
    context = random_tensor(
        (shapes.batch, shapes.context_tokens, shapes.context_dim), seed=shapes.seed + 1, dtype=dtype
    )
    weights = ProjectionWeights.from_module(seed)
    ref64 = reference_attention(weights, x, context, heads=shapes.heads).output
    lowp = reference_attention(weights.to(dtype=dtype), x, context, heads=shapes.heads).output
    with torch.no_grad():
        for name, module in _sharing_weights(seed, shapes.heads).items():
            assert_close(module(x, context), ref64, lowp, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    shapes=attention_shapes(
        max_heads=1, **{k: v for k, v in shape_bounds().items() if k != "max_heads"}
    )
)
def test_functional_cross_attention_agrees_with_the_seed_module_on_shared_weights(
    shapes: AttentionShapes, dtype: torch.dtype
) -> None:
    channels = shapes.query_dim  # one head: the functional version's D is the context width
    spatial = SpatialCrossAttention(channels, channels).to(dtype)
    seed = CrossAttention(channels, channels, num_heads=1).to(dtype)
    ProjectionWeights.from_module(spatial, dtype=dtype).load_into(seed)
    n = shapes.query_tokens
    x_map = random_tensor(
        (shapes.batch, channels, n, 1), seed=shapes.seed, dtype=dtype
    )  # (B, C, H, W)
    context = random_tensor((shapes.batch, shapes.context_tokens, channels), seed=1, dtype=dtype)
    tokens = x_map.flatten(2).transpose(1, 2)  # (B, N, C)
    weights = ProjectionWeights.from_module(spatial)
    ref64 = reference_attention(weights, tokens, context, heads=1).output
    lowp = reference_attention(weights.to(dtype=dtype), tokens, context, heads=1).output
    with torch.no_grad():
        functional = cross_attention(x_map, context, spatial).flatten(2).transpose(1, 2)
        assert_close(functional, ref64, lowp, what="cross_attention (functional)")
        assert_close(seed(tokens, context), ref64, lowp, what="CrossAttention (seed module)")


class _SpatialOnTokens(nn.Module):
    """The functional version under the check contract: tokens (B, N, C) in and out."""

    def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        assert heads == 1, "seed 001's functional attention has one head"
        self.inner = SpatialCrossAttention(query_dim, context_dim)
        self.to_q, self.to_k = self.inner.to_q, self.inner.to_k
        self.to_v, self.to_out = self.inner.to_v, self.inner.to_out

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, c = x.shape
        feature_map = x.transpose(1, 2).reshape(b, c, n, 1)  # (B, C, N, 1)
        return cross_attention(feature_map, context, self.inner).flatten(2).transpose(1, 2)


SHIPPED_CHECKS = [
    pytest.param(SHIPPED["seed_reference"], torch.float32, id="seed_reference-float32"),
    *(pytest.param(f, torch.float64, id=f"{name}-float64") for name, f in SHIPPED.items()),
]  # einops and SDPA in float32 are checked by test_mutants' false-alarm sweep


@pytest.mark.parametrize(("factory", "dtype"), SHIPPED_CHECKS)
def test_shipped_attention_module_passes_every_invariant(
    factory: Callable[[int, int, int], nn.Module],
    dtype: torch.dtype,
    check_attention: Callable[..., None],
) -> None:
    check_attention(factory, dtype=dtype)  # the plugin's fixture: the profile's example count


def test_functional_cross_attention_passes_every_invariant_with_one_head(
    check_attention: Callable[..., None],
) -> None:
    check_attention(_SpatialOnTokens, shapes=attention_shapes(max_heads=1))


def test_diffusers_reference_processor_passes_every_invariant_on_every_configuration(
    check_processor: Callable[..., None],
) -> None:
    check_processor(AttnProcessor)  # the oracle against itself in float64: AttnProcessor2_0,
    # the hand-written and the sliced processors are checked by test_mutants
