"""Hypothesis strategies for attention shapes, and seeded tensors to go with them.

Hypothesis draws the *shapes* and a *seed*; the values come from a seeded
``torch.Generator``. Shrinking then works on the shapes (the part a human reads), while the
values stay reproducible from the seed.

Example::

    >>> from hypothesis import given
    >>> @given(attention_shapes(max_batch=2))
    ... def test_output_keeps_query_shape(shapes):
    ...     x = random_tensor((shapes.batch, shapes.query_tokens, shapes.query_dim), seed=1)
    ...     assert x.shape[-1] == shapes.query_dim
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from shapetrace.errors import InputShapeError
from shapetrace.testing._regimes import (
    CLIP_TOKENS,
    HEAD_COUNTS,
    HEAD_DIMS,
    LONG_TOKENS,
    TOKEN_SIZES,
    fitting,
    narrow,
)
from shapetrace.testing._values import random_key_mask, random_qkv, random_tensor

__all__ = [
    "DEFAULT_MAX_COST",
    "HEAD_COUNTS",
    "HEAD_DIMS",
    "ODD_SIZES",
    "TOKEN_SIZES",
    "AttentionShapes",
    "attention_shapes",
    "random_key_mask",
    "random_qkv",
    "random_tensor",
    "seeds",
    "sizes",
]

ODD_SIZES: tuple[int, ...] = (1, 3, 77, 203)
"""Sizes that break shape code in practice: a single token, an odd count, CLIP's 77 text
tokens, and an odd count above 77 (e.g. N=203 when a tutorial assumed N <= 77)."""

_MAX_SEED = 2**16 - 1

LONG_CONTEXT = 160
"""Most context tokens drawn with a long query sequence (SD 2's 154 fits), so that narrowing
keeps two channels a head."""

DEFAULT_MAX_COST = 2**22
"""Multiply-adds one drawn forward may cost (about four million: a few milliseconds in
float64 on one CPU core); wider draws are narrowed to fit."""


@dataclass(frozen=True)
class AttentionShapes:
    """The sizes of one cross-attention call, plus the seed its values come from.

    ``x`` is (batch, query_tokens, query_dim), ``context`` is (batch, context_tokens,
    context_dim), and q/k/v have ``inner_dim = heads * head_dim`` channels, split as
    (batch, heads, tokens, head_dim).
    """

    batch: int
    heads: int
    head_dim: int
    query_tokens: int
    context_tokens: int
    query_dim: int
    context_dim: int
    seed: int = 0

    @property
    def inner_dim(self) -> int:
        """Width of q, k and v: ``heads * head_dim``."""
        return self.heads * self.head_dim

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """One line in Hypothesis' falsifying examples (its printer would put a field a line)."""
        printer.text(repr(self))

    def describe(self) -> str:
        """One line with every size named, as failure messages print it.

        >>> AttentionShapes(2, 8, 40, 4096, 77, 320, 768).describe()
        'B=2, N=4096, M=77, query_dim=320, context_dim=768, heads=8, head_dim=40, seed=0'
        """
        return (
            f"B={self.batch}, N={self.query_tokens}, M={self.context_tokens}, "
            f"query_dim={self.query_dim}, context_dim={self.context_dim}, "
            f"heads={self.heads}, head_dim={self.head_dim}, seed={self.seed}"
        )


def _check_bounds(name: str, low: int, high: int, *, floor: int = 1) -> None:
    """Raise InputShapeError unless ``floor <= low <= high``, naming the bound and its values."""
    for which, value in (("min", low), ("max", high)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputShapeError(f"{which}_{name} must be an int, got {value!r}")
    if low < floor:
        raise InputShapeError(f"min_{name}={low} must be at least {floor}")
    if low > high:
        raise InputShapeError(
            f"min_{name}={low} is larger than max_{name}={high}; give min_{name} <= max_{name}"
        )


def sizes(
    *, min_size: int = 1, max_size: int = 80, odd_sizes: Sequence[int] = ODD_SIZES
) -> st.SearchStrategy[int]:
    """Sizes in ``[min_size, max_size]``, drawing the ``odd_sizes`` that fit more often.

    Defaults: ``min_size=1``, ``max_size=80``, ``odd_sizes=ODD_SIZES`` (1, 3, 77, 203);
    pass ``odd_sizes=TOKEN_SIZES`` for every size where implementations branch.
    Shrinks towards ``min_size``.

    >>> from hypothesis import find
    >>> find(sizes(min_size=2, max_size=5), lambda n: n > 3)
    4
    """
    _check_bounds("size", min_size, max_size)
    plain = st.integers(min_size, max_size)
    special = fitting(tuple(odd_sizes), min_size, max_size)
    if not special:
        return plain
    return st.one_of(plain, st.sampled_from(special))


def seeds() -> st.SearchStrategy[int]:
    """Seeds for :func:`random_tensor`, ``0 .. 2**16 - 1``, shrinking towards 0."""
    return st.integers(0, _MAX_SEED)


def attention_shapes(
    *,
    min_batch: int = 1,
    max_batch: int = 3,
    min_heads: int = 1,
    max_heads: int = 8,
    min_head_dim: int = 1,
    max_head_dim: int = 80,
    min_query_tokens: int = 1,
    max_query_tokens: int = 4096,
    min_context_tokens: int = 1,
    max_context_tokens: int = 320,
    min_context_dim: int = 1,
    max_context_dim: int = 64,
    min_query_dim: int | None = None,
    max_query_dim: int | None = None,
    distinct_tokens: bool = True,
    max_cost: int = DEFAULT_MAX_COST,
) -> st.SearchStrategy[AttentionShapes]:
    """Shapes of a cross-attention call, with a seed for the values.

    Defaults (the ``ci`` profile's bounds): batch 1-3, heads 1-8, head_dim 1-80, query tokens
    1-4096, context tokens 1-320, context_dim 1-64. Each example first picks a *regime*, where
    real implementations take different paths:

    - ``any``: sizes drawn freely (up to 1024 tokens), :data:`TOKEN_SIZES`,
      :data:`HEAD_DIMS` and :data:`HEAD_COUNTS` drawn often;
    - ``aligned``: token counts that are multiples of 8 or 64, head dims multiples of 8, two
      heads or more (where fused kernels and tiled loops take their fast paths);
    - ``clip``: contexts of 76, 77, 78, 154, 231 or 512 tokens (those in range);
    - ``long``: more than 1024 query tokens (contexts up to 160), made cheap by narrow widths.

    Every example is then narrowed to at most ``max_cost`` multiply-adds per forward (see
    :func:`~shapetrace.testing._regimes.narrow`: batch, head width, heads and widths shrink,
    token counts never). ``query_dim`` is tied to ``heads * head_dim`` (the common
    tutorial module, whose inner width is its query width) unless ``min_query_dim`` or
    ``max_query_dim`` is given, when it is drawn freely in that range (diffusers'
    ``Attention``, whose ``heads * dim_head`` need not equal ``query_dim``).
    ``distinct_tokens=True`` (default) keeps ``query_tokens != context_tokens``, so an axis
    mix-up between N and M cannot hide. Shrinking goes towards the ``any`` regime and the
    smallest sizes.

    >>> from hypothesis import find
    >>> find(attention_shapes(), lambda s: s.heads > 1).describe()  # the smallest such shapes
    'B=1, N=1, M=2, query_dim=2, context_dim=1, heads=2, head_dim=1, seed=0'
    """
    _check_bounds("batch", min_batch, max_batch)
    _check_bounds("heads", min_heads, max_heads)
    _check_bounds("head_dim", min_head_dim, max_head_dim)
    _check_bounds("query_tokens", min_query_tokens, max_query_tokens)
    _check_bounds("context_tokens", min_context_tokens, max_context_tokens)
    _check_bounds("context_dim", min_context_dim, max_context_dim)
    if not isinstance(max_cost, int) or isinstance(max_cost, bool) or max_cost < 1:
        raise InputShapeError(
            f"max_cost={max_cost!r} must be a positive int (multiply-adds of one forward)"
        )
    free_query_dim = min_query_dim is not None or max_query_dim is not None
    low_qd = high_qd = 0
    if free_query_dim:
        low_qd = 1 if min_query_dim is None else min_query_dim
        high_qd = max(low_qd, 64) if max_query_dim is None else max_query_dim
        _check_bounds("query_dim", low_qd, high_qd)
    if distinct_tokens and (
        min_query_tokens == max_query_tokens == min_context_tokens == max_context_tokens
    ):
        raise InputShapeError(
            f"query and context tokens are both fixed at {min_query_tokens}, so they cannot "
            "differ; widen one range or pass distinct_tokens=False"
        )
    any_query_max = max(min_query_tokens, min(max_query_tokens, LONG_TOKENS))
    regimes = ["any", "aligned"]
    clip = fitting(CLIP_TOKENS, min_context_tokens, max_context_tokens)
    if clip:
        regimes.append("clip")
    long_low = max(min_query_tokens, LONG_TOKENS + 1)
    if max_query_tokens >= long_low:
        regimes.append("long")
    strategies = (
        sizes(min_size=min_heads, max_size=max_heads, odd_sizes=HEAD_COUNTS),
        sizes(min_size=min_head_dim, max_size=max_head_dim, odd_sizes=HEAD_DIMS),
        sizes(min_size=min_query_tokens, max_size=any_query_max, odd_sizes=TOKEN_SIZES),
        sizes(min_size=min_context_tokens, max_size=max_context_tokens, odd_sizes=TOKEN_SIZES),
        st.sampled_from((8, 64)),  # the alignment of the aligned regime
        st.sampled_from(clip or [min_context_tokens]),
        sizes(
            min_size=min(long_low, max_query_tokens),
            max_size=max_query_tokens,
            odd_sizes=TOKEN_SIZES,
        ),
    )
    floors = {
        "batch": min_batch,
        "heads": min_heads,
        "head_dim": min_head_dim,
        "context_dim": min_context_dim,
        "query_dim": low_qd or 1,
    }

    @st.composite
    def draw(data: st.DrawFn) -> AttentionShapes:
        # Every regime draws the same choices and uses some of them, and the regime comes
        # last: shrinking first makes the sizes small, then tries the plain regime ("any").
        heads, head_dim, query_tokens, context_tokens, align, clip_tokens, long_tokens = (
            data(strategy) for strategy in strategies
        )
        regime = data(st.sampled_from(regimes))
        if regime == "aligned":
            heads = _aligned(heads, 1, max(2, min_heads), max_heads)
            head_dim = _aligned(head_dim, 8, min_head_dim, max_head_dim)
            query_tokens = _aligned(query_tokens, align, min_query_tokens, any_query_max)
            context_tokens = _aligned(context_tokens, align, min_context_tokens, max_context_tokens)
        elif regime == "clip":
            context_tokens = clip_tokens
        elif regime == "long":
            query_tokens = long_tokens
            context_tokens = min(context_tokens, max(min_context_tokens, LONG_CONTEXT))
        if distinct_tokens and context_tokens == query_tokens:
            # Step to the nearest other count in range (keeps shrinking towards small sizes).
            step = 1 if context_tokens < max_context_tokens else -1
            if not min_context_tokens <= context_tokens + step <= max_context_tokens:
                query_tokens += 1 if query_tokens < max_query_tokens else -1
            else:
                context_tokens += step
        query_dim = data(st.integers(low_qd, high_qd)) if free_query_dim else heads * head_dim
        drawn = {
            "batch": data(st.integers(min_batch, max_batch)),
            "heads": heads,
            "head_dim": head_dim,
            "query_tokens": query_tokens,
            "context_tokens": context_tokens,
            "query_dim": query_dim,
            "context_dim": data(st.integers(min_context_dim, max_context_dim)),
        }
        fitted = narrow(drawn, max_cost=max_cost, floors=floors, tied_query_dim=not free_query_dim)
        return AttentionShapes(**fitted, seed=data(seeds()))

    return draw()


def _aligned(value: int, step: int, low: int, high: int) -> int:
    """``value`` moved to a multiple of ``step`` (and at least ``low``) within ``[low, high]``:
    up when that fits, else down; unchanged when no multiple fits."""
    value = max(value, low)
    up = -(-value // step) * step
    if up <= high:
        return up
    down = (min(value, high) // step) * step
    return down if down >= low else min(value, high)
