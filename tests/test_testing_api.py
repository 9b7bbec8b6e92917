"""The public ``shapetrace.testing`` API: strategies and their bounds, the tolerance rule,
``check_attention_module`` / ``check_attn_processor`` (what they raise and say), the
Hypothesis profiles and the pytest plugin."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import find, given, settings
from mutants import MaskIgnoringProcessor, NoScale, Plain, SoftmaxOverQueries, UnscaledProcessor
from torch import Tensor, nn

import shapetrace.testing as st_testing
from shapetrace.errors import InputShapeError
from shapetrace.testing import (
    INVARIANT_NAMES,
    AttentionShapes,
    InvariantViolation,
    ModuleContractError,
    assert_close,
    attention_shapes,
    calibrated_atol,
    check_attention_module,
    check_attn_processor,
    default_atol,
    max_abs_diff,
    profiles,
    random_key_mask,
    random_tensor,
    sizes,
)

pytestmark = pytest.mark.usefixtures("single_thread")

BOUNDED = attention_shapes(
    min_batch=2,
    max_batch=3,
    max_heads=3,
    min_head_dim=2,
    max_head_dim=5,
    max_query_tokens=9,
    min_context_tokens=4,
    max_context_tokens=9,
    max_context_dim=7,
)


# -- strategies ------------------------------------------------------------------------------
@given(shapes=BOUNDED)
def test_attention_shape_bounds_are_satisfied_and_token_counts_differ(
    shapes: AttentionShapes,
) -> None:
    assert 2 <= shapes.batch <= 3 and 1 <= shapes.heads <= 3 and 2 <= shapes.head_dim <= 5
    assert 1 <= shapes.query_tokens <= 9 and 4 <= shapes.context_tokens <= 9
    assert shapes.query_tokens != shapes.context_tokens
    assert shapes.query_dim == shapes.heads * shapes.head_dim == shapes.inner_dim
    assert 1 <= shapes.context_dim <= 7


@given(shapes=attention_shapes(min_query_dim=5, max_query_dim=11))
def test_free_query_width_is_drawn_in_its_own_range(shapes: AttentionShapes) -> None:
    assert 5 <= shapes.query_dim <= 11


def test_odd_sizes_like_77_context_tokens_are_drawn() -> None:
    found = find(attention_shapes(), lambda s: s.context_tokens == 77 and s.query_tokens == 1)
    assert (found.query_tokens, found.context_tokens) == (1, 77)
    assert find(sizes(min_size=2, max_size=300), lambda n: n > 100) == 101


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"min_heads": 5, "max_heads": 2}, r"min_heads=5 is larger than max_heads=2"),
        ({"min_batch": 0}, r"min_batch=0 must be at least 1"),
        ({"max_head_dim": 2.5}, r"max_head_dim must be an int, got 2\.5"),
        (
            {"min_query_dim": 9, "max_query_dim": 3},
            r"min_query_dim=9 is larger than max_query_dim=3",
        ),
        (
            {
                "min_query_tokens": 4,
                "max_query_tokens": 4,
                "min_context_tokens": 4,
                "max_context_tokens": 4,
            },
            r"both fixed at 4, so they cannot differ",
        ),
    ],
)
def test_bad_strategy_bounds_are_refused_up_front_with_the_numbers(
    bounds: dict[str, float], message: str
) -> None:
    with pytest.raises(InputShapeError, match=message):
        attention_shapes(**bounds)  # type: ignore[arg-type]


def test_strategy_bounds_are_keyword_only() -> None:
    with pytest.raises(TypeError, match=r"positional argument"):
        attention_shapes(1, 3)  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"positional argument"):
        sizes(1, 3)  # type: ignore[misc]


def test_seeded_values_are_reproducible_on_every_dtype() -> None:
    a = random_tensor((3, 4), seed=5)
    assert torch.equal(a, random_tensor((3, 4), seed=5))
    assert torch.equal(
        a.double(), random_tensor((3, 4), seed=5, dtype=torch.float64).float().double()
    )
    mask = random_key_mask(4, 6, seed=2)
    assert mask.dtype == torch.bool and bool(mask.any(dim=-1).all())
    with pytest.raises(InputShapeError, match=r"batch >= 1 and tokens >= 1, got 0, 6"):
        random_key_mask(0, 6, seed=2)


def test_shapes_describe_every_size_by_name() -> None:
    s = AttentionShapes(
        2, 8, 40, query_tokens=4096, context_tokens=77, query_dim=320, context_dim=768
    )
    assert s.describe() == (
        "B=2, N=4096, M=77, query_dim=320, context_dim=768, heads=8, head_dim=40, seed=0"
    )


# -- tolerance -------------------------------------------------------------------------------
def test_default_tolerances_are_pytorchs() -> None:
    assert default_atol(torch.float32) == 1e-5
    assert default_atol(torch.float16) == default_atol(torch.bfloat16) == 1e-3
    with pytest.raises(ValueError, match=r"no default tolerance for torch\.int64"):
        default_atol(torch.int64)


def test_calibrated_tolerance_is_fudge_times_the_larger_of_error_and_floor() -> None:
    ref = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert calibrated_atol(ref, ref.float(), fudge=3.0) == pytest.approx(3e-5)
    lowp = torch.tensor([1.0, 2.5], dtype=torch.float16)
    assert calibrated_atol(ref, lowp, fudge=2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"fudge must be positive, got 0"):
        calibrated_atol(ref, lowp, fudge=0)


def test_non_finite_values_count_as_infinitely_far() -> None:
    assert max_abs_diff(torch.tensor([float("nan")]), torch.tensor([1.0])) == math.inf
    assert max_abs_diff(torch.tensor([float("inf")]), torch.tensor([float("inf")])) == 0.0
    assert max_abs_diff(torch.zeros(2), torch.zeros(3)) == math.inf
    ref = torch.ones(2, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"^q differs from the float64 reference by inf"):
        assert_close(torch.tensor([1.0, float("nan")]), ref, ref.float(), what="q")


# -- check_attention_module ------------------------------------------------------------------
def test_a_correct_module_passes_and_returns_none() -> None:
    assert check_attention_module(Plain, max_examples=3) is None


def test_a_wrong_module_raises_naming_the_invariant_the_shapes_and_the_example() -> None:
    with pytest.raises(
        AssertionError, match=r"^scale: the output matches .* 1 \(no scaling\)"
    ) as caught:
        check_attention_module(NoScale)
    err = caught.value
    assert isinstance(err, InvariantViolation) and err.invariant == "scale"
    assert err.shapes is not None and err.shapes.head_dim > 1
    message = str(err)
    assert "  invariant: scores are scaled by 1/sqrt(head_dim)" in message
    assert "  checked: NoScale (device=cpu, dtype=torch.float32)" in message
    assert f"  shapes: {err.shapes.describe()}" in message
    assert "falsifying example: check_scale(" in message and "AttentionShapes(" in message


def test_drawn_shapes_alone_find_and_shrink_a_softmax_over_queries() -> None:
    with pytest.raises(AssertionError, match=r"^softmax_normalization: ") as caught:
        check_attention_module(SoftmaxOverQueries, shapes=attention_shapes(), max_examples=50)
    shapes = caught.value.shapes  # type: ignore[attr-defined]
    assert shapes.head_dim == 2 and shapes.batch == 1  # shrunk to the smallest telling case


def test_invariants_can_be_chosen_by_name_and_unknown_names_are_refused() -> None:
    check_attention_module(NoScale, invariants=["batch_independence", "head_independence"])
    with pytest.raises(
        ValueError, match=r"unknown invariant\(s\) \['masks'\]; choose from output_shape"
    ):
        check_attention_module(Plain, invariants=["masks"])
    with pytest.raises(ValueError, match=r"unknown invariant\(s\) \['masking'\]"):
        check_attention_module(Plain, invariants=["masking"])  # modules take no mask
    assert INVARIANT_NAMES[0] == "output_shape" and INVARIANT_NAMES[-1] == "finite_large_inputs"


class _NoProjections(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.proj = nn.Linear(query_dim, query_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.proj(x)


class _CrashesOnOneToken(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if x.shape[1] == 1:
            raise RuntimeError("cannot attend from a single query")
        return super().forward(x, context)


def test_a_module_without_the_projections_breaks_the_contract() -> None:
    with pytest.raises(
        ModuleContractError, match=r"_NoProjections\.to_q is nothing; .* nn\.Linear"
    ):
        check_attention_module(_NoProjections)
    with pytest.raises(ModuleContractError, match=r"to_k takes 3 features, expected 5"):
        check_attention_module(lambda q, c, h: Plain(q, 3, h))
    with pytest.raises(ModuleContractError, match=r"returned str, not an nn\.Module"):
        check_attention_module(lambda q, c, h: "attention")  # type: ignore[arg-type,return-value]


def test_a_crash_in_forward_is_reported_under_the_invariant_being_checked() -> None:
    with pytest.raises(
        AssertionError, match=r"^output_shape: forward raised RuntimeError: cannot attend"
    ):
        check_attention_module(_CrashesOnOneToken)


def test_unsupported_dtype_and_missing_device_are_refused() -> None:
    with pytest.raises(ValueError, match=r"dtype torch\.int32 is not checked"):
        check_attention_module(Plain, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"max_examples must be at least 1, got 0"):
        check_attention_module(Plain, max_examples=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' asked for, but torch\.cuda"):
            check_attention_module(Plain, device="cuda")


def test_the_check_leaves_threads_and_global_rng_as_it_found_them() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    check_attention_module(Plain, max_examples=2, invariants=["output_shape"])
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)


def test_the_check_respects_settings_passed_to_it() -> None:
    calls: list[int] = []

    def counting(query_dim: int, context_dim: int, heads: int) -> nn.Module:
        calls.append(1)
        return Plain(query_dim, context_dim, heads)

    check_attention_module(
        counting,
        invariants=["output_shape"],
        shapes=attention_shapes(),
        settings=settings(max_examples=4),
    )
    assert len(calls) <= 4


# -- check_attn_processor --------------------------------------------------------------------
def test_a_processor_that_forgets_the_scale_is_named_by_scale() -> None:
    with pytest.raises(
        AssertionError, match=r"(?s)^scale: .*checked: Attention with UnscaledProcessor\(\)"
    ):
        check_attn_processor(UnscaledProcessor)


def test_a_processor_that_ignores_the_mask_is_named_by_masking() -> None:
    with pytest.raises(
        AssertionError, match=r"^masking: batch row \d+ with keys \[.*\] of M=\d+ masked"
    ):
        check_attn_processor(MaskIgnoringProcessor)


# -- profiles --------------------------------------------------------------------------------
@pytest.fixture
def restore_profile() -> Iterator[None]:
    """Put the session's Hypothesis profile back after a test loads another."""
    active = profiles.active_profile() or "ci"
    yield
    profiles.load_profile(active)


