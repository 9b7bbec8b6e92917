"""The checks' power, measured: every planted bug in tests/mutants.py is caught and named by
the invariant it breaks, and no correct variant raises a false alarm.

The score is printed in pytest's terminal summary ("shapetrace mutation score").
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from mutants import CORRECT, MUTANTS, PROCESSOR_MUTANTS
from torch import nn

from shapetrace.testing import (
    InvariantViolation,
    attention_shapes,
    check_attention_module,
    check_attn_processor,
)

pytestmark = pytest.mark.usefixtures("single_thread")

MIN_KILLED = 10


def _caught_invariant(factory: Callable[[int, int, int], nn.Module]) -> str | None:
    """The invariant the check names for ``factory``, or None when it passes."""
    try:
        check_attention_module(factory)
    except InvariantViolation as err:
        return err.invariant
    return None


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=lambda m: m.__name__)
def test_planted_bug_is_caught_and_named_by_the_invariant_it_breaks(
    mutant: type[nn.Module], mutation_board: dict[str, str | None]
) -> None:
    expected = "|".join(MUTANTS[mutant])  # type: ignore[index]
    mutation_board[mutant.__name__] = None
    with pytest.raises(AssertionError, match=rf"^({expected}): ") as caught:
        try:
            check_attention_module(mutant)
        except InvariantViolation as err:
            mutation_board[mutant.__name__] = err.invariant
            raise
    message = str(caught.value)
    assert re.search(r"shapes: B=\d+, N=\d+, M=\d+, query_dim=\d+", message)
    assert "falsifying example:" in message and "AttentionShapes(" in message


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=lambda m: m.__name__)
def test_drawn_shapes_alone_catch_each_planted_bug_and_shrink_it_small(
    mutant: type[nn.Module],
) -> None:
    expected = "|".join(MUTANTS[mutant])  # type: ignore[index]
    with pytest.raises(AssertionError, match=rf"^({expected}): ") as caught:
        check_attention_module(mutant, shapes=attention_shapes())  # no pinned shapes
    shapes = caught.value.shapes  # type: ignore[attr-defined]
    sizes = (shapes.query_tokens, shapes.context_tokens, shapes.query_dim, shapes.context_dim)
    assert shapes.batch <= 2 and shapes.heads <= 2 and max(sizes) <= 8, shapes.describe()


@pytest.mark.parametrize("processor", list(PROCESSOR_MUTANTS), ids=lambda p: p.__name__)
def test_planted_processor_bug_is_caught_and_named_by_check_attn_processor(
    processor: type, mutation_board: dict[str, str | None]
) -> None:
    expected = "|".join(PROCESSOR_MUTANTS[processor])
    mutation_board[processor.__name__] = None
    with pytest.raises(AssertionError, match=rf"^({expected}): "):
        try:
            check_attn_processor(processor)
        except InvariantViolation as err:
            mutation_board[processor.__name__] = err.invariant
            raise


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_variant_passes_every_invariant(
    name: str, false_alarms: dict[str, str | None]
) -> None:
    false_alarms[name] = _caught_invariant(CORRECT[name])
    assert false_alarms[name] is None, f"false alarm on {name}: {false_alarms[name]}"


def test_mutation_score_is_at_least_ten_kills_and_no_false_alarm(
    mutation_board: dict[str, str | None], false_alarms: dict[str, str | None]
) -> None:
    for mutant in MUTANTS:  # the ones a -k selection skipped
        if mutant.__name__ not in mutation_board:
            mutation_board[mutant.__name__] = _caught_invariant(mutant)
    for name, factory in CORRECT.items():
        if name not in false_alarms:
            false_alarms[name] = _caught_invariant(factory)
    modules = {m.__name__ for m in MUTANTS}
    killed = [m for m, inv in mutation_board.items() if inv is not None and m in modules]
    print(
        f"\nkill rate {len(killed)}/{len(MUTANTS)}, false alarms "
        f"{sum(v is not None for v in false_alarms.values())}/{len(CORRECT)}"
    )
    assert len(killed) >= MIN_KILLED
    assert len(killed) == len(MUTANTS), f"survivors: {modules - set(killed)}"
    assert not any(false_alarms.values()), false_alarms
