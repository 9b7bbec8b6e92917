"""The invariants on a CUDA device, in float32, float16 and bfloat16 (``nox -s tests_cuda``).

Low precision is judged by PyTorch's self-calibrating rule: the same math in float64 and in
the dtype under test on the GPU, atol = fudge * max(|ref64 - ref_lowp|, 1e-3). Every test is
marked ``cuda``; shapetrace's pytest plugin skips them, with the reason, without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from hypothesis import example, given
from mutants import (
    CORRECT,
    PROCESSOR_CORRECT,
    SHIPPED,
    KeysAndValuesSwapped,
    NoScale,
    SoftmaxOverQueries,
    SoftmaxWithoutMaxSubtraction,
    SplitWithViewNoTranspose,
)
from planted_modules import (
    AlignedFastPathMixesHeads,
    ClampedScores,
    ContextTruncatedTo77,
    HandWrittenSoftmaxBackward,
)
from torch import nn

from shapetrace.testing import (
    STANDARD_NAMES,
    AttentionShapes,
    assert_close,
    attention_shapes,
    check_attention_module,
    check_attn_processor,
    default_atol,
    random_key_mask,
    random_qkv,
)
from shapetrace.testing.implementations import (
    ATTENDERS,
    attend,
    attention_probs,
)
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
SHAPES = attention_shapes(**shape_bounds())
LOW = [torch.float16, torch.bfloat16]
ALL = [torch.float32, *LOW]
IMPLS = sorted(ATTENDERS)
PIN_SD15_LEVEL = AttentionShapes(
    2, 8, 40, query_tokens=1024, context_tokens=77, query_dim=320, context_dim=768
)
PIN_ONE_QUERY = AttentionShapes(
    1, 1, 8, query_tokens=1, context_tokens=77, query_dim=8, context_dim=12
)


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("factory", list(SHIPPED.values()), ids=list(SHIPPED))
def test_shipped_module_passes_every_invariant_on_cuda(
    factory: Callable[[int, int, int], nn.Module], dtype: torch.dtype
) -> None:
    check_attention_module(factory, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("processor", [AttnProcessor, AttnProcessor2_0], ids=lambda p: p.__name__)
def test_diffusers_processor_passes_every_invariant_on_cuda(
    processor: type, dtype: torch.dtype
) -> None:
    configurations = None
    if processor is AttnProcessor and dtype in LOW:  # its upcast + a mask fails in half
        configurations = [n for n in STANDARD_NAMES if n != "upcast"]  # (test_mutants)
    check_attn_processor(processor, device=DEVICE, dtype=dtype, configurations=configurations)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", sorted(PROCESSOR_CORRECT))
def test_correct_processor_raises_no_false_alarm_in_low_precision(
    name: str, dtype: torch.dtype
) -> None:
    case = PROCESSOR_CORRECT[name]
    shapes = attention_shapes(**shape_bounds()) if case.dim_head == 8 else None  # tied width
    configurations = case.configurations
    if case.half_fails_upcast:  # a diffusers bug, shown in test_mutants
        configurations = tuple(n for n in configurations or STANDARD_NAMES if n != "upcast")
    check_attn_processor(
        case.factory,
        device=DEVICE,
        dtype=dtype,
        configurations=configurations,
        shapes=shapes,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_raises_no_false_alarm_in_low_precision(
    name: str, dtype: torch.dtype
) -> None:
    check_attention_module(CORRECT[name], device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    ("mutant", "invariant"),
    [
        (SoftmaxOverQueries, "softmax_normalization"),
        (NoScale, "scale"),
        (SplitWithViewNoTranspose, "head_independence"),
        (KeysAndValuesSwapped, "convex_combination"),
        # exp overflows at ordinary scores in float16: the weights stop summing to one
        (SoftmaxWithoutMaxSubtraction, "finite_large_inputs|softmax_normalization"),
        (ClampedScores, "large_logit_agreement"),
        (HandWrittenSoftmaxBackward, "gradient_agreement"),
        (ContextTruncatedTo77, "key_permutation_invariance"),
        (AlignedFastPathMixesHeads, "head_independence"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_planted_bug_is_still_named_in_low_precision(
    mutant: type[nn.Module], invariant: str, dtype: torch.dtype
) -> None:
    with pytest.raises(AssertionError, match=rf"^({invariant}): "):
        check_attention_module(mutant, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "with_mask"])
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
@example(shapes=PIN_ONE_QUERY)
def test_split_head_implementations_agree_with_float64_on_cuda(
    shapes: AttentionShapes, impl: str, masked: bool, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype, device=DEVICE)
    mask = None
    if masked:
        keep = random_key_mask(shapes.batch, shapes.context_tokens, seed=shapes.seed, device=DEVICE)
        mask = keep[:, None, None, :]
    out = ATTENDERS[impl](q, k, v, mask=mask)
    ref = attend(q.double(), k.double(), v.double(), mask=mask)
    assert_close(out, ref, attend(q, k, v, mask=mask), what=f"{impl} ({dtype}, cuda)")


@pytest.mark.parametrize("dtype", ALL)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_probabilities_are_nonnegative_and_rows_sum_to_one_on_cuda(
    shapes: AttentionShapes, dtype: torch.dtype
) -> None:
    q, k, _ = random_qkv(shapes, dtype=dtype, device=DEVICE)
    probs = attention_probs(q, k)  # (B, H, N, M), softmax over the M keys
    assert bool((probs >= 0).all())
    row_sums = probs.double().sum(dim=-1)
    assert float((row_sums - 1).abs().max()) <= max(2 * torch.finfo(dtype).eps, default_atol(dtype))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("impl", IMPLS)
@given(shapes=SHAPES)
@example(shapes=PIN_SD15_LEVEL)
def test_half_precision_stays_finite_on_large_inputs(
    shapes: AttentionShapes, impl: str, dtype: torch.dtype
) -> None:
    q, k, v = random_qkv(shapes, dtype=dtype, device=DEVICE, scale=30.0)  # scores in the thousands
    out = ATTENDERS[impl](q, k, v)
    assert bool(torch.isfinite(out).all()), f"{impl} in {dtype}: NaN/inf on large inputs"
    ref = attend(q.double(), k.double(), v.double())
    assert_close(out, ref, attend(q, k, v), what=f"{impl} on large inputs ({dtype})")