def test_profiles_ci_is_derandomized_without_deadline_and_nightly_is_longer() -> None:
    profiles.register_profiles()
    ci, nightly = settings.get_profile("ci"), settings.get_profile("nightly")
    assert ci.derandomize and ci.deadline is None and ci.database is None
    assert nightly.deadline is None and not nightly.derandomize
    assert nightly.max_examples >= 10 * ci.max_examples
    assert (
        profiles.shape_bounds("nightly")["max_query_tokens"]
        > profiles.shape_bounds("ci")["max_query_tokens"]
    )


def test_loading_an_unknown_profile_names_the_known_ones(restore_profile: None) -> None:
    with pytest.raises(
        ValueError, match=r"unknown Hypothesis profile 'weekly'; choose one of ci, dev, nightly"
    ):
        profiles.load_profile("weekly")
    assert profiles.load_profile("dev") == "dev" and profiles.active_profile() == "dev"


def test_the_public_api_lists_what_it_exports() -> None:
    assert sorted(st_testing.__all__) == sorted(set(st_testing.__all__))
    for name in st_testing.__all__:
        assert getattr(st_testing, name) is not None


# -- pytest plugin ---------------------------------------------------------------------------
PLUGIN_USER_TESTS = """
import pytest, torch
from torch import nn

class Mine(nn.Module):
    def __init__(self, query_dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x, context):
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

def test_mine_keeps_every_invariant(check_attention, shapetrace_profile):
    assert shapetrace_profile == "ci"
    check_attention(Mine)

def test_devices(attention_devices, attention_device):
    assert attention_device in attention_devices

@pytest.mark.cuda
def test_mine_in_half_precision(check_attention):
    check_attention(Mine, device="cuda", dtype=torch.float16)
"""


def test_plugin_gives_fixtures_profile_and_cuda_skips_without_boilerplate(
    pytester: pytest.Pytester, restore_profile: None
) -> None:
    pytester.makepyfile(test_user=PLUGIN_USER_TESTS)
    result = pytester.runpytest_inprocess(
        "--shapetrace-profile=ci", "-rs", "-p", "no:cacheprovider"
    )
    result.stdout.fnmatch_lines(["shapetrace: Hypothesis profile 'ci'"])
    if torch.cuda.is_available():
        result.assert_outcomes(passed=4)
    else:
        result.assert_outcomes(passed=2, skipped=2)
        result.stdout.fnmatch_lines(["*needs a CUDA device: torch.cuda.is_available() is False*"])


def test_plugin_reads_the_profile_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, restore_profile: None
) -> None:
    pytester.makepyfile(
        test_env="def test_profile(shapetrace_profile):\n"
        "    assert shapetrace_profile == 'nightly'\n"
    )
    monkeypatch.setenv(profiles.ENV_VAR, "nightly")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    monkeypatch.setenv(profiles.ENV_VAR, "weekly")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown Hypothesis profile 'weekly'*"])
