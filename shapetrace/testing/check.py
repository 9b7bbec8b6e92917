"""Run every attention invariant against a user's module or diffusers processor.

Each invariant gets its own Hypothesis run (shapes and a seed drawn, values from a seeded
generator), so a failure is shrunk to the smallest shapes that break *that* invariant. The
first invariant that fails (in :data:`~shapetrace.testing.properties.INVARIANTS` order) is
raised as an :class:`InvariantViolation`, an ``AssertionError`` whose message starts with the
invariant's name and gives the shapes and Hypothesis' falsifying example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as Settings
from hypothesis import strategies as st
from torch import nn

from shapetrace.testing._processor_subject import ProcessorSubject
from shapetrace.testing._subject import AttentionSubject, ModuleSubject
from shapetrace.testing._violation import InvariantViolation, ModuleContractError
from shapetrace.testing.properties import Invariant, select_invariants
from shapetrace.testing.strategies import AttentionShapes, attention_shapes
from shapetrace.testing.tolerance import DEFAULT_ATOL

__all__ = ["DEFAULT_MAX_EXAMPLES", "check_attention_module", "check_attn_processor"]

DEFAULT_MAX_EXAMPLES = 10
"""Drawn examples per invariant (after the pinned ones): about a second for a correct module
on CPU."""

# Known-bad shapes, tried (smallest first) before anything is drawn, as
# (batch, heads, head_dim, N, M, query_dim, context_dim, seed): a single key with three of
# everything else; one query over CLIP's 77 tokens with one head; 8 heads of 5 and N=203.
_PINNED_MODULE = tuple(
    AttentionShapes(*sizes)
    for sizes in (
        (3, 3, 3, 3, 1, 9, 5, 2),
        (1, 1, 8, 1, 77, 8, 12, 0),
        (2, 8, 5, 203, 77, 40, 24, 1),
    )
)
_PINNED_PROCESSOR = tuple(  # diffusers: query_dim != heads * dim_head
    replace(shapes, query_dim=width) for shapes, width in zip(_PINNED_MODULE, (7, 6, 32))
)


def _validate(device: str, dtype: torch.dtype, max_examples: int | None) -> None:
    if dtype not in DEFAULT_ATOL:
        raise ValueError(
            f"dtype {dtype} is not checked; use one of {', '.join(map(str, DEFAULT_ATOL))}"
        )
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch.cuda.is_available() is False")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")


def _settings(max_examples: int | None, derandomize: bool, parent: Settings | None) -> Settings:
    if max_examples is None:
        max_examples = DEFAULT_MAX_EXAMPLES if parent is None else parent.max_examples
    return Settings(
        parent=parent,
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        report_multiple_bugs=False,
        print_blob=False,
        phases=tuple(p for p in Phase if p is not Phase.explain),  # explain: slow, noisy here
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _falsifying_example(err: BaseException, shapes: AttentionShapes | None) -> str:
    """Hypothesis' "Failing test case: ..." note, else the shapes."""
    prefixes = ("Falsifying", "Failing")
    notes = [n for n in getattr(err, "__notes__", []) if n.startswith(prefixes)]
    if notes:
        return "\n".join(n.split(": ", 1)[-1] for n in notes)
    return f"shapes={shapes!r}"


def _run_invariant(
    invariant: Invariant,
    build: Callable[[AttentionShapes], AttentionSubject],
    strategy: st.SearchStrategy[AttentionShapes],
    pinned: tuple[AttentionShapes, ...],
    settings: Settings,
) -> None:
    """One Hypothesis run of one invariant; re-raise its failure with the name in front."""
    checked: list[str] = []

    def prop(shapes: AttentionShapes) -> None:
        subject = build(shapes)
        checked.append(subject.describe())
        try:
            invariant.check(subject)
        except (InvariantViolation, ModuleContractError):
            raise
        except Exception as err:
            raise InvariantViolation(
                invariant.name, f"forward raised {type(err).__name__}: {err}", shapes=shapes
            ) from err

    prop.__name__ = prop.__qualname__ = f"check_{invariant.name}"
    test = settings(given(shapes=strategy)(prop))
    for shapes in reversed(pinned):  # decorators apply bottom-up: keep pinned order
        test = example(shapes=shapes)(test)
    try:
        test()
    except InvariantViolation as err:
        raise err.completed(
            statement=invariant.statement,
            subject=checked[-1] if checked else "",
            example=_falsifying_example(err, err.shapes),
        ) from None


