"""Run every attention invariant against a user's module or diffusers processor.

Each invariant gets its own Hypothesis run per layer configuration (shapes and a seed drawn,
values from a seeded generator, the run's own seed), so a failure is shrunk to the smallest
shapes that break *that* invariant. Shapes come from the active profile's bounds
(:func:`~shapetrace.testing.profiles.shape_bounds`) and reach the regimes where
implementations branch. Every invariant is first tried on the :data:`PINNED` (known-bad)
shapes, then on drawn ones; the first that fails (in
:data:`~shapetrace.testing.properties.INVARIANTS` order) is raised as an
:class:`InvariantViolation`, an ``AssertionError`` whose message starts with the invariant's
name and gives the shapes and Hypothesis' falsifying example. Arguments that cannot work are
refused before anything runs (:class:`CheckArgumentError`, :class:`ModuleContractError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from hypothesis import Phase, find
from hypothesis import settings as Settings
from hypothesis import strategies as st
from torch import nn

from shapetrace.testing import profiles
from shapetrace.testing._arguments import (
    check_device,
    check_dtype,
    check_factory,
    check_max_examples,
    processor_configurations,
)
from shapetrace.testing._configurations import Configuration
from shapetrace.testing._module_subject import ModuleSubject, factory_label
from shapetrace.testing._processor_subject import ProcessorSubject
from shapetrace.testing._runner import Plan, check_settings, run_plan
from shapetrace.testing._subject import PLAIN_CROSS, AttentionSubject
from shapetrace.testing._violation import CheckArgumentError
from shapetrace.testing.properties import Invariant, select_invariants
from shapetrace.testing.strategies import AttentionShapes, attention_shapes

__all__ = ["DEFAULT_MAX_EXAMPLES", "PINNED", "check_attention_module", "check_attn_processor"]

DEFAULT_MAX_EXAMPLES = profiles.check_max_examples("ci")
"""Drawn examples per invariant under the ``ci`` profile (after the pinned ones)."""

PINNED: tuple[AttentionShapes, ...] = tuple(
    AttentionShapes(*sizes)
    for sizes in (
        (3, 3, 3, 3, 1, 9, 5, 2),  # a single key, three of everything else
        (1, 1, 8, 1, 77, 8, 12, 0),  # one query over CLIP's 77 tokens, one head
        (2, 8, 5, 203, 77, 40, 24, 1),  # 8 heads of 5, N=203 > 77
        (2, 8, 8, 64, 78, 64, 16, 3),  # aligned: N=64, head_dim 8, 8 heads, M=78 > 77
        (1, 2, 4, 1025, 154, 8, 8, 4),  # long: N=1025 past a power of two, M=154
    )
)
"""Known-bad shapes, tried in this order before anything is drawn, as (batch, heads,
head_dim, N, M, query_dim, context_dim, seed)."""

_PROCESSOR_WIDTHS = (7, 6, 32, 48, 24)  # diffusers: query_dim != heads * dim_head


def _smallest(strategy: st.SearchStrategy[AttentionShapes]) -> AttentionShapes:
    """The simplest shapes ``strategy`` draws, to build the module once up front."""
    quiet = Settings(database=None, max_examples=1, phases=(Phase.generate,), deadline=None)
    found: AttentionShapes = find(strategy, lambda _: True, settings=quiet)
    return found


def _plan_settings(
    max_examples: int | None, derandomize: bool | None, parent: Settings | None
) -> tuple[Settings, Settings, bool]:
    """(settings on primary configurations, on the others, derandomize) from the arguments,
    the parent settings and the active profile."""
    if max_examples is None:
        max_examples = profiles.check_max_examples() if parent is None else parent.max_examples
    if derandomize is None:
        derandomize = (
            parent.derandomize
            if parent is not None
            else (profiles.active_profile() in (None, "ci"))
        )
    secondary = max(2, -(-max_examples // 3))
    return (
        check_settings(max_examples, derandomize, parent),
        check_settings(min(max_examples, secondary), derandomize, parent),
        derandomize,
    )


def _selected(
    invariants: Iterable[str] | None, configurations: tuple[Configuration, ...], *, with_mask: bool
) -> tuple[Invariant, ...]:
    """The invariants asked for, refused up front when none would run."""
    selected = select_invariants(invariants, with_mask=with_mask)
    if not any(inv.runs_on(c) for inv in selected for c in configurations):
        names = ", ".join(inv.name for inv in selected)
        raise CheckArgumentError(
            f"invariants={[inv.name for inv in selected]!r}: {names} apply to none of the "
            f"configurations {', '.join(c.name for c in configurations)}, so nothing would be "
            "checked; add a configuration they apply to, or another invariant"
        )
    return selected


def _run(
    factory: Any,
    build: Callable[[AttentionShapes, Configuration], AttentionSubject],
    configurations: tuple[Configuration, ...],
    *,
    invariants: tuple[Invariant, ...],
    strategy: st.SearchStrategy[AttentionShapes],
    pinned: tuple[AttentionShapes, ...],
    max_examples: int | None,
    derandomize: bool | None,
    settings: Settings | None,
) -> None:
    primary, secondary, derandomized = _plan_settings(max_examples, derandomize, settings)
    key = f"{getattr(factory, '__module__', '')}.{factory_label(factory)}"  # seeds per subject
    plan = Plan(
        key, build, invariants, configurations, strategy, pinned, primary, secondary, derandomized
    )
    run_plan(plan)


def check_attention_module(
    factory: Callable[[int, int, int], nn.Module],
    *,
    max_examples: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    invariants: Iterable[str] | None = None,
    shapes: st.SearchStrategy[AttentionShapes] | None = None,
    derandomize: bool | None = None,
    reinitialize: bool = True,
    settings: Settings | None = None,
) -> None:
    """Check a cross-attention module against every invariant; return quietly when it holds.

    ``factory(query_dim, context_dim, heads)`` builds the module: it has ``to_q``, ``to_k``,
    ``to_v`` and ``to_out`` (each an ``nn.Linear`` or a container whose first item is one)
    and ``forward(x (B, N, query_dim), context (B, M, context_dim)) -> (B, N, query_dim)``,
    passing the merged heads (B, N, inner) through ``to_out`` (whole, per chunk or per row).
    Its head width is ``to_q.out_features // heads``. Only what forward returns is judged.

    Args:
        max_examples: drawn examples per invariant, after the :data:`PINNED` shapes (default:
            the active profile's, 10 under ``ci``; or ``settings.max_examples``).
        device, dtype: where and in what the module runs; references are float64 on
            ``device``. float16/bfloat16 get PyTorch's self-calibrating tolerance.
        invariants: names to check (default: all but ``masking``, which needs a mask
            argument); see :data:`~shapetrace.testing.properties.INVARIANT_NAMES`.
        shapes: a strategy of :class:`AttentionShapes` replacing the default
            ``attention_shapes(**shape_bounds())`` (and the pinned shapes).
        derandomize: the same examples on every run (default: yes, unless the active
            profile or ``settings`` draws at random). Each invariant has its own seed.
        reinitialize: overwrite the projections with seeded weights (std 1/sqrt(fan_in)) so
            each example is reproducible and scores are large enough to tell scales apart.
        settings: Hypothesis settings to start from.

    Raises:
        InvariantViolation: (an ``AssertionError``) naming the first invariant that fails, the
            shapes and Hypothesis' falsifying example.
        ModuleContractError: the module lacks the projections, has the wrong widths, or
            ``to_out`` does not receive the merged heads ("to_out saw ...").
        CheckArgumentError: an argument that cannot work (a ``meta`` device, no invariant).

    Example::

        >>> from shapetrace.testing.implementations import SDPACrossAttention
        >>> check_attention_module(SDPACrossAttention)  # passes: returns None
    """
    check_factory(factory, "factory")
    device, dtype = check_device(device), check_dtype(dtype)
    max_examples = check_max_examples(max_examples)
    selected = _selected(invariants, (PLAIN_CROSS,), with_mask=False)
    pinned = PINNED if shapes is None else ()
    strategy = attention_shapes(**profiles.shape_bounds()) if shapes is None else shapes
    first = pinned[0] if pinned else _smallest(strategy)
    ModuleSubject.build(factory, first, device=device, dtype=dtype, reinitialize=reinitialize)

    def build(s: AttentionShapes, config: Configuration) -> AttentionSubject:
        return ModuleSubject.build(
            factory, s, device=device, dtype=dtype, reinitialize=reinitialize
        )

    _run(
        factory,
        build,
        (PLAIN_CROSS,),
        invariants=selected,
        strategy=strategy,
        pinned=pinned,
        max_examples=max_examples,
        derandomize=derandomize,
        settings=settings,
    )


def check_attn_processor(
    processor_factory: Callable[[], Any],
    *,
    max_examples: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    invariants: Iterable[str] | None = None,
    configurations: Iterable[str] | None = None,
    shapes: st.SearchStrategy[AttentionShapes] | None = None,
    derandomize: bool | None = None,
    reinitialize: bool = True,
    settings: Settings | None = None,
) -> None:
    """Check a diffusers attention processor on every ``Attention`` configuration.

    ``processor_factory()`` returns a processor (a class taking no argument works). It is set
    on a diffusers ``Attention`` built each way diffusers builds one (see
    :data:`~shapetrace.testing.PROCESSOR_CONFIGURATIONS`): cross and self, (B, N, C) tokens and
    (B, C, H, W) maps, group norm, spatial norm with ``temb``, ``norm_cross``, residual,
    output rescale, key masks (diffusers' additive (B, 1, M), -10000 on masked keys), and
    for diffusers' added-KV processors added key/value projections. The oracle is the same
    layer and weights on diffusers' ``AttnProcessor`` (``AttnAddedKVProcessor``) in float64.
    Plain cross- and self-attention get every invariant that applies; the other
    configurations get the agreement checks (output, gradients, large logits). The default
    shapes draw ``query_dim`` freely, so ``heads * dim_head != query_dim`` is tested.

    Args:
        configurations: names to check (default: every one the processor's kind supports);
            a configuration named here gets every invariant that applies to it.
        The others are those of :func:`check_attention_module`; ``masking`` is included.

    Example::

        >>> from diffusers.models.attention_processor import AttnProcessor2_0
        >>> check_attn_processor(AttnProcessor2_0)  # passes: returns None
    """
    device, dtype = check_device(device), check_dtype(dtype)
    max_examples = check_max_examples(max_examples)
    chosen = processor_configurations(processor_factory, configurations, dtype)
    selected = _selected(invariants, chosen, with_mask=True)
    pinned = tuple(replace(s, query_dim=w) for s, w in zip(PINNED, _PROCESSOR_WIDTHS))
    if shapes is not None:
        pinned = ()

    def build(s: AttentionShapes, config: Configuration) -> AttentionSubject:
        return ProcessorSubject.build(
            processor_factory,
            s,
            device=device,
            dtype=dtype,
            reinitialize=reinitialize,
            configuration=config,
        )

    bounds = profiles.shape_bounds()
    strategy = (
        attention_shapes(**bounds, min_query_dim=1, max_query_dim=48) if shapes is None else shapes
    )
    _run(
        processor_factory,
        build,
        chosen,
        invariants=selected,
        strategy=strategy,
        pinned=pinned,
        max_examples=max_examples,
        derandomize=derandomize,
        settings=settings,
    )
