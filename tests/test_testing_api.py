"""``check_attention_module`` and ``check_attn_processor``: what they pass, what they raise and
say, what they refuse up front, and that each invariant and each subject draws its own shapes
from the active profile's bounds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from mutants import MaskIgnoringProcessor, NoScale, Plain, SoftmaxOverQueries, UnscaledProcessor
from planted_processors import GroupNormSkipped
from torch import Tensor, nn

import shapetrace.testing as st_testing
from shapetrace.errors import ShapeTraceError
from shapetrace.testing import (
    INVARIANT_NAMES,
    CheckArgumentError,
    InvariantViolation,
    ModuleContractError,
    attention_shapes,
    check_attention_module,
    check_attn_processor,
    profiles,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SEEN = list[tuple[int, ...]]


def _recording(seen: SEEN, base: type[nn.Module] = Plain) -> Callable[[int, int, int], nn.Module]:
    """A factory of ``base`` modules that append (B, N, M, query_dim, heads) of every call."""

    class Recording(base):  # type: ignore[valid-type, misc]
        def forward(self, x: Tensor, context: Tensor) -> Tensor:
            seen.append((x.shape[0], x.shape[1], context.shape[1], x.shape[2], self.heads))
            out: Tensor = super().forward(x, context)
            return out

    Recording.__qualname__ = f"Recording{base.__name__}"  # the subject's name
    return Recording


# -- what a check says -----------------------------------------------------------------------
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


class _AllNaN(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return super().forward(x, context) * float("nan")


def test_all_nan_output_is_named_finite_output_not_a_structural_invariant() -> None:
    with pytest.raises(AssertionError, match=r"^finite_output: .* non-finite values of \d+"):
        check_attention_module(_AllNaN)


class _CrashesOnOneToken(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if x.shape[1] == 1:
            raise RuntimeError("cannot attend from a single query")
        return super().forward(x, context)


def test_a_crash_in_forward_is_reported_under_the_invariant_being_checked() -> None:
    with pytest.raises(
        AssertionError, match=r"^output_shape: forward raised RuntimeError: cannot attend"
    ):
        check_attention_module(_CrashesOnOneToken)


# -- the contract: only what forward returns is judged ---------------------------------------
class _ToOutViaFunctional(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q, k, v = (
            self.split(self.to_q(x)),
            self.split(self.to_k(context)),
            self.split(self.to_v(context)),
        )
        return F.linear(self.merge(self.attend(q, k, v)), self.to_out.weight, self.to_out.bias)


class _ToOutOnTheFirstRowOnly(Plain):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        k, v = self.split(self.to_k(context)), self.split(self.to_v(context))
        merged = self.merge(self.attend(self.split(self.to_q(x)), k, v))
        rest = F.linear(merged[:, 1:], self.to_out.weight, self.to_out.bias)
        return torch.cat([self.to_out(merged[:, :1]), rest], dim=1)


def test_a_contract_breach_is_reported_as_what_to_out_saw_never_as_a_wrong_shape() -> None:
    with pytest.raises(ModuleContractError, match=r"to_out saw nothing; the contract passes"):
        check_attention_module(_ToOutViaFunctional)
    with pytest.raises(ModuleContractError, match=r"to_out saw 1 call\(s\) on .* fewer than"):
        check_attention_module(_ToOutOnTheFirstRowOnly)


def test_a_module_without_the_projections_breaks_the_contract_up_front() -> None:
    class NoProjections(nn.Module):
        def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
            super().__init__()
            self.proj = nn.Linear(query_dim, query_dim)

    with pytest.raises(ModuleContractError, match=r"NoProjections\.to_q is nothing; .* nn\.Linear"):
        check_attention_module(NoProjections)
    with pytest.raises(ModuleContractError, match=r"to_k takes 3 features, expected 5"):
        check_attention_module(lambda q, c, h: Plain(q, 3, h))
    with pytest.raises(ModuleContractError, match=r"returned NoneType, not an nn\.Module: the"):
        check_attention_module(lambda q, c, h: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ModuleContractError, match=r"raised TypeError: .*factory\(query_dim, "):
        check_attention_module(lambda q, c: Plain(q, c, 1))  # type: ignore[arg-type,misc]


# -- arguments refused up front --------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"invariants": []}, r"invariants=\[\] selects nothing, so nothing would be checked"),
        ({"invariants": ["masks"]}, r"unknown invariant\(s\) \['masks'\]; choose from output"),
        ({"invariants": ["masking"]}, r"unknown invariant\(s\) \['masking'\]"),
        ({"device": "meta"}, r"device='meta' holds shapes but no values.* use 'cpu'"),
        ({"device": "gpu"}, r"device='gpu' is not a torch device"),
        ({"dtype": torch.int32}, r"dtype=torch\.int32 is not checked: there is no tolerance"),
        ({"max_examples": 0}, r"max_examples=0: give a whole number of drawn examples"),
    ],
)
def test_arguments_that_cannot_work_are_refused_before_anything_runs(
    kwargs: dict[str, object], message: str
) -> None:
    calls: list[int] = []

    def counting(query_dim: int, context_dim: int, heads: int) -> nn.Module:
        calls.append(1)
        return Plain(query_dim, context_dim, heads)

    with pytest.raises(CheckArgumentError, match=message) as caught:
        check_attention_module(counting, **kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ShapeTraceError) and not calls


def test_a_missing_cuda_device_is_refused_naming_it() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CheckArgumentError, match=r"device='cuda' asked for, but torch\.cuda"):
        check_attention_module(Plain, device="cuda")


def test_a_processor_factory_that_returns_nothing_is_refused_not_replaced() -> None:
    with pytest.raises(ModuleContractError, match=r"returned None: return a processor.*silently"):
        check_attn_processor(lambda: None)
    with pytest.raises(ModuleContractError, match=r"raised TypeError: .*lambda: SlicedAttn"):
        from diffusers.models.attention_processor import SlicedAttnProcessor

        check_attn_processor(SlicedAttnProcessor)  # needs slice_size
    with pytest.raises(CheckArgumentError, match=r"configurations=\['vae'\]: unknown"):
        check_attn_processor(UnscaledProcessor, configurations=["vae"])


# -- shapes: per invariant, per subject, from the profile -------------------------------------
def test_each_invariant_and_each_subject_draws_its_own_shapes_reproducibly() -> None:
    def drawn(invariant: str, base: type[nn.Module] = Plain) -> SEEN:
        seen: SEEN = []
        check_attention_module(_recording(seen, base), invariants=[invariant],
                               shapes=attention_shapes(), max_examples=6)  # fmt: skip
        return seen

    scale, reference = drawn("scale"), drawn("reference_agreement")
    assert scale != reference  # a seed per invariant
    assert drawn("scale") == scale  # and per run the same: derandomized

    class Other(Plain):
        pass

    assert drawn("scale", Other) != scale  # a seed per subject


def test_the_active_profiles_bounds_reach_the_check(restore_profile: None) -> None:
    seen: SEEN = []
    check_attention_module(_recording(seen), invariants=["output_shape"], max_examples=10)
    assert max(n for _, n, _, _, _ in seen) > 1024  # long sequences under ci
    assert max(m for _, _, m, _, _ in seen) > 77  # and contexts past CLIP's
    profiles.load_profile("nightly")
    big: SEEN = []
    check_attention_module(_recording(big), invariants=["output_shape"], max_examples=40,
                           derandomize=True)  # fmt: skip
    ci = profiles.shape_bounds("ci")
    beyond = [
        (n, m, h)
        for _, n, m, _, h in big
        if n > ci["max_query_tokens"] or m > ci["max_context_tokens"] or h > ci["max_heads"]
    ]
    assert beyond, "nightly drew nothing past the ci bounds"


def test_invariants_can_be_chosen_by_name() -> None:
    check_attention_module(NoScale, invariants=["batch_independence", "head_independence"])
    assert INVARIANT_NAMES[:2] == ("output_shape", "finite_output")
    assert INVARIANT_NAMES[-1] == "large_logit_agreement"


def test_the_check_leaves_threads_grad_mode_and_global_rng_as_it_found_them() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    check_attention_module(Plain, max_examples=2, invariants=["output_shape", "gradient_agreement"])
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert torch.equal(torch.rand(3), expected)


def test_the_check_respects_settings_passed_to_it() -> None:
    seen: SEEN = []
    check_attention_module(
        _recording(seen),
        invariants=["output_shape"],
        shapes=attention_shapes(),
        settings=settings(max_examples=4),
    )
    assert 1 <= len(set(seen)) <= 4  # output_shape runs each example twice


# -- processors ------------------------------------------------------------------------------
def test_a_processor_that_forgets_the_scale_is_named_by_scale() -> None:
    with pytest.raises(
        AssertionError,
        match=r"(?s)^scale: .*checked: UnscaledProcessor\(\) on configuration 'cross'",
    ):
        check_attn_processor(UnscaledProcessor)


def test_a_processor_that_ignores_the_mask_is_named_by_masking() -> None:
    with pytest.raises(
        AssertionError, match=r"^masking: batch row \d+ with keys \[.*\] of M=\d+ masked"
    ):
        check_attn_processor(MaskIgnoringProcessor)


def test_a_processor_bug_on_one_configuration_names_that_configuration() -> None:
    with pytest.raises(
        AssertionError,
        match=r"(?s)^reference_agreement: .*on configuration 'self_spatial_group_norm' \(the "
        r"VAE's attention.*Attention\(\d+, heads=\d+, dim_head=\d+, norm_num_groups=",
    ):
        check_attn_processor(GroupNormSkipped)


def test_the_public_api_lists_what_it_exports() -> None:
    assert sorted(st_testing.__all__) == sorted(set(st_testing.__all__))
    for name in st_testing.__all__:
        assert getattr(st_testing, name) is not None
    with pytest.raises(AttributeError, match=r"has no attribute 'check_everything'"):
        st_testing.check_everything  # noqa: B018
