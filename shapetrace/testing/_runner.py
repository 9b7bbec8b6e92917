"""One Hypothesis run per invariant, per layer configuration and per subject.

Each run has its own seed (derived from the invariant, the configuration and what is
checked), so a derandomized run still draws different shapes for each: Hypothesis would
otherwise derive every run's seed from the one wrapper function's source, and every check
would see the same examples. A failure is shrunk within its run and re-raised with the
invariant's name in front.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, Phase, example, given, seed
from hypothesis import settings as Settings
from hypothesis import strategies as st

from shapetrace.testing._configurations import Configuration
from shapetrace.testing._subject import AttentionSubject
from shapetrace.testing._violation import InvariantViolation, ModuleContractError, OracleError
from shapetrace.testing.properties import Invariant
from shapetrace.testing.strategies import AttentionShapes

__all__ = ["Plan", "run_plan", "run_seed"]

Builder = Callable[[AttentionShapes, Configuration], AttentionSubject]


@dataclass(frozen=True)
class Plan:
    """What one check runs: the invariants (in order) on the configurations each runs on,
    the strategy, the pinned shapes, the settings (primary and other configurations) and
    whether to derandomize."""

    label: str
    build: Builder
    invariants: tuple[Invariant, ...]
    configurations: tuple[Configuration, ...]
    strategy: st.SearchStrategy[AttentionShapes]
    pinned: tuple[AttentionShapes, ...]
    settings: Settings
    secondary_settings: Settings
    derandomize: bool


def run_seed(*parts: str) -> int:
    """A stable seed for one run: the same parts give the same seed in every process."""
    return zlib.crc32("|".join(parts).encode())


def check_settings(max_examples: int, derandomize: bool, parent: Settings | None) -> Settings:
    """Hypothesis settings of one run: no deadline, no database, no explain phase."""
    return Settings(
        parent=parent,
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        report_multiple_bugs=False,
        print_blob=False,
        phases=tuple(p for p in Phase if p is not Phase.explain),  # explain: slow, noisy here
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def _falsifying_example(err: BaseException, shapes: AttentionShapes | None) -> str:
    """Hypothesis' "Failing test case: ..." note, else the shapes."""
    notes = [n for n in getattr(err, "__notes__", []) if n.startswith(("Falsifying", "Failing"))]
    if notes:
        return "\n".join(n.split(": ", 1)[-1] for n in notes)
    return f"shapes={shapes!r}"


def _run_one(plan: Plan, config: Configuration, invariant: Invariant, *, pinned: bool) -> None:
    """One Hypothesis run of one invariant on one configuration: only its pinned shapes
    (``pinned``), or only drawn ones."""
    checked: list[str] = []

    def prop(shapes: AttentionShapes) -> None:
        subject = plan.build(shapes, config)
        checked.append(subject.describe())
        try:
            invariant.check(subject)
        except (InvariantViolation, ModuleContractError, OracleError):
            raise
        except Exception as err:
            raise InvariantViolation(
                invariant.name, f"forward raised {type(err).__name__}: {err}", shapes=shapes
            ) from err

    prop.__name__ = prop.__qualname__ = f"check_{invariant.name}"
    base = plan.settings if config.primary else plan.secondary_settings
    if pinned:
        phases: tuple[Phase, ...] = (Phase.explicit,)
    else:
        phases = tuple(p for p in base.phases if p is not Phase.explicit)
    test = Settings(base, phases=phases)(given(shapes=plan.strategy)(prop))
    shapes_pinned = plan.pinned if config.primary else plan.pinned[:2]
    for shapes in reversed(shapes_pinned):  # decorators apply bottom-up: keep pinned order
        test = example(shapes=shapes)(test)
    if plan.derandomize:
        test = seed(run_seed(plan.label, config.name, invariant.name))(test)
    try:
        test()
    except InvariantViolation as err:
        raise err.completed(
            statement=invariant.statement,
            subject=checked[-1] if checked else "",
            example=_falsifying_example(err, err.shapes),
        ) from None


def run_plan(plan: Plan) -> None:
    """Every invariant of ``plan`` in order, each on the configurations it runs on, with one
    torch thread: first on the pinned (known-bad) shapes, then on drawn ones. The first
    failure is raised, so most bugs are found, and named, in the cheap first pass."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # tiny CPU ops: threads only add contention
        for pinned in (True, False):
            if pinned and not plan.pinned:
                continue
            for invariant in plan.invariants:
                for config in plan.configurations:
                    if invariant.runs_on(config):
                        _run_one(plan, config, invariant, pinned=pinned)
    finally:
        torch.set_num_threads(threads)
