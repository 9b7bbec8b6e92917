"""The checks' power, measured: every planted bug is first shown wrong by a direct float64
comparison with diffusers' reference processor, then caught and named by the invariant it
breaks; every correct variant is first shown right the same way, then passes the check.

The score, by kind of bug, is printed in pytest's terminal summary ("shapetrace mutation
score"). Bugs that hide (at some shapes, with autograd on, at large logits, on some layer
configurations) are also shown right where they hide: what a check confined there misses.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from cases import Planted
from float64_oracle import compare_module, compare_processor
from mutants import (
    CORRECT,
    MUTANTS,
    PROCESSOR_CORRECT,
    PROCESSOR_MUTANTS,
    PROCESSOR_WITNESSES,
    ModuleWitness,
)
from torch import nn

from shapetrace.testing import (
    AttentionShapes,
    InvariantViolation,
    attention_shapes,
    check_attention_module,
    check_attn_processor,
)
from shapetrace.testing.profiles import shape_bounds

pytestmark = pytest.mark.usefixtures("single_thread")

WRONG = 1e-6  # a float64 difference this large is a bug, not rounding
RIGHT = 1e-9  # float64 implementations of the same function agree this closely
CLASSIC = {"softmax axis", "scale", "heads", "tokens", "batch", "weights"}
REGIME_WITNESSES = {
    "generic": ModuleWitness(),
    "with gradients": ModuleWitness(gradients=True),
    "one query, 77 keys": ModuleWitness(AttentionShapes(1, 1, 8, 1, 77, 8, 12, seed=0)),
    "aligned, 64 queries": ModuleWitness(AttentionShapes(2, 4, 8, 64, 78, 32, 12, seed=1)),
    "long, 1025 queries": ModuleWitness(AttentionShapes(1, 2, 2, 1025, 154, 4, 6, seed=2)),
    "large logits": ModuleWitness(logit_factor=12.0, gradients=True),
}


def _name(factory: Any) -> str:
    return str(getattr(factory, "__name__", factory))


def _named(check: Callable[[], None]) -> str | None:
    """The invariant ``check`` names, or None when it passes."""
    try:
        check()
    except InvariantViolation as err:
        return err.invariant
    return None


# -- modules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mutant", list(MUTANTS), ids=_name)
def test_planted_module_bug_is_wrong_in_float64_then_caught_and_named_by_its_invariant(
    mutant: type[nn.Module], mutation_board: dict[str, tuple[str, str, str | None]]
) -> None:
    planted = MUTANTS[mutant]
    diff, _ = compare_module(mutant, planted.witness)
    assert diff > WRONG, f"{mutant.__name__} is not wrong at its witness ({diff:.3g})"
    if planted.hides is not None:  # and right where it hides: a narrower check misses it
        hidden, at = compare_module(mutant, planted.hides)
        assert hidden <= RIGHT, f"{mutant.__name__} shows where it should hide ({at}: {hidden})"
    mutation_board[mutant.__name__] = ("module", planted.kind, None)
    with pytest.raises(AssertionError, match=rf"^({'|'.join(planted.expected)}): ") as caught:
        try:
            check_attention_module(mutant)
        except InvariantViolation as err:
            mutation_board[mutant.__name__] = ("module", planted.kind, err.invariant)
            raise
    message = str(caught.value)
    assert re.search(r"shapes: B=\d+, N=\d+, M=\d+, query_dim=\d+", message)
    assert "falsifying example:" in message and "AttentionShapes(" in message


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=_name)
def test_drawn_shapes_alone_reach_each_planted_module_bug(mutant: type[nn.Module]) -> None:
    planted = MUTANTS[mutant]
    strategy = attention_shapes(**shape_bounds())  # no pinned shape: the strategy must get there
    with pytest.raises(AssertionError, match=rf"^({'|'.join(planted.expected)}): ") as caught:
        check_attention_module(
            mutant, shapes=strategy, invariants=planted.expected, derandomize=True, max_examples=25
        )
    shapes = caught.value.shapes  # type: ignore[attr-defined]
    if planted.kind in CLASSIC:  # found at any size, so shrunk to a small one (the smallest
        # aligned call, 8 tokens and two heads of 8, is as small as one past CHUNK=7 gets)
        sizes = (shapes.query_tokens, shapes.context_tokens, shapes.query_dim, shapes.context_dim)
        assert shapes.batch <= 2 and shapes.heads <= 2 and max(sizes) <= 16, shapes.describe()


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_module_variant_matches_float64_everywhere_then_raises_no_false_alarm(
    name: str, false_alarms: dict[str, tuple[str, str | None]]
) -> None:
    for where, witness in REGIME_WITNESSES.items():
        diff, what = compare_module(CORRECT[name], witness)
        assert diff <= RIGHT, f"{name} differs from float64 {where} ({what}: {diff:.3g})"
    false_alarms[name] = ("module", _named(lambda: check_attention_module(CORRECT[name])))
    assert false_alarms[name][1] is None, f"false alarm on {name}: {false_alarms[name][1]}"


# -- processors ------------------------------------------------------------------------------
@pytest.mark.parametrize("processor", list(PROCESSOR_MUTANTS), ids=_name)
def test_planted_processor_bug_is_wrong_in_float64_then_caught_and_named_by_its_invariant(
    processor: type, mutation_board: dict[str, tuple[str, str, str | None]]
) -> None:
    planted: Planted = PROCESSOR_MUTANTS[processor]
    diff, _ = compare_processor(processor(), planted.witness)
    assert diff > WRONG, f"{processor.__name__} is not wrong at its witness ({diff:.3g})"
    if planted.hides is not None:
        hidden, at = compare_processor(processor(), planted.hides)
        assert hidden <= RIGHT, f"{processor.__name__} shows where it should hide ({at})"
    mutation_board[processor.__name__] = ("processor", planted.kind, None)
    with pytest.raises(AssertionError, match=rf"^({'|'.join(planted.expected)}): "):
        try:
            check_attn_processor(processor, configurations=planted.configurations)
        except InvariantViolation as err:
            mutation_board[processor.__name__] = ("processor", planted.kind, err.invariant)
            raise


@pytest.mark.parametrize("processor", list(PROCESSOR_MUTANTS), ids=_name)
def test_drawn_shapes_alone_reach_each_planted_processor_bug(processor: type) -> None:
    planted: Planted = PROCESSOR_MUTANTS[processor]
    strategy = attention_shapes(**shape_bounds(), min_query_dim=1, max_query_dim=48)
    with pytest.raises(AssertionError, match=rf"^({'|'.join(planted.expected)}): "):
        check_attn_processor(
            processor,
            configurations=planted.configurations,
            shapes=strategy,
            invariants=planted.expected,
            derandomize=True,
            max_examples=25,
        )


@pytest.mark.parametrize("name", list(PROCESSOR_CORRECT))
def test_correct_processor_matches_float64_on_each_configuration_then_raises_no_false_alarm(
    name: str, false_alarms: dict[str, tuple[str, str | None]]
) -> None:
    case = PROCESSOR_CORRECT[name]
    for config in case.proven_on:
        witness = PROCESSOR_WITNESSES[config]
        diff, what = compare_processor(case.factory(), witness, dim_head=case.dim_head)
        assert diff <= RIGHT, f"{name} differs from float64 on {config} ({what}: {diff:.3g})"
    shapes = attention_shapes(**shape_bounds()) if case.dim_head == 8 else None  # tied width

    def check() -> None:
        check_attn_processor(case.factory, configurations=case.configurations, shapes=shapes)

    false_alarms[name] = ("processor", _named(check))
    assert false_alarms[name][1] is None, f"false alarm on {name}: {false_alarms[name][1]}"


# -- what the checks found in diffusers itself ------------------------------------------------
def test_diffusers_sliced_processor_ignores_the_spatial_norm_and_the_check_says_why() -> None:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    diff, _ = compare_processor(SlicedAttnProcessor(3), PROCESSOR_WITNESSES["spatial_norm"])
    assert diff > WRONG  # its __call__ takes no temb, so the spatial norm never runs
    with pytest.raises(AssertionError, match=r"(?s)^reference_agreement: .*takes no temb"):
        check_attn_processor(lambda: SlicedAttnProcessor(3), configurations=["spatial_norm"])


def test_diffusers_added_kv_processor_2_0_needs_inner_width_equal_to_query_width() -> None:
    from diffusers.models.attention_processor import AttnAddedKVProcessor2_0

    diff, where = compare_processor(AttnAddedKVProcessor2_0(), PROCESSOR_WITNESSES["added_kv"])
    assert math.isinf(diff) and "RuntimeError" in where  # heads*dim_head=8, query_dim=16
    tied = compare_processor(AttnAddedKVProcessor2_0(), PROCESSOR_WITNESSES["added_kv"], dim_head=8)
    assert tied[0] <= RIGHT  # right where heads * dim_head == query_dim
    with pytest.raises(AssertionError, match=r"^output_shape: forward raised RuntimeError"):
        check_attn_processor(AttnAddedKVProcessor2_0)


def test_diffusers_upcast_attention_fails_on_a_mask_in_half_precision() -> None:
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor,
        AttnProcessor2_0,
    )

    x, context = torch.randn(1, 4, 8).half(), torch.randn(1, 3, 6).half()
    mask = torch.zeros(1, 1, 3).half()
    for processor, fails in ((AttnProcessor(), True), (AttnProcessor2_0(), False)):
        layer = Attention(8, cross_attention_dim=6, heads=2, dim_head=4, upcast_attention=True,
                          processor=processor).half()  # fmt: skip
        if fails:  # get_attention_scores upcasts q and k but not the additive mask
            with pytest.raises(RuntimeError, match=r"dtypes must be the same"):
                layer(x, encoder_hidden_states=context, attention_mask=mask)
        else:
            assert torch.isfinite(
                layer(x, encoder_hidden_states=context, attention_mask=mask)
            ).all()
    with pytest.raises(AssertionError, match=r"forward raised RuntimeError: .*dtypes must be"):
        check_attn_processor(AttnProcessor, dtype=torch.float16, configurations=["upcast"])


# -- the score -------------------------------------------------------------------------------
def test_mutation_score_is_every_planted_bug_caught_and_no_false_alarm(
    mutation_board: dict[str, tuple[str, str, str | None]],
    false_alarms: dict[str, tuple[str, str | None]],
) -> None:
    for mutant, planted in MUTANTS.items():  # the ones a -k selection skipped
        if mutant.__name__ not in mutation_board:
            named = _named(functools.partial(check_attention_module, mutant))
            mutation_board[mutant.__name__] = ("module", planted.kind, named)
    for proc, planted in PROCESSOR_MUTANTS.items():
        if proc.__name__ not in mutation_board:
            run = functools.partial(
                check_attn_processor, proc, configurations=planted.configurations
            )
            mutation_board[proc.__name__] = ("processor", planted.kind, _named(run))
    for name, case in PROCESSOR_CORRECT.items():
        if name not in false_alarms:
            shapes = attention_shapes(**shape_bounds()) if case.dim_head == 8 else None
            run = functools.partial(check_attn_processor, case.factory,
                                    configurations=case.configurations, shapes=shapes)  # fmt: skip
            false_alarms[name] = ("processor", _named(run))
    for name, factory in CORRECT.items():
        if name not in false_alarms:
            false_alarms[name] = (
                "module",
                _named(functools.partial(check_attention_module, factory)),
            )
    survivors = [m for m, (_, _, named) in mutation_board.items() if named is None]
    alarms = {n: named for n, (_, named) in false_alarms.items() if named is not None}
    assert len(mutation_board) == len(MUTANTS) + len(PROCESSOR_MUTANTS)
    assert len(false_alarms) == len(CORRECT) + len(PROCESSOR_CORRECT)
    assert not survivors, f"survivors: {survivors}"
    assert not alarms, f"false alarms: {alarms}"