def _check_all(
    build: Callable[[AttentionShapes], AttentionSubject],
    invariants: tuple[Invariant, ...],
    strategy: st.SearchStrategy[AttentionShapes],
    pinned: tuple[AttentionShapes, ...],
    settings: Settings,
) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # tiny CPU ops: threads only add contention
        with torch.no_grad():
            for invariant in invariants:
                _run_invariant(invariant, build, strategy, pinned, settings)
    finally:
        torch.set_num_threads(threads)


def check_attention_module(
    factory: Callable[[int, int, int], nn.Module],
    *,
    max_examples: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    invariants: Iterable[str] | None = None,
    shapes: st.SearchStrategy[AttentionShapes] | None = None,
    derandomize: bool = True,
    reinitialize: bool = True,
    settings: Settings | None = None,
) -> None:
    """Check a cross-attention module against every invariant; return quietly when it holds.

    ``factory(query_dim, context_dim, heads)`` builds the module: it has ``to_q``, ``to_k``,
    ``to_v`` and ``to_out`` (each an ``nn.Linear`` or a container whose first item is one)
    and ``forward(x (B, N, query_dim), context (B, M, context_dim)) -> (B, N, query_dim)``.
    Its head width is ``to_q.out_features // heads``.

    Args:
        max_examples: drawn examples per invariant, after 3 pinned shapes (default 10, or
            ``settings.max_examples`` when ``settings`` is given).
        device, dtype: where and in what the module runs; references are float64 on
            ``device``. float16/bfloat16 get PyTorch's self-calibrating tolerance.
        invariants: names to check (default all but ``masking``, which needs a mask argument);
            see :data:`~shapetrace.testing.properties.INVARIANT_NAMES`.
        shapes: a strategy of :class:`AttentionShapes` replacing the default
            ``attention_shapes()`` (and the pinned shapes).
        derandomize: the same examples on every run (default), as CI wants.
        reinitialize: overwrite the projections with seeded weights (std 1/sqrt(fan_in)) so
            each example is reproducible and scores are large enough to tell scales apart.
        settings: Hypothesis settings to start from.

    Raises:
        InvariantViolation: (an ``AssertionError``) naming the first invariant that fails, the
            shapes and Hypothesis' falsifying example.
        ModuleContractError: the module lacks the projections or has the wrong widths.

    Example::

        >>> from shapetrace.testing.implementations import SDPACrossAttention
        >>> check_attention_module(SDPACrossAttention)  # passes: returns None
    """
    _validate(device, dtype, max_examples)
    selected = select_invariants(invariants, with_mask=False)

    def build(s: AttentionShapes) -> AttentionSubject:
        return ModuleSubject.build(
            factory, s, device=device, dtype=dtype, reinitialize=reinitialize
        )

    strategy = attention_shapes() if shapes is None else shapes
    pinned = _PINNED_MODULE if shapes is None else ()
    _check_all(build, selected, strategy, pinned, _settings(max_examples, derandomize, settings))


def check_attn_processor(
    processor_factory: Callable[[], Any],
    *,
    max_examples: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    invariants: Iterable[str] | None = None,
    shapes: st.SearchStrategy[AttentionShapes] | None = None,
    derandomize: bool = True,
    reinitialize: bool = True,
    settings: Settings | None = None,
) -> None:
    """Check a diffusers attention processor against every invariant, masks included.

    ``processor_factory()`` returns a processor (a processor class works). It is set on a
    diffusers ``Attention(query_dim, cross_attention_dim=context_dim, heads, dim_head)``;
    the oracle is the same layer and weights on diffusers' own ``AttnProcessor`` in float64.
    Masks follow diffusers' convention: additive (B, 1, M), -10000 on masked keys. The
    default shapes draw ``query_dim`` freely, so ``heads * dim_head != query_dim`` is tested.
    Arguments, return and errors are those of :func:`check_attention_module`.

    Example::

        >>> from diffusers.models.attention_processor import AttnProcessor2_0
        >>> check_attn_processor(AttnProcessor2_0)  # passes: returns None
    """
    _validate(device, dtype, max_examples)
    selected = select_invariants(invariants, with_mask=True)

    def build(s: AttentionShapes) -> AttentionSubject:
        return ProcessorSubject.build(
            processor_factory, s, device=device, dtype=dtype, reinitialize=reinitialize
        )

    strategy = attention_shapes(min_query_dim=1, max_query_dim=48) if shapes is None else shapes
    pinned = _PINNED_PROCESSOR if shapes is None else ()
    _check_all(build, selected, strategy, pinned, _settings(max_examples, derandomize, settings))
